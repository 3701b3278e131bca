"""Tests of editlens.localize: fast ones on a tiny random Llama (GQA), slow ones on the embedded model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from editlens import consistency as C
from editlens import localize as LZ
from test_consistency import ToyQuery, toy_queries  # noqa: F401  (same toy data)


@pytest.fixture(scope="module")
def tiny():
    from editlens.localize.toy import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def pairs(tiny):
    return LZ.make_pairs(C.model_answers(tiny[0], toy_queries(), batch_size=16))


# ---------------------------------------------------------------- pairs

def test_pairs_structure(pairs):
    expected = sum(len(q.prompts) * (len(q.prompts) - 1) // 2 for q in toy_queries())
    assert len(pairs) == expected
    assert (pairs["template_p"] < pairs["template_q"]).all()
    assert (pairs["consistent"] == (pairs["answer_p"] == pairs["answer_q"]).astype(int)).all()
    bal = LZ.class_balance(pairs, by="relation_id")
    assert bal.loc["ALL", "n_pairs"] == len(pairs)
    assert bal.loc["ALL", "n_consistent"] + bal.loc["ALL", "n_inconsistent"] == len(pairs)


def test_balanced_subsample_is_balanced_and_deterministic(pairs):
    a, b = LZ.balanced_subsample(pairs, seed=3), LZ.balanced_subsample(pairs, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a["consistent"].sum() * 2 == len(a)


def test_subject_split_keeps_subjects_together(pairs):
    test = LZ.subject_split(pairs, test_fraction=0.4, seed=0)
    assert not set(pairs.subject[test]) & set(pairs.subject[~test])
    assert test.any() and (~test).any()


# ---------------------------------------------------------------- activations

def test_last_token_z_matches_unpadded_run(tiny):
    model, _ = tiny
    prompts = ["The capital of France is", "Japan capital is", "In Spain people speak"]
    z = LZ.last_token_z(model, prompts, batch_size=3)
    assert z.shape == (3, model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    for i, p in enumerate(prompts):
        _, cache = model.run_with_cache(model.to_tokens(p))
        torch.testing.assert_close(z[i, 1], cache["blocks.1.attn.hook_z"][0, -1], atol=1e-5, rtol=1e-4)


def test_gqa_groups(tiny):
    assert LZ.kv_group(8, 9, 3) == 2 and LZ.kv_group(3, 9, 3) == 1
    assert LZ.gqa_groups(tiny[0]).tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------- probes

def _planted(n_subj=40, per=6, L=3, H=4, d=8, plant=(1, 2), seed=0):
    """z with label signal only in head ``plant``: consistent pairs share a direction there."""
    rng = np.random.default_rng(seed)
    rows, z, prompts = [], [], []
    for s in range(n_subj):
        for j in range(per):
            c = int(rng.random() < 0.5)
            zp, zq = rng.normal(size=(L, H, d)), rng.normal(size=(L, H, d))
            zq[plant][0] += 2.0 if c else -2.0
            pp, pq = f"s{s} p{j}", f"s{s} q{j}"
            prompts += [pp, pq]; z += [zp, zq]
            rows.append(dict(subject=f"s{s}", prompt_p=pp, prompt_q=pq, consistent=c))
    return torch.tensor(np.array(z), dtype=torch.float32), pd.DataFrame(rows), LZ.prompt_index(prompts)


@pytest.mark.parametrize("features", ["concat", "q"])
def test_probe_finds_planted_head(features):
    z, pairs, index = _planted()
    res = LZ.probe_heads(z, pairs, index, features=features, seed=0)
    assert res.accuracy.shape == (3, 4)
    assert LZ.select_heads(res.accuracy, 1) == [(1, 2)]
    assert res.accuracy[1, 2] > 0.9
    assert res.shuffled_accuracy[1, 2] < 0.75
    others = np.delete(res.accuracy.ravel(), 1 * 4 + 2)
    assert others.max() < 0.75
    # the held-out split is by subject: recompute the split probe_heads used and check both sides
    test = LZ.subject_split(pairs, test_fraction=0.3, seed=0)
    train_subjects, test_subjects = set(pairs.subject[~test]), set(pairs.subject[test])
    assert res.test_subjects == sorted(test_subjects) and train_subjects
    assert not set(res.test_subjects) & train_subjects  # no subject on both sides
    assert (res.n_train, res.n_test) == (int((~test).sum()), int(test.sum()))
    assert res.n_train + res.n_test == len(pairs)


def test_pair_features_shapes():
    a, b = np.ones((5, 8)), np.zeros((5, 8))
    assert LZ.pair_features(a, b, "concat").shape == (5, 16)
    for k in ("q", "diff", "absdiff"):
        assert LZ.pair_features(a, b, k).shape == (5, 8)
    with pytest.raises(ValueError):
        LZ.pair_features(a, b, "sum")


# ---------------------------------------------------------------- patching

def test_patch_set_orientation(pairs):
    ps = LZ.patch_set(pairs)
    assert len(ps) > 0
    for k, r in enumerate(ps.pair_row):
        row = pairs.iloc[r]
        assert row.consistent == 0 and ps.good[k] == row.majority and ps.good[k] != ps.bad[k]
        assert {ps.source_prompt[k], ps.target_prompt[k]} == {row.prompt_p, row.prompt_q}


def test_patching_a_head_with_its_own_activation_changes_nothing(tiny):
    model, _ = tiny
    p = ["The capital of France is", "Japan capital is"]
    ps = LZ.PatchSet(source_prompt=p, target_prompt=p, good=["Paris", "New York"], bad=["Rome", "Tokyo"], pair_row=[0, 1])
    act = LZ.activation_patching(model, ps, heads=[(0, 0), (1, 3)])
    assert np.allclose(act.effect[[0, 1], [0, 3]], 0, atol=1e-5)
    assert np.isnan(act.effect[0, 1])  # not swept
    attr = LZ.attribution_patching(model, ps)
    assert np.allclose(attr.effect, 0, atol=1e-6)


def test_attribution_approximates_activation_patching(tiny, pairs):
    model, _ = tiny
    ps = LZ.patch_set(pairs)
    act = LZ.activation_patching(model, ps, batch_size=8)
    attr = LZ.attribution_patching(model, ps, batch_size=5)  # other batching on purpose
    assert act.effect.shape == attr.effect.shape == (2, 4)
    assert act.ld_corrupt == pytest.approx(attr.ld_corrupt, abs=1e-4)
    assert act.ld_corrupt <= 0 <= act.ld_clean
    r = np.corrcoef(act.effect.ravel(), attr.effect.ravel())[0, 1]
    assert r > 0.6, r
    assert LZ.rank_correlation(act.effect, attr.effect) > 0.5


def test_activation_patching_from_the_patched_layer_equals_full_runs(tiny, pairs, monkeypatch):
    """Starting each patched run at the patched layer (editlens.block_runner) gives the full runs' effects."""
    from editlens.localize import patching

    model, _ = tiny
    ps = LZ.patch_set(pairs)
    fast = LZ.activation_patching(model, ps, batch_size=8)
    monkeypatch.setattr(patching, "supports_block_runs", lambda model: False)
    full = LZ.activation_patching(model, ps, batch_size=8)
    assert np.abs(full.effect).max() > 1e-3  # the heads do matter on the tiny model
    np.testing.assert_allclose(fast.effect, full.effect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.flip_rate, full.flip_rate)
    assert fast.ld_corrupt == pytest.approx(full.ld_corrupt, rel=1e-6)


