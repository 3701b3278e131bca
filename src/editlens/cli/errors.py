"""User errors on the command line: one line ``error: <problem>. Fix: <what to do>`` and exit status 2.

Every command of :mod:`editlens.cli` raises them; bugs are not user errors and still raise with their traceback.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USAGE = 2


class CommandLineError(Exception):
    """A user error on the command line: printed as one ``error: ... Fix: ...`` line, exit status 2."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = " ".join(problem.split()).rstrip(".")
        self.fix = " ".join(fix.split())
        super().__init__(f"{self.problem}. Fix: {self.fix}")


def from_message(err: BaseException, default_fix: str, prefix: str = "") -> CommandLineError:
    """A :class:`CommandLineError` from a package error whose message may carry its own ``Fix: ...``."""
    text = str(err).strip() or type(err).__name__
    problem, _, fix = text.partition("Fix:")
    first = problem.strip().splitlines()[0] if problem.strip() else type(err).__name__
    return CommandLineError(prefix + first, fix.strip() or default_fix)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one ``error: ... Fix: ...`` line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message:
            fix = f"pass one of the values in parentheses (see `{self.prog} --help`)"
        else:
            fix = f"see `{self.prog} --help` for the arguments and their values"
        raise CommandLineError(message, fix)
