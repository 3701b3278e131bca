"""Command line: ``python -m editlens COMMAND``. Run ``python -m editlens --help``.

User errors (a missing or malformed ``--data`` file, an unknown ``--method``, a model that is not
available offline, an out-of-range number) print one line ``error: <problem>. Fix: <what to do>``
on stderr and exit with status 2, without a traceback. Bugs still raise (with their traceback).

One module per command: :mod:`~editlens.cli.fetch` (``fetch-model``), :mod:`~editlens.cli.edit` (``edit``, Chapters
3-5), :mod:`~editlens.cli.compare` (``compare``, Chapter 6) and :mod:`~editlens.cli.teaching` (``grade``,
``editions``). ``edit`` and ``compare`` share their options (:mod:`~editlens.cli.options`, resolved into a frozen
:class:`~editlens.cli.options.RunSettings`) and their run setup (:mod:`~editlens.cli.run_setup`); both run the methods
of the registry, :mod:`editlens.methods`. The errors: :mod:`~editlens.cli.errors`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from editlens.cli import compare, edit, fetch, teaching
from editlens.cli.errors import EXIT_USAGE, CommandLineError, Parser
from editlens.methods import NAMES as METHODS

__all__ = ["EXIT_USAGE", "METHODS", "CommandLineError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m editlens`` parser (its errors raise :class:`CommandLineError`)."""
    parser = Parser(prog="python -m editlens", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch.add_command(sub)
    edit.add_command(sub)
    compare.add_command(sub)
    teaching.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error prints ``error: <problem>. Fix: <what to do>`` and returns 2."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except CommandLineError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