# ---------------------------------------------------------------- comparison and saving

def test_select_and_compare():
    s = np.array([[0.1, 0.9], [np.nan, -2.0], [0.5, 0.5]])
    assert LZ.select_heads(s, 2) == [(0, 1), (2, 0)]  # tie broken by index
    assert LZ.select_heads(s, 1, absolute=True) == [(1, 1)]
    assert len(LZ.select_heads(s, 10)) == 5  # NaN never selected
    assert LZ.topk_overlap(s, s, 3) == 1.0
    assert LZ.rank_correlation(s, -s) == pytest.approx(-1.0)
    table = LZ.compare_maps({"a": s, "b": s * 2, "c": -s}, ks=(2,))
    assert len(table) == 3 and table.loc[0, "spearman"] == pytest.approx(1.0)


def test_save_load_heads(tmp_path):
    s = np.arange(12.0).reshape(3, 4)
    heads = LZ.select_heads(s, 3)
    path = LZ.save_heads(tmp_path / "h.json", heads, model_fingerprint="abc", method="probe", split="train",
                         scores=s, features="concat")
    loaded, doc = LZ.load_heads(path, model_fingerprint="abc")
    assert loaded == heads and doc["k"] == 3 and doc["features"] == "concat" and doc["scores"] == [11.0, 10.0, 9.0]
    with pytest.raises(ValueError):
        LZ.load_heads(path, model_fingerprint="other")
    # Chapter 2's reading: nothing to compare (not an error) when the file is missing or from other weights
    assert LZ.saved_heads(path, model_fingerprint="abc") == heads
    assert LZ.saved_heads(path, model_fingerprint="other") is None
    assert LZ.saved_heads(tmp_path / "missing.json", model_fingerprint="abc") is None


