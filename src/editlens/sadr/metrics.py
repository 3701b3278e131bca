"""SADR's way of pooling the evaluation: micro-averaged over every prompt, not per record.

Taught in: Chapter 5 (SADR). :func:`editlens.evaluate.summarise` averages each record's success rate (a record with
10 neighbourhood prompts weighs as much as one with 1); the authors pool all prompts of a kind over the whole
evaluation (their ES, PS, NS, RS, DNS; a prompt succeeds when the right target has the strictly lower mean
per-token NLL, as in :func:`editlens.evaluate.probe_rows`). Their RS (Relation Score) is this package's ``RelS``.
Both are reported for ``--format sadr``; other outputs keep the per-record means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from editlens.data import FactLike
from editlens.evaluate import EvalReport, harmonic_mean, probe_rows

POOLED = ("ES", "PS", "NS", "RelS", "DNS", "Port")


def probe_counts(case: FactLike) -> dict[str, int]:
    """Number of probe prompts of each kind in a record (the rows behind its success rates)."""
    out: dict[str, int] = {}
    for row in probe_rows(case):
        out[row[0]] = out.get(row[0], 0) + 1
    return out


def pooled_summary(report: EvalReport, cases: Sequence[FactLike], which: str = "edited") -> dict[str, float]:
    """Success rates (%) over all prompts of each kind pooled; S = harmonic mean of pooled ES, PS, NS; ``n_<kind>``:
    the number of prompts. ``cases`` are the evaluated records, in the report's order."""
    totals: dict[str, list[float]] = {}
    for rec, case in zip(report.records, cases):
        m = rec.get(which)
        if m is None:
            continue
        for kind, n in probe_counts(case).items():
            rate = m.get(kind)
            if kind in POOLED and isinstance(rate, (int, float)) and not math.isnan(rate):
                hits, count = totals.setdefault(kind, [0.0, 0])
                totals[kind] = [hits + round(rate * n), count + n]
    out: dict[str, float] = {k: 100.0 * h / n for k, (h, n) in totals.items() if n}
    if all(k in out for k in ("ES", "PS", "NS")):
        out["S"] = harmonic_mean([out["ES"], out["PS"], out["NS"]])
    ordered: dict[str, float] = {k: out[k] for k in ("ES", "PS", "NS", "S", "RelS", "DNS", "Port") if k in out}
    ordered.update({f"n_{k}": int(n) for k, (_, n) in totals.items()})
    return ordered


def pooled_table(report: EvalReport, cases: Sequence[FactLike]) -> str:
    """Edited vs unedited, pooled over prompts (SADR's micro-average), one column per metric."""
    rows = [(w, pooled_summary(report, cases, w)) for w in ("unedited", "edited")
            if any(w in r for r in report.records)]
    keys = [k for k in ("ES", "PS", "NS", "S", "RelS", "DNS", "Port") if any(k in s for _, s in rows)]
    lines = ["pooled    " + "".join(f"{k:>8}" for k in keys) + "   (prompts: " + ", ".join(
        f"{k} {rows[0][1].get('n_' + k, 0)}" for k in keys if k != "S") + ")" if rows else "pooled"]
    for w, s in rows:
        lines.append(f"{w:<10}" + "".join(f"{s.get(k, math.nan):>8.1f}" for k in keys))
    return "\n".join(lines)
