"""Confidence intervals for result tables: the bootstrap over facts, paired between methods.

Taught in: Chapter 4 (STEAM vs ROME); used by every chapter whose table compares methods on the
same facts (Chapters 4-6).

Two methods evaluated on the same facts differ by less than either varies across facts, so the
table reports the *paired* difference: for each fact, method B's score minus method A's, and a
percentile bootstrap over facts of its mean. Resampling is seeded, so a re-run prints the same
interval on any machine (numpy's generator does not depend on the CPU).

Facts are not independent draws: the book's facts come a few per relation, and facts of one relation
tend to succeed or fail together. ``clusters`` (e.g. each fact's relation) resamples whole relations
instead of facts (the cluster bootstrap), which widens an interval by as much as the relations disagree.
A table compares many (metric, method) pairs at once, so some intervals exclude 0 by chance alone:
``correction="holm"`` adds each difference's bootstrap p-value and Holm's step-down adjustment over the
table, which keeps the chance of any false "excludes 0" in the table below 5%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypedDict

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
    p: float = float("nan")  # two-sided bootstrap p-value of "the mean is 0" (see bootstrap_mean)

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        """``+0.123 [+0.045, +0.201]``: never -0.000, and an end that excludes 0 shows its sign
        (:func:`editlens.display.interval_text`)."""
        from editlens.display import interval_text

        return interval_text(self.mean, self.low, self.high, 3)


def _clean(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{what}: need a non-empty 1-D sequence of per-fact values, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: {int((~np.isfinite(x)).sum())} values are NaN or infinite. Fix: drop those facts "
                         "from both methods (pairs must stay aligned) or fill the metric.")
    return x


def _cluster_codes(clusters: Sequence | np.ndarray, n: int, what: str) -> np.ndarray:
    codes = pd.factorize(pd.Series(list(clusters)), use_na_sentinel=False)[0]
    if codes.size != n:
        raise ValueError(f"{what}: {codes.size} cluster labels for {n} values. Fix: give one label per fact "
                         "(e.g. its relation), in the order of the values.")
    return codes


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0, clusters: Sequence | np.ndarray | None = None) -> Interval:
    """Mean of per-fact values and its percentile bootstrap interval: facts resampled with replacement, or, with
    ``clusters`` (one label per fact, e.g. its relation), whole clusters resampled with replacement (each draw's
    mean is over the facts of the drawn clusters). ``p``: the two-sided bootstrap p-value of "the mean is 0",
    twice the smaller share of resampled means on either side of 0 (at most 1)."""
    x = _clean(values, "bootstrap_mean")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, x.size, size=(n_boot, x.size))
        means = x[idx].mean(axis=1)
    else:
        codes = _cluster_codes(clusters, x.size, "bootstrap_mean")
        k = int(codes.max()) + 1
        sums, counts = np.bincount(codes, weights=x, minlength=k), np.bincount(codes, minlength=k)
        idx = rng.integers(0, k, size=(n_boot, k))
        means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return Interval(mean=float(x.mean()), low=float(lo), high=float(hi), n=int(x.size), p=p)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_boot: int = N_BOOT,
                      level: float = LEVEL, seed: int = 0, clusters: Sequence | np.ndarray | None = None
                      ) -> Interval:
    """Mean of ``b - a`` over the same facts (pair ``i`` is fact ``i`` under both methods), with its interval
    (``clusters``: as in :func:`bootstrap_mean`)."""
    xa, xb = _clean(a, "paired_difference (a)"), _clean(b, "paired_difference (b)")
    if xa.shape != xb.shape:
        raise ValueError(f"paired_difference: {xa.size} values for A but {xb.size} for B; the pairs must be the same "
                         "facts in the same order. Fix: evaluate both methods on one fact list.")
    return bootstrap_mean(xb - xa, n_boot=n_boot, level=level, seed=seed, clusters=clusters)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and is not counted): the smallest p is
    multiplied by the family's size, the next by one less, and so on, each at least the one before it."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = order.size, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


CORRECTIONS = (None, "holm")

class Pairing(TypedDict):
    """Keyword arguments of the paired tables (:func:`paired_table`'s ``cluster`` and ``correction``)."""

    cluster: str
    correction: str


BOOK_PAIRING: Pairing = {"cluster": "relation", "correction": "holm"}
"""How the book pairs methods, in every paired table of Chapters 4-6 and the at-scale page: whole relations
resampled (facts of one relation succeed or fail together), Holm's correction over the table's differences. Pass it
on: ``paired_metrics_table(df, metrics, baseline="ROME", seed=SEED, **BOOK_PAIRING)``."""


def add_holm(table: pd.DataFrame, *, alpha: float = 1 - LEVEL) -> pd.DataFrame:
    """``table`` (a :func:`paired_table`, or several concatenated) with ``p Holm`` (Holm's adjustment of its ``p``
    column over every difference in the table) and ``Holm excludes 0`` (``p Holm`` below ``alpha``)."""
    if "p" not in table.columns:
        raise ValueError("add_holm: the table has no 'p' column. Fix: build it with paired_table(..., "
                         "correction='holm').")
    out = table.copy()
    out["p Holm"] = holm(out["p"].to_numpy(float))
    out["Holm excludes 0"] = [None if np.isnan(v) else bool(v < alpha) for v in out["p Holm"]]
    return out


def paired_table(per_fact: pd.DataFrame, metrics: Sequence[str], *, method: str = "method", fact: str = "fact",
                 baseline: str | None = None, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0,
                 cluster: str | None = None, correction: str | None = None) -> pd.DataFrame:
    """The comparison table of a chapter: one row per (metric, method) with the mean over facts and its
    interval, and the paired difference to ``baseline`` (default: the first method) with its interval.

    ``per_fact`` is tidy: one row per (fact, method), one column per metric. Every method must have every fact
    (a fact missing under one method would silently unpair the comparison, so it is an error). ``cluster``: a
    column of ``per_fact`` holding each fact's cluster (e.g. ``"relation"``): the intervals resample whole
    clusters (:func:`bootstrap_mean`). ``correction="holm"``: add each difference's bootstrap ``p`` and Holm's
    adjustment over the table (:func:`add_holm`; for a table concatenated from several calls, pass
    ``correction=None`` to each and call :func:`add_holm` once on the whole)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"paired_table: correction must be one of {CORRECTIONS}, got {correction!r}.")
    missing = [c for c in (method, fact, *metrics, *([cluster] if cluster else [])) if c not in per_fact.columns]
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
    groups = None
    if cluster is not None:
        groups = wide[baseline].loc[facts, cluster].to_numpy()
        for m, df in wide.items():
            if not np.array_equal(df.loc[facts, cluster].to_numpy(), groups):
                raise ValueError(f"paired_table: method {m!r} puts some facts in other {cluster!r} clusters than "
                                 f"{baseline!r}. Fix: one {cluster!r} per fact.")
    rows = []
    for metric in metrics:
        base = wide[baseline].loc[facts, metric].to_numpy(float)
        for m in methods:
            vals = wide[m].loc[facts, metric].to_numpy(float)
            mean = bootstrap_mean(vals, n_boot=n_boot, level=level, seed=seed, clusters=groups)
            row = {"metric": metric, "method": m, "n": mean.n, "mean": mean.mean, "low": mean.low, "high": mean.high}
            if m != baseline:
                diff = paired_difference(base, vals, n_boot=n_boot, level=level, seed=seed, clusters=groups)
                row.update({f"diff vs {baseline}": diff.mean, "diff low": diff.low, "diff high": diff.high,
                            "CI excludes 0": diff.excludes_zero()})
                if correction is not None:
                    row["p"] = diff.p
            rows.append(row)
    table = pd.DataFrame(rows)
    # one method alone has no difference to correct
    return add_holm(table, alpha=1 - level) if correction == "holm" and "p" in table.columns else table


def paired_metrics_table(per_fact: pd.DataFrame, metrics: Sequence[str], *, method: str = "method",
                         fact: str = "fact", baseline: str | None = None, n_boot: int = N_BOOT, level: float = LEVEL,
                         seed: int = 0, cluster: str | None = None, correction: str | None = None) -> pd.DataFrame:
    """:func:`paired_table` of each metric on the facts where every method has it (a probe that some facts lack,
    such as portability, leaves those facts out of that metric for every method alike, so the pairs stay
    aligned; ``n`` says how many remain), concatenated; a metric no fact has under every method is left out. With
    ``correction="holm"`` the family is every difference of the whole table.

    Taught in: Chapter 4 (STEAM vs ROME); Chapters 5 and 6 and :func:`editlens.compare.summary_table` use it."""
    if correction not in CORRECTIONS:
        raise ValueError(f"paired_metrics_table: correction must be one of {CORRECTIONS}, got {correction!r}.")
    parts = []
    for metric in metrics:
        ok = per_fact.groupby(fact)[metric].transform(lambda s: s.notna().all())
        if ok.any():
            parts.append(paired_table(per_fact[ok], [metric], method=method, fact=fact, baseline=baseline,
                                      n_boot=n_boot, level=level, seed=seed, cluster=cluster, correction=correction))
    if not parts:
        raise ValueError("paired_metrics_table: no metric has values for every method on any fact.")
    table = pd.concat(parts, ignore_index=True)
    return add_holm(table, alpha=1 - level) if correction == "holm" and "p" in table.columns else table