def test_heatmap():
    import matplotlib

    matplotlib.use("Agg")
    from editlens.plots import heatmap

    ax = heatmap(np.random.default_rng(0).random((5, 3)), "head", "layer", "t", center=0.5, mark=[(1, 2)])
    assert ax.get_title() == "t" and ax.get_xlabel() == "head"


# ---------------------------------------------------------------- slow: the embedded model

MARGIN = 0.05  # top head's held-out accuracy must beat its shuffled-label baseline by this much


@pytest.mark.slow
def test_top_probe_head_beats_shuffled_baseline_on_embedded_model():
    import editlens
    from editlens.data import load_paraphrases  # ships with the package: a missing file is a failure

    queries = load_paraphrases("train")
    assert queries, "no training queries in paraphrases.json"
    model, _ = editlens.load_model()
    pairs = LZ.balanced_subsample(LZ.make_pairs(C.model_answers(model, queries)), seed=0)
    prompts = LZ.unique_prompts(pairs.prompt_p, pairs.prompt_q)
    z = LZ.last_token_z(model, prompts)
    res = LZ.probe_heads(z, pairs, LZ.prompt_index(prompts), seed=0)
    l, h = LZ.select_heads(res.accuracy, 1)[0]
    assert res.accuracy[l, h] >= res.shuffled_accuracy[l, h] + MARGIN
    assert res.accuracy[l, h] >= np.nanmean(res.shuffled_accuracy) + MARGIN


def test_attribution_is_the_exact_directional_derivative(tiny, pairs):
    """Patching only a fraction eps of the way from target to source: (LD(eps) - LD(0)) / eps -> attribution."""
    from editlens.localize.patching import _Batch, _clean_pass
    from editlens.scoring import TokenCache

    model, _ = tiny
    ps = LZ.patch_set(pairs).subset(range(4))
    attr = LZ.attribution_patching(model, ps)
    b = _Batch(model, TokenCache(model), ps)
    z_src, _ = _clean_pass(model, b)
    z_tgt = LZ.last_token_z(model, ps.target_prompt)
    eps, rows = 1e-2, torch.arange(len(b.corrupt.rows))
    with torch.no_grad():
        base = b.ld(model(b.corrupt_tokens), "corrupt")
        for l, h in [(0, 2), (1, 3), (1, 0)]:
            dz = (z_src[:, l, h] - z_tgt[:, l, h])[b.corrupt_row_pair]

            def hook(z, hook=None, h=h, dz=dz):
                z = z.clone()
                z[rows, b.corrupt_last, h] += eps * dz
                return z

            with model.hooks(fwd_hooks=[(LZ.z_hook_name(l), hook)]):
                ld = b.ld(model(b.corrupt_tokens), "corrupt")
            assert float((ld - base).mean() / eps) == pytest.approx(attr.effect[l, h], rel=0.05, abs=2e-3)


def test_empty_patch_set_raises(tiny):
    empty = LZ.PatchSet([], [], [], [], [])
    with pytest.raises(ValueError, match="no inconsistent pairs"):
        LZ.attribution_patching(tiny[0], empty)


def test_metadata_baseline_sees_relation_signal():
    rng = np.random.default_rng(0)
    rows = [dict(subject=f"s{i}", relation_id=r, template_p=0, template_q=1, consistent=int(r == "a" or rng.random() < 0.1))
            for i in range(200) for r in ("a", "b")]
    pairs = pd.DataFrame(rows)
    res = LZ.metadata_baseline(pairs, ("relation_id",))
    assert res["accuracy"] > 0.85
