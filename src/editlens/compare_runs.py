"""Two runs of the same comparison, paired record by record: what changes when one setting changes.

Taught in: Chapter 6, which pairs its own run of the comparison with the at-scale run
(``python -m editlens compare``, float32) on the same 50 facts; ``python -m editlens.compare_runs`` pairs any
two runs of ``compare``, e.g. one setting changed.

Each run's ``per_record.jsonl`` holds one row per (record, method). Pairing the two runs on
``(case_id, method)`` gives, per method and metric, the mean in each run and the paired difference
(second minus first) with its bootstrap interval over records (:func:`editlens.stats.paired_table`),
and how many records' values differ at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from editlens.stats import paired_table

METRICS = ("ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM", "GE", "RS", "SC")
"""The quality metrics of ``compare`` (its ``seconds`` column is the run's cost, not a result)."""


def load_rows(folder: str | Path) -> pd.DataFrame:
    """The rows of ``folder/per_record.jsonl`` (written by ``python -m editlens compare --out folder``)."""
    path = Path(folder) / "per_record.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Fix: run `python -m editlens compare ... --out {folder}`.")
    return pd.DataFrame([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()])


def paired_runs(a: pd.DataFrame, b: pd.DataFrame, labels: Sequence[str] = ("float32", "bfloat16"), *,
                metrics: Sequence[str] = METRICS, seed: int = 0, tol: float = 1e-6,
                cluster: str | None = None) -> pd.DataFrame:
    """Per method and metric: each run's mean, the paired difference ``b - a`` over the same records with its 95%
    bootstrap interval, and the number of records whose value differs by more than ``tol`` (the same generated
    text scores the same up to float noise: SC's sentence embeddings move in the 7th digit with another
    machine's kernels or threads, which is not a change of the record).

    The runs must hold the same (case_id, method) pairs: a record missing from one would unpair the comparison.
    ``cluster`` (e.g. ``"relation"``): the intervals resample whole clusters (:func:`editlens.stats.paired_table`)."""
    keys = ["case_id", "method"]
    for name, rows in zip(labels, (a, b)):
        if rows.duplicated(keys).any():
            raise ValueError(f"paired_runs: run {name!r} has duplicate (case_id, method) rows.")
    if set(map(tuple, a[keys].to_numpy())) != set(map(tuple, b[keys].to_numpy())):
        raise ValueError("paired_runs: the two runs do not hold the same (case_id, method) rows. Fix: run both on the "
                         "same --data, --limit, --spread and --methods.")
    metrics = [m for m in metrics if m in a.columns and m in b.columns]
    out = []
    for method in dict.fromkeys(a["method"]):
        both = pd.concat([a[a["method"] == method].assign(run=labels[0]),
                          b[b["method"] == method].assign(run=labels[1])])
        table = paired_table(both, metrics, method="run", fact="case_id", baseline=labels[0], seed=seed,
                             cluster=cluster)
        wide_a = a[a["method"] == method].set_index("case_id")
        wide_b = b[b["method"] == method].set_index("case_id").loc[wide_a.index]
        for metric in metrics:
            first = table[(table["metric"] == metric) & (table["method"] == labels[0])].iloc[0]
            second = table[(table["metric"] == metric) & (table["method"] == labels[1])].iloc[0]
            changed = int((np.abs(wide_b[metric].to_numpy(float) - wide_a[metric].to_numpy(float)) > tol).sum())
            out.append({"method": method, "metric": metric, "n": int(first["n"]), labels[0]: first["mean"],
                        labels[1]: second["mean"], "diff": second[f"diff vs {labels[0]}"],
                        "low": second["diff low"], "high": second["diff high"],
                        "excludes 0": bool(second["CI excludes 0"]), "records changed": changed})
    return pd.DataFrame(out)


def runs_markdown(table: pd.DataFrame, labels: Sequence[str] = ("float32", "bfloat16"), *,
                  method_labels: dict[str, str] | None = None) -> str:
    """:func:`paired_runs` as a Markdown table (rates in %, GE/RS/SC as they are); a star marks an interval that
    excludes 0 (computed from the unrounded values)."""
    rate = {"ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM"}
    lines = [f"| method | metric | {labels[0]} | {labels[1]} | difference [95% CI] | records changed |",
             "|---|---|---:|---:|---|---:|"]
    def num(x: float, metric: str, signed: bool = False) -> str:
        scale, digits = (100, 1) if metric in rate else (1, 3)
        v = round(x * scale, digits) + 0.0  # no "-0.0"
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"

    for row in table.to_dict("records"):
        m = row["metric"]
        name = (method_labels or {}).get(row["method"], row["method"])
        star = " *" if row["excludes 0"] else ""
        lines.append(f"| {name} | {m} | {num(row[labels[0]], m)} | {num(row[labels[1]], m)} | "
                     f"{num(row['diff'], m, True)} [{num(row['low'], m, True)}, {num(row['high'], m, True)}]{star} | "
                     f"{row['records changed']} of {row['n']} |")
    return "\n".join(lines) + "\n"


