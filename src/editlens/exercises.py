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
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def check_exercise(name: str, attempt: F, solution: F, test: Callable[[Callable], None]) -> F:
    """Run ``test`` on ``attempt`` (or on ``solution`` if the attempt raises NotImplementedError).

    Returns the function that passed, for later cells to use.
    """
    try:
        test(attempt)
    except NotImplementedError:
        test(solution)
        print(f"[{name}] not attempted yet: the hidden solution passed the check and is used below.")
        return solution
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
