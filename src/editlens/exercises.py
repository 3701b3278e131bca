"""The exercise pattern every chapter uses (after ARENA): a stub, a hidden solution, an automatic check.

Taught in: How to use this book (book/how-to-use.md).

In a chapter::

    def logit_difference(logits, good, bad):          # exercise cell: your code here
        raise NotImplementedError

    def logit_difference_solution(logits, good, bad):  # hidden cell (collapsed in Jupyter and the book)
        return logits[..., good] - logits[..., bad]

    logit_difference = check_exercise(
        "logit_difference", logit_difference, logit_difference_solution, test=my_test)

``check_exercise`` runs ``test`` on your function. If you have not attempted it yet
(``NotImplementedError``), it says so, checks the hidden solution instead, and returns that,
so the rest of the chapter still runs. A wrong answer raises ``AssertionError`` with what differs.
When the book is built, the checks run on the solutions: a wrong solution fails CI.

In the student edition (``make student``; see Teaching with this book, book/teaching.md) the
solution is ``None``: an untouched stub raises :class:`ExerciseNotDone` instead of falling back.
When ``$EDITLENS_GRADE_LOG`` names a file (``python -m editlens grade``), each check appends one
JSON line ``{name, status, message}`` to it (``passed``, ``failed`` or ``not attempted``) and a
failed attempt falls back to the solution, so that later exercises are graded on their own.
"""

from __future__ import annotations

import json
import os
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


GRADE_LOG_ENV = "EDITLENS_GRADE_LOG"


class ExerciseNotDone(Exception):
    """Raised in the student edition by a check whose stub still raises ``NotImplementedError``."""


def _not_done_message(name: str) -> str:
    number, _, function = name.partition(" ")
    what = f"Exercise {number}" if function else f"Exercise {name!r}"
    return (f"{what} is not done yet: implement {function or 'the function'} above and re-run this cell "
            "(the student edition has no solution to fall back to).")


def _grade_log(name: str, status: str, message: str = "") -> None:
    """Append one JSON line to ``$EDITLENS_GRADE_LOG`` (grading only)."""
    with open(os.environ[GRADE_LOG_ENV], "a", encoding="utf-8") as f:
        f.write(json.dumps({"name": name, "status": status, "message": message}) + "\n")


def check_exercise(name: str, attempt: F, solution: F | None, test: Callable[[Callable], None]) -> F:
    """Run ``test`` on ``attempt`` (or on ``solution`` if the attempt raises NotImplementedError).

    Returns the function that passed, for later cells to use. With ``solution=None`` (student edition)
    an attempt that raises NotImplementedError raises :class:`ExerciseNotDone`. When grading
    (``$EDITLENS_GRADE_LOG`` set), the outcome is logged and a failed attempt returns the solution.
    """
    grading = bool(os.environ.get(GRADE_LOG_ENV))
    try:
        test(attempt)
    except NotImplementedError:
        if solution is None:
            if grading:
                _grade_log(name, "not attempted", "the stub still raises NotImplementedError")
            raise ExerciseNotDone(_not_done_message(name)) from None
        test(solution)
        if grading:
            _grade_log(name, "not attempted", "the stub still raises NotImplementedError")
        print(f"[{name}] not attempted yet:\n  the hidden solution passed the check and is used below.")
        return solution
    except Exception as err:
        if grading:
            _grade_log(name, "failed", f"{type(err).__name__}: {err}".strip())
        if not grading or solution is None:
            raise
        test(solution)
        print(f"[{name}] your answer failed the check ({type(err).__name__}):\n  the solution is used below.")
        return solution
    if grading:
        _grade_log(name, "passed")
    print(f"[{name}] your answer passed the check.")
    return attempt


def assert_close(actual, expected, *, atol: float = 1e-5, rtol: float = 1e-4, what: str = "value") -> None:
    """``torch.testing.assert_close`` with a message a student can act on."""
    actual_t = torch.as_tensor(actual, dtype=torch.float64)
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    if actual_t.shape != expected_t.shape:
        raise AssertionError(f"{what}: shape {tuple(actual_t.shape)}, expected {tuple(expected_t.shape)}")
    if not torch.allclose(actual_t, expected_t, atol=atol, rtol=rtol):
        worst = (actual_t - expected_t).abs().max().item()
        raise AssertionError(f"{what}: differs from the expected value by up to {worst:.3g} (atol {atol}, rtol {rtol})")