def verdicts(a: pd.DataFrame, b: pd.DataFrame, labels: Sequence[str] = ("float32", "bfloat16"), *,
             baseline: str = "rome", seed: int = 0) -> pd.DataFrame:
    """Does each run say the same about the methods? Per quality metric (:data:`METRICS`) and method (other than
    ``baseline``): each run's
    paired difference to ``baseline`` with its interval (:func:`editlens.compare.summary_table`, the book's
    pairing: relations resampled, Holm over each table), and each run's verdict: ``"higher"`` or ``"lower"``
    when the interval excludes 0 after Holm's correction, ``"no difference"`` otherwise; ``same`` when the two
    verdicts agree. Taught in: the page *float32 or bfloat16?*."""
    from editlens.compare import summary_table
    from editlens.stats import BOOK_PAIRING

    tables = [summary_table(rows, list(METRICS), baseline=baseline, seed=seed, **BOOK_PAIRING) for rows in (a, b)]
    diff = f"diff vs {baseline}"
    out = []
    keyed = [t[t["method"] != baseline].set_index(["metric", "method"]) for t in tables]
    for key in keyed[0].index.intersection(keyed[1].index):
        row = {"metric": key[0], "method": key[1]}
        for label, t in zip(labels, keyed):
            r = t.loc[key]
            holds = bool(r["Holm excludes 0"])
            row.update({f"{label} diff": r[diff], f"{label} low": r["diff low"], f"{label} high": r["diff high"],
                        f"{label} verdict": ("higher" if r[diff] > 0 else "lower") if holds else "no difference"})
        row["same"] = row[f"{labels[0]} verdict"] == row[f"{labels[1]} verdict"]
        out.append(row)
    return pd.DataFrame(out)


def verdicts_markdown(table: pd.DataFrame, labels: Sequence[str] = ("float32", "bfloat16"), *,
                      method_labels: dict[str, str] | None = None) -> str:
    """:func:`verdicts` as a Markdown table: each run's difference to the baseline with its interval and verdict."""
    from editlens.display import interval_text

    lines = [f"| metric | method | {labels[0]}: difference [95% CI] | {labels[1]}: difference [95% CI] | same verdict |",
             "|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        cells = [f"{interval_text(r[f'{x} diff'], r[f'{x} low'], r[f'{x} high'], 3)} ({r[f'{x} verdict']})"
                 for x in labels]
        name = (method_labels or {}).get(r["method"], r["method"])
        lines.append(f"| {r['metric']} | {name} | {cells[0]} | {cells[1]} | {'yes' if r['same'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m editlens.compare_runs RUN_A RUN_B --out DIR``: the paired table of two compare runs, written as
    ``DIR/summary.csv`` and ``DIR/summary.md`` (relations resampled, as every paired table of the book), and each
    run's verdicts on the methods side by side, ``DIR/verdicts.csv`` and ``DIR/verdicts.md``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m editlens.compare_runs",
                                 description="The paired table of two compare runs over the same records.")
    ap.add_argument("run_a", help="folder of the first run (its per_record.jsonl)")
    ap.add_argument("run_b", help="folder of the second run")
    ap.add_argument("--labels", default="float32,bfloat16", help="names of the two runs, comma-separated")
    ap.add_argument("--out", required=True, help="folder for summary.csv and summary.md")
    args = ap.parse_args(argv)
    labels = args.labels.split(",")
    if len(labels) != 2:
        ap.error("--labels takes two names, e.g. float32,bfloat16")
    from editlens.methods import LABELS

    a, b = load_rows(args.run_a), load_rows(args.run_b)
    table = paired_runs(a, b, labels, cluster="relation")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(runs_markdown(table, labels, method_labels=LABELS), encoding="utf-8")
    names = ["summary.csv", "summary.md"]
    if a["method"].nunique() > 1:  # verdicts compare methods with ROME: a run of one method has none
        said = verdicts(a, b, labels)
        said.to_csv(out / "verdicts.csv", index=False)
        (out / "verdicts.md").write_text(verdicts_markdown(said, labels, method_labels=LABELS), encoding="utf-8")
        names += ["verdicts.csv", "verdicts.md"]
    for name in names:
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
