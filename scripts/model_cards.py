"""Print (or write into book/setup.md) the embedded models side by side, computed from the models themselves.

    python scripts/model_cards.py          # print the table as markdown
    python scripts/model_cards.py --write  # replace the table between the markers in book/setup.md

In book/setup.md the table sits between ``<!-- table:models -->`` and ``<!-- /table:models -->``;
tests/test_second_model.py regenerates it and fails if the page is stale.

Used in: book/setup.md ("The second model").
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "setup.md"


def _cell(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(models: dict[str, object] | None = None) -> str:
    """The markdown table: one column per embedded model (``models``: name -> loaded bridge; loaded if None)."""
    import editlens
    from editlens import embedded
    from editlens.anatomy import model_card
    from editlens.data import facts_path, load_facts
    from editlens.rome import get_hparams

    if models is None:
        models = {m.key: editlens.load_model(m.key, device="cpu")[0] for m in embedded.MODELS.values()}
    n_book = len(load_facts())
    cards = {}
    for name, model in models.items():
        card = model_card(model)
        card["ROME's edit layer"] = get_hparams(name).layer
        card["facts it knows (of the book's)"] = f"{len(load_facts(facts_path(name)))} of {n_book}"
        cards[embedded.spec(name).title] = card
    rows = list(next(iter(cards.values())))
    lines = ["| | " + " | ".join(cards) + " |", "|---|" + "---:|" * len(cards)]
    lines += [f"| {row} | " + " | ".join(_cell(c[row]) for c in cards.values()) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the table into book/setup.md")
    args = ap.parse_args(argv)
    text = table()
    if not args.write:
        print(text)
        return 0
    page = PAGE.read_text(encoding="utf-8")
    new, n = re.subn(r"(<!-- table:models -->\n).*?(<!-- /table:models -->)",
                     lambda m: m.group(1) + text + "\n" + m.group(2), page, flags=re.S)
    if n != 1:
        raise SystemExit("book/setup.md has no <!-- table:models --> ... <!-- /table:models --> block")
    PAGE.write_text(new, encoding="utf-8")
    print("wrote the table into book/setup.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
