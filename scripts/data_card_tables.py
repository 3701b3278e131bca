"""Print (or write into book/data.md) the data card's tables, computed from the shipped data.

    python scripts/data_card_tables.py          # print every table as markdown
    python scripts/data_card_tables.py --write  # replace the tables between the markers in book/data.md

In book/data.md each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``;
tests/test_data_paraphrases.py regenerates them and fails if the page is stale.

Used in: book/data.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "editlens" / "data"
PAGE = ROOT / "book" / "data.md"
SPLITS = ("train", "validation", "test")


def _table(header: list[str], rows: list[list[object]], left: int = 1, text_columns: set[int] = frozenset()) -> str:
    """A markdown table; the first ``left`` columns and those in ``text_columns`` are left-aligned, the others
    right-aligned."""
    def fmt(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < left or i in text_columns else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _tables(header: list[str], rows: list[list[object]], groups: list[list[int]], left: int = 1,
            text_columns: set[int] = frozenset()) -> str:
    """One wide table as several narrow ones that fit the page's column: each ``groups[i]`` lists the columns of
    table ``i`` (column 0, the row's name, is repeated in every table)."""
    parts = []
    for cols in groups:
        cols = [0] + [c for c in cols if c != 0]
        parts.append(_table([header[c] for c in cols], [[row[c] for c in cols] for row in rows],
                            left=sum(1 for c in cols if c < left),
                            text_columns={i for i, c in enumerate(cols) if c in text_columns}))
    return "\n".join(parts)


def paraphrase_tables() -> dict[str, str]:
    """Per-relation counts, splits and the embedded model's accuracy and consistency."""
    doc = json.loads((DATA / "paraphrases.json").read_text(encoding="utf-8"))
    rels, queries, ver = doc["relations"], doc["queries"], doc["verification"]
    by_rel: dict[str, Counter] = defaultdict(Counter)
    for q in queries:
        by_rel[q["relation_id"]][q["split_subjects"]] += 1
    rel_split = {r: sp for sp, rs in doc["relation_splits"].items() for r in rs}
    # Two tables, so that each fits the page's column: what was authored, then the splits and the model.
    authored, model_rows = [], []
    for rid, rel in rels.items():
        v = ver["per_relation"][rid]
        c = by_rel[rid]
        authored.append([f"`{rid}`", rel["name"], rel["wikidata"], len(rel["templates"]), len(rel["candidates"]),
                         v["authored"], v["dropped"], v["subjects"]])
        model_rows.append([f"`{rid}`", c["train"], c["validation"], c["test"], rel_split[rid], v["accuracy"],
                           v["consistency"], v["inconsistent_pairs"]])
    ov = ver["overall"]
    total = Counter(q["split_subjects"] for q in queries)
    authored.append(["**all**", "", "", sum(len(r["templates"]) for r in rels.values()), "",
                     sum(v["authored"] for v in ver["per_relation"].values()), len(doc["dropped"]), len(queries)])
    model_rows.append(["**all**", total["train"], total["validation"], total["test"], "", ov["accuracy"],
                       ov["consistency"], ov["inconsistent_pairs"]])
    relations_table = _tables(
        ["relation", "name", "Wikidata", "templates", "candidates", "authored", "dropped", "kept"], authored,
        [[1, 2], [3, 4, 5, 6, 7]], left=2)
    relations_table += "\n" + _tables(
        ["relation", "train", "valid.", "test", "relations scheme", "accuracy", "consistency", "inconsistent pairs"],
        model_rows, [[1, 2, 3, 4], [5, 6, 7]], text_columns={4})

    prompts = sum(len(rels[q["relation_id"]]["templates"]) for q in queries)
    pairs = sum(len(rels[q["relation_id"]]["templates"]) * (len(rels[q["relation_id"]]["templates"]) - 1) // 2
                for q in queries)
    subjects = {q["subject"] for q in queries}
    scheme_rows = []
    for sp in SPLITS:
        qs = [q for q in queries if q["split_subjects"] == sp]
        scheme_rows.append([f"subjects / {sp}", len({q["subject"] for q in qs}), len(qs),
                            len({q["relation_id"] for q in qs})])
    for sp in SPLITS:
        qs = [q for q in queries if q["split_relations"] == sp]
        scheme_rows.append([f"relations / {sp}", len({q["subject"] for q in qs}), len(qs),
                            ", ".join(doc["relation_splits"][sp])])
    splits_table = _table(["scheme / split", "distinct subjects", "queries", "relations"], scheme_rows,
                          text_columns={3})
    summary_table = _tables(
        ["relations", "queries", "subjects", "prompts", "template pairs", "dropped", "accuracy", "consistency"],
        [[len(rels), len(queries), len(subjects), prompts, pairs, len(doc["dropped"]), ov["accuracy"],
          ov["consistency"]]], [[1, 2, 3, 4], [5, 6, 7]], left=0)
    dropped_table = _table(
        ["relation", "subject", "gold", "the model's answers (one per template)"],
        [[f"`{d['relation_id']}`", d["subject"], d["object"], ", ".join(d["predictions"])] for d in doc["dropped"]],
        left=4) if doc["dropped"] else "No subject was dropped.\n"
    return {"paraphrase-summary": summary_table, "paraphrase-relations": relations_table,
            "paraphrase-splits": splits_table, "paraphrase-dropped": dropped_table}


def openended_table() -> str:
    doc = json.loads((DATA / "openended.json").read_text(encoding="utf-8"))
    qs = doc["questions"]
    n_par = Counter(len(q["paraphrases"]) for q in qs)
    return _table(["questions", "paraphrases", "questions with 3 / 4 paraphrases", "mean reference length (words)"],
                  [[len(qs), sum(len(q["paraphrases"]) for q in qs), f"{n_par.get(3, 0)} / {n_par.get(4, 0)}",
                    round(sum(len(q["reference"].split()) for q in qs) / len(qs), 1)]])


PROBES = ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts",
          "relation_prompts", "portability_prompts")


