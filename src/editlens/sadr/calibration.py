"""SADR's gamma calibrated on this model: the weight at which the regulariser costs what it cost the authors.

Taught in: Chapter 5 (SADR). The authors' gamma (their ROME weight 100 x 1e-4 = 0.01) was set for GPT-J. On a
small model the attention term can stay far below the NLL at that weight, so "SADR's effect does not reproduce"
would compare an under-regularised setting. The authors' operating point is what their regulariser cost on
GPT-J: paraphrase success 99.58 -> 96.36 (ROME -> ROME+SADR), 3.22 points (their ``examples/results.md``; the
method notes, section 4). The book calibrates on validation facts, kept apart from the facts it reports:

1. run ROME and ROME+SADR at several gammas, every arm with the same v* steps and stop rule (the authors' 80 and
   their early stop; 21 rewrite prompts as they ran: the bare prompt and 20 prefixed ones);
2. :func:`calibration_table`: per gamma, SADR's paired cost in PS against ROME at the same steps and its gain in
   DNS, with intervals that resample whole relations;
3. :func:`choose_gamma`: the gamma whose PS cost is nearest the authors' (ties: the smaller gamma).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from editlens.stats import paired_difference

AUTHORS_PS = (0.9958, 0.9636)
"""Paraphrase success of ROME and ROME+SADR on GPT-J in the authors' results (fractions)."""
AUTHORS_PS_COST = round(AUTHORS_PS[0] - AUTHORS_PS[1], 4)
"""The authors' operating point: what SADR cost in PS on GPT-J (0.0322, 3.22 points)."""


def calibration_table(rows: pd.DataFrame, arms: Mapping[float, str], *, baseline: str = "rome",
                      seed: int = 0) -> pd.DataFrame:
    """One row per gamma of ``arms`` (gamma -> the ``method`` label of its rows in ``rows``): the mean PS and DNS of
    the arm, its PS cost (``baseline`` minus the arm, paired over the facts both have) and DNS gain (the arm minus
    ``baseline``), each with a 95% interval resampling whole relations (``relation`` column)."""
    base = rows[rows["method"] == baseline].set_index("case_id")
    if base.empty:
        raise ValueError(f"calibration_table: no rows of the baseline {baseline!r}. Fix: run ROME at the same steps "
                         "on the validation facts and pass its method label as baseline=.")
    out = []
    for gamma, label in sorted(arms.items()):
        arm = rows[rows["method"] == label].set_index("case_id")
        if arm.empty:
            raise ValueError(f"calibration_table: no rows for gamma {gamma:g} (method {label!r}). Fix: pass the "
                             "method labels the run wrote.")
        row: dict = {"gamma": float(gamma), "method": label}
        for metric, sign in (("PS", -1), ("DNS", 1)):
            both = base[[metric, "relation"]].merge(arm[[metric]], left_index=True, right_index=True,
                                                    suffixes=("", " arm")).dropna()
            d = paired_difference(both[metric].to_numpy(), both[f"{metric} arm"].to_numpy(), seed=seed,
                                  clusters=both["relation"].astype(str).to_numpy())
            name = "PS cost" if metric == "PS" else "DNS gain"
            lo, hi = sorted((sign * d.low + 0.0, sign * d.high + 0.0))  # + 0.0: never -0.0
            row.update({metric: float(both[f"{metric} arm"].mean()), name: sign * d.mean + 0.0, f"{name} low": lo,
                        f"{name} high": hi, "n": len(both)})
        out.append(row)
    return pd.DataFrame(out)


def choose_gamma(table: pd.DataFrame, target: float = AUTHORS_PS_COST) -> float:
    """The gamma of ``table`` (:func:`calibration_table`) whose PS cost is nearest ``target`` (ties: the smaller
    gamma). A grid whose every cost is below the target returns its largest gamma, and one whose every cost is above
    returns its smallest: widen the grid then (:func:`reaches_target` says whether it brackets the target)."""
    if table.empty:
        raise ValueError("choose_gamma: an empty table. Fix: pass calibration_table(...) of at least one gamma.")
    gaps = (table["PS cost"] - target).abs().to_numpy()
    order = np.lexsort((table["gamma"].to_numpy(), gaps))
    return float(table["gamma"].to_numpy()[order[0]])


def reaches_target(table: pd.DataFrame, target: float = AUTHORS_PS_COST) -> bool:
    """Whether the grid brackets the target: some gamma costs at most ``target`` and some at least."""
    costs = table["PS cost"].to_numpy()
    return bool((costs <= target).any() and (costs >= target).any())


def gamma_grid(points: Sequence[float]) -> list[float]:
    """The calibration grid as sorted distinct gammas, each > 0 (0 is the ROME arm)."""
    grid = sorted({float(g) for g in points})
    if not grid or grid[0] <= 0:
        raise ValueError(f"gamma grid {list(points)}: every gamma must be > 0 (ROME is the baseline arm). Fix: pass "
                         "e.g. 0.01,0.1,1 (the authors' gamma first).")
    return grid
