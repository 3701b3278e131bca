"""Confidence intervals for result tables: the bootstrap over facts, paired between methods.

Taught in: Chapter 4 (STEAM vs ROME); used by every chapter whose table compares methods on the
same facts (Chapters 4-6).

Two methods evaluated on the same facts differ by less than either varies across facts, so the
table reports the *paired* difference: for each fact, method B's score minus method A's, and a
percentile bootstrap over facts of its mean. Resampling is seeded, so a re-run prints the same
interval on any machine (numpy's generator does not depend on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over facts with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _clean(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{what}: need a non-empty 1-D sequence of per-fact values, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: {int((~np.isfinite(x)).sum())} values are NaN or infinite. Fix: drop those facts "
                         "from both methods (pairs must stay aligned) or fill the metric.")
    return x


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> Interval:
    """Mean of per-fact values and its percentile bootstrap interval (facts resampled with replacement)."""
    x = _clean(values, "bootstrap_mean")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(mean=float(x.mean()), low=float(lo), high=float(hi), n=int(x.size))


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_boot: int = N_BOOT,
                      level: float = LEVEL, seed: int = 0) -> Interval:
    """Mean of ``b - a`` over the same facts (pair ``i`` is fact ``i`` under both methods), with its interval."""
    xa, xb = _clean(a, "paired_difference (a)"), _clean(b, "paired_difference (b)")
    if xa.shape != xb.shape:
        raise ValueError(f"paired_difference: {xa.size} values for A but {xb.size} for B; the pairs must be the same "
                         "facts in the same order. Fix: evaluate both methods on one fact list.")
    return bootstrap_mean(xb - xa, n_boot=n_boot, level=level, seed=seed)


def paired_table(per_fact: pd.DataFrame, metrics: Sequence[str], *, method: str = "method", fact: str = "fact",
                 baseline: str | None = None, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
                 ) -> pd.DataFrame:
    """The comparison table of a chapter: one row per (metric, method) with the mean over facts and its
    interval, and the paired difference to ``baseline`` (default: the first method) with its interval.

    ``per_fact`` is tidy: one row per (fact, method), one column per metric. Every method must have every fact
    (a fact missing under one method would silently unpair the comparison, so it is an error)."""
    missing = [c for c in (method, fact, *metrics) if c not in per_fact.columns]
    if missing:
        raise ValueError(f"paired_table: columns {missing} not in the table (has {list(per_fact.columns)}).")
    methods = list(dict.fromkeys(per_fact[method]))
    baseline = methods[0] if baseline is None else baseline
    if baseline not in methods:
        raise ValueError(f"paired_table: baseline {baseline!r} is not one of the methods {methods}.")
    wide = {m: per_fact[per_fact[method] == m].set_index(fact) for m in methods}
    facts = wide[baseline].index
    for m, df in wide.items():
        if df.index.has_duplicates or set(df.index) != set(facts):
            raise ValueError(f"paired_table: method {m!r} does not have exactly the facts of {baseline!r} "
                             f"({len(df)} rows vs {len(facts)}). Fix: evaluate every method on the same facts.")
    rows = []
    for metric in metrics:
        base = wide[baseline].loc[facts, metric].to_numpy(float)
        for m in methods:
            vals = wide[m].loc[facts, metric].to_numpy(float)
            mean = bootstrap_mean(vals, n_boot=n_boot, level=level, seed=seed)
            row = {"metric": metric, "method": m, "n": mean.n, "mean": mean.mean, "low": mean.low, "high": mean.high}
            if m != baseline:
                diff = paired_difference(base, vals, n_boot=n_boot, level=level, seed=seed)
                row.update({f"diff vs {baseline}": diff.mean, "diff low": diff.low, "diff high": diff.high,
                            "CI excludes 0": diff.excludes_zero()})
            rows.append(row)
    return pd.DataFrame(rows)
