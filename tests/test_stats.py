"""Bootstrap intervals and the paired comparison table (editlens.stats; Chapters 4-6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from editlens.stats import bootstrap_mean, paired_difference, paired_table


def test_interval_covers_the_mean_and_is_reproducible():
    x = np.random.default_rng(1).normal(0.3, 1.0, size=60)
    a, b = bootstrap_mean(x, seed=0), bootstrap_mean(x, seed=0)
    assert a == b and a.low < a.mean < a.high and a.n == 60
    # the standard error of a mean of 60 N(0, 1) draws is ~0.13: a 95% interval is about 0.5 wide
    assert 0.3 < a.high - a.low < 0.8


def test_paired_difference_sees_a_small_shift_that_unpaired_spread_hides():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1.0, size=50)  # facts differ a lot
    better = base + 0.1 + rng.normal(0, 0.02, size=50)  # the method adds a small, consistent gain
    d = paired_difference(base, better)
    assert d.excludes_zero() and d.low > 0.05
    ia, ib = bootstrap_mean(base), bootstrap_mean(better)
    assert ia.high > ib.low  # the unpaired intervals overlap


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same facts"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])


def test_paired_table_pairs_by_fact_and_refuses_unpaired_methods():
    rows = [{"fact": f, "method": m, "ES": v} for f in range(10) for m, v in (("ROME", f % 2), ("STEAM", 1))]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter: pairs are by fact
    t = paired_table(df, ["ES"], baseline="ROME")
    steam = t[t.method == "STEAM"].iloc[0]
    assert steam["diff vs ROME"] == pytest.approx(0.5) and steam["CI excludes 0"]
    with pytest.raises(ValueError, match="same facts"):
        paired_table(df[~((df.method == "STEAM") & (df.fact == 3))], ["ES"])
    with pytest.raises(ValueError, match="columns"):
        paired_table(df, ["PS"])
