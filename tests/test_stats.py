"""Bootstrap intervals and the paired comparison table (editlens.stats; Chapters 4-6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from editlens.stats import add_holm, bootstrap_mean, holm, paired_difference, paired_table


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


def test_cluster_bootstrap_of_singletons_is_the_fact_bootstrap_and_clusters_widen_it():
    rng = np.random.default_rng(1)
    x = rng.normal(0.2, 1.0, size=40)
    plain = bootstrap_mean(x, seed=3)
    assert bootstrap_mean(x, seed=3, clusters=[f"c{i}" for i in range(40)]) == plain  # one fact per cluster
    # 4 relations whose facts agree with each other: resampling relations sees 4 draws, not 40
    grouped = np.repeat([-1.0, 0.0, 0.5, 1.5], 10) + rng.normal(0, 0.05, size=40)
    facts = bootstrap_mean(grouped, seed=0)
    relations = bootstrap_mean(grouped, seed=0, clusters=np.repeat(list("abcd"), 10))
    assert relations.mean == facts.mean
    assert relations.high - relations.low > 2 * (facts.high - facts.low)
    with pytest.raises(ValueError, match="cluster labels"):
        bootstrap_mean(grouped, clusters=["a"] * 39)


def test_bootstrap_p_and_holm():
    assert bootstrap_mean(np.zeros(20)).p == 1.0
    assert bootstrap_mean(np.full(20, 0.5) + np.linspace(-0.1, 0.1, 20)).p == 0.0
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, np.nan, 0.01])
    assert np.isnan(adjusted[1]) and adjusted[2] == 0.02 and adjusted[0] == 0.2


def test_paired_table_by_relation_with_holm():
    facts = np.arange(24)
    per_fact = pd.DataFrame(
        [dict(fact=f, relation=f"r{f % 4}", method=m, score=(f % 4) * 0.1 + (0.3 if m == "B" else 0.0)
              + (0.01 if (m == "C" and f % 2) else 0.0)) for f in facts for m in "ABC"])
    plain = paired_table(per_fact, ["score"], baseline="A")
    by_rel = paired_table(per_fact, ["score"], baseline="A", cluster="relation", correction="holm")
    assert list(plain.columns) == ["metric", "method", "n", "mean", "low", "high", "diff vs A", "diff low",
                                   "diff high", "CI excludes 0"]  # unchanged without the new options
    assert {"p", "p Holm", "Holm excludes 0"} <= set(by_rel.columns)
    b = by_rel.set_index("method").loc["B"]
    assert b["Holm excludes 0"] and b["p Holm"] >= b["p"]
    assert np.isnan(by_rel.set_index("method").loc["A", "p Holm"])
    assert (by_rel["low"] <= plain["low"] + 1e-12).all()  # relations vary: intervals at least as wide
    bad = per_fact.assign(relation=np.where(per_fact.method == "C", "other", per_fact.relation))
    with pytest.raises(ValueError, match="clusters"):
        paired_table(bad, ["score"], baseline="A", cluster="relation")
    with pytest.raises(ValueError, match="correction"):
        paired_table(per_fact, ["score"], correction="bonferroni")
    with pytest.raises(ValueError, match="no 'p' column"):
        add_holm(plain)