def facts_table() -> str:
    """Counts of the CounterFact-style facts set (facts.json, authored by another part of the project)."""
    path = DATA / "facts.json"
    if not path.is_file():
        return "*facts.json is not in this checkout yet.*\n"
    from editlens.data import (  # "P36" -> "capital (P36)", as the chapters' tables
        load_facts,
        relation_name,
    )

    per_rel: dict[str, Counter] = defaultdict(Counter)
    for r in load_facts(path):
        c = per_rel[r.relation_id or "?"]
        c["records"] += 1
        for key in PROBES:
            c[key] += len(getattr(r, key))

    named = sorted((relation_name(rid), c) for rid, c in per_rel.items())
    rows = [[name, c["records"], *(c[k] for k in PROBES)] for name, c in named]
    tot = Counter()
    for c in per_rel.values():
        tot.update(c)
    rows.append(["**all**", tot["records"], *(tot[k] for k in PROBES)])
    return _tables(["relation", "records", "paraphrase", "neighbourhood", "attribute", "generation", "relation prompts",
                    "portability"], rows, [[1, 2, 3], [4, 5, 6, 7]])


def all_tables() -> dict[str, str]:
    """Table name -> markdown, for every table of book/data.md."""
    tables = paraphrase_tables()
    tables["openended"] = openended_table()
    tables["facts"] = facts_table()
    return tables


def write_page(page: Path = PAGE) -> None:
    """Replace each ``<!-- table:NAME -->...<!-- /table:NAME -->`` block of the page."""
    text = page.read_text(encoding="utf-8")
    for name, table in all_tables().items():
        pattern = re.compile(rf"(<!-- table:{re.escape(name)} -->\n).*?(<!-- /table:{re.escape(name)} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{page}: no markers for table {name!r}")
        text = pattern.sub(lambda m: m.group(1) + "\n" + table + "\n" + m.group(2), text)
    page.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Data card tables for book/data.md")
    parser.add_argument("--write", action="store_true", help="write the tables into book/data.md")
    args = parser.parse_args(argv)
    if args.write:
        write_page()
        print(f"updated {PAGE}")
    else:
        for name, table in all_tables().items():
            print(f"<!-- table:{name} -->\n\n{table}\n<!-- /table:{name} -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
