"""``grade`` and ``editions``: grade a student notebook offline, write the student or instructor edition.

Taught in: Teaching with this book (book/teaching.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from editlens.cli.errors import CommandLineError


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The ``grade`` and ``editions`` parsers."""
    g = sub.add_parser("grade", help="execute a submitted student notebook offline and print a per-exercise "
                       "pass/fail table (exit status 0 iff every exercise passed)",
                       description="Grade a student edition notebook (make student). Its solution and check "
                       "cells are taken back from the chapter (a failed exercise falls back to the solution, "
                       "so later ones are graded on their own); it runs in a fresh kernel, offline, up to and "
                       "including the last exercise's check cell: the cells after it are not run.")
    g.add_argument("submission", help="the student's .ipynb (a student edition, named after its chapter)")
    g.add_argument("--json", default=None, help="also write the results as JSON to this file")
    g.add_argument("--timeout", type=int, default=600, help="seconds per cell before it is interrupted "
                   "(default 600)")
    g.add_argument("--chapter-dir", default=None, help="folder of the chapter notebooks (default: the "
                   "repository's notebooks/)")
    g.set_defaults(func=grade)
    d = sub.add_parser("editions", help="write the student (solutions removed) or instructor (solutions shown) "
                       "edition of every chapter")
    d.add_argument("edition", choices=["student", "instructor"])
    d.add_argument("--out", default=None, help="output folder (default: _build/student or _build/instructor)")
    d.add_argument("--chapter-dir", default="notebooks", help="folder of the chapter notebooks")
    d.set_defaults(func=editions)


def grade(args: argparse.Namespace) -> int:
    """Execute a student notebook up to its last exercise check; print (and write) the per-exercise table."""
    import json

    from editlens.grading import GradingError
    from editlens.grading import grade as grade_notebook

    if args.timeout < 1:
        raise CommandLineError(f"--timeout must be at least 1 second, got {args.timeout}",
                               "pass --timeout SECONDS per cell, e.g. --timeout 600")
    try:
        report = grade_notebook(args.submission, chapter_dir=args.chapter_dir, timeout=args.timeout)
    except GradingError as err:
        raise CommandLineError(err.problem, err.fix) from None
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if report.all_passed else 1


def editions(args: argparse.Namespace) -> int:
    """Write the student or instructor edition of every chapter."""
    from editlens.editions import chapters, write_editions

    if not chapters(args.chapter_dir):
        raise CommandLineError(f"no chapter notebooks NN_*.ipynb in {args.chapter_dir}",
                               "pass --chapter-dir the book's notebooks/ folder")
    for path in write_editions(args.edition, args.out or f"_build/{args.edition}", chapter_dir=args.chapter_dir):
        print(f"wrote {path}")
    return 0
