"""Consistency steering (Chapter 2): directions, hooks, baked biases, saved checkpoints, SFT baseline."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import without_shape_checks
from editlens.steering import (
    Directions, bake_bias, baked, bias_from_shifts, fit_directions, labels_from_answers, random_directions,
    random_heads, save_steered, steered, steering_hooks,
)

PROMPTS = ["The capital of France is", "The mother tongue of Paris is", "Berlin is located in"]


def _tokens(model, prompts=PROMPTS):
    ids = [model.to_tokens(p, prepend_bos=True)[0] for p in prompts]
    n = min(len(i) for i in ids)
    return torch.stack([i[:n] for i in ids])


def _shifts(model, heads, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {hd: scale * torch.randn(model.cfg.d_head, generator=g) for hd in heads}


def _snapshot(model):
    return {n: t.detach().clone() for n, t in model.original_model.state_dict().items()}


def _same(model, snap):
    now = model.original_model.state_dict()
    return set(now) == set(snap) and all(torch.equal(now[n], snap[n]) for n in snap)


class _Q:
    def __init__(self, relation_id, subject, object, prompts, candidates):
        self.relation_id, self.subject, self.object = relation_id, subject, object
        self.prompts, self.candidates, self.split = tuple(prompts), tuple(candidates), "train"


# ------------------------------------------------------------------------------- directions

def test_labels_from_answers_majority():
    df = pd.DataFrame(dict(query_id=[0, 0, 0, 1, 1], template=[0, 1, 2, 0, 1], answer=["a", "b", "a", "x", "y"],
                           object=["b", "b", "b", "y", "y"]))
    # query 0: majority "a" (2 of 3); query 1: tie x/y goes to gold "y"
    assert labels_from_answers(df).tolist() == [1, 0, 1, 0, 1]


def test_mass_mean_direction_and_sigma_by_hand():
    z = torch.zeros(4, 1, 2, 3)
    z[:, 0, 1] = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [0, 4.0, 0]])
    labels = [1, 1, 0, 0]
    d = fit_directions(z, labels, heads=[(0, 1)], method="mass_mean")
    diff = torch.tensor([2.0, -3.0, 0.0])  # mean(1) - mean(0) = (2,0,0) - (0,3,0)
    theta = diff / diff.norm()
    assert torch.allclose(d.theta[0, 1], theta, atol=1e-6)
    proj = z[:, 0, 1] @ theta
    assert d.sigma[0, 1].item() == pytest.approx(float(proj.std(correction=0)), rel=1e-6)
    assert torch.isnan(d.theta[0, 0]).all() and d.n_per_class == (2, 2)
    shift = d.shift([(0, 1)], alpha=2.0)[(0, 1)]
    assert torch.allclose(shift, 2.0 * d.sigma[0, 1] * theta, atol=1e-6)


def test_probe_direction_separates_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([1, 10, 1, 1, 1])
    y = (x[:, 0] + 0.1 * rng.normal(size=200) > 0).astype(int)
    z = torch.from_numpy(x).float()[:, None, None, :]
    d = fit_directions(z, y, method="probe", seed=0)
    assert d.theta[0, 0].norm().item() == pytest.approx(1.0, abs=1e-5)
    assert d.theta[0, 0, 0] > 0.9  # raw-space weight points along feature 0 despite feature 1's scale
    assert fit_directions(z, y, method="probe", seed=0).theta.equal(d.theta)


def test_random_directions_unit_and_seeded():
    z = torch.randn(50, 2, 3, 8, generator=torch.Generator().manual_seed(0))
    a, b = random_directions(z, seed=3), random_directions(z, seed=3)
    c = random_directions(z, heads=[(1, 2)], seed=3)
    assert torch.equal(a.theta, b.theta) and torch.allclose(a.theta.norm(dim=-1), torch.ones(2, 3), atol=1e-6)
    assert torch.equal(c.theta[1, 2], a.theta[1, 2])  # independent of which heads are asked for
    assert not torch.equal(random_directions(z, seed=4).theta, a.theta)
    proj = z[:, 1, 2] @ a.theta[1, 2]
    assert a.sigma[1, 2].item() == pytest.approx(float(proj.std(correction=0)), rel=1e-5)


def test_random_heads_seeded_and_excluding():
    a = random_heads(30, 9, 8, exclude=[(0, 0), (1, 1)], seed=1)
    assert a == random_heads(30, 9, 8, exclude=[(0, 0), (1, 1)], seed=1)
    assert len(set(a)) == 8 and (0, 0) not in a and (1, 1) not in a
    with pytest.raises(ValueError, match="available"):
        random_heads(2, 2, 5)


def test_directions_bad_inputs():
    z = torch.randn(6, 2, 3, 4)
    with pytest.raises(ValueError, match="out of range"):
        fit_directions(z, [0, 1] * 3, heads=[(5, 0)])
    with pytest.raises(ValueError, match="empty"):
        fit_directions(z, [0, 1] * 3, heads=[])
    with pytest.raises(ValueError, match="single class"):
        fit_directions(z, [1] * 6)
    with pytest.raises(ValueError, match="labels"):
        fit_directions(z, [0, 1])
    d = fit_directions(z, [0, 1] * 3, heads=[(0, 0)])
    with pytest.raises(ValueError, match="finite"):
        d.shift([(0, 0)], alpha=float("nan"))
    with pytest.raises(ValueError, match="No direction was fitted"):
        d.shift([(1, 1)], alpha=1.0)


# ------------------------------------------------------------------------------- hooks and bias

@pytest.mark.float32
def test_hook_z_feeds_the_output_projection(tiny_model):
    """hook_z is o_proj's input: o_proj(z) reproduces the attention output."""
    toks = _tokens(tiny_model)
    _, cache = tiny_model.run_with_cache(toks, names_filter=lambda n: n in {"blocks.1.attn.hook_z", "blocks.1.attn.hook_out"})
    z = cache["blocks.1.attn.hook_z"]
    lin = tiny_model.blocks[1].attn.o.original_component
    assert torch.allclose(lin(z.flatten(-2)), cache["blocks.1.attn.hook_out"], atol=1e-6)


@pytest.mark.float32
def test_hook_and_baked_bias_agree(tiny_model):
    shifts = _shifts(tiny_model, [(0, 1), (1, 3), (1, 0)])
    toks = _tokens(tiny_model)
    base = tiny_model(toks).detach()
    with steered(tiny_model, shifts, "all"):
        hooked = tiny_model(toks).detach()
    with baked(tiny_model, shifts):
        bias = tiny_model(toks).detach()
    assert (hooked - base).abs().max() > 1e-2  # the shift does something
    assert torch.allclose(hooked, bias, atol=1e-5)
    assert torch.equal(tiny_model(toks).detach(), base)


def test_bias_is_w_o_times_shift_not_raw_shift(tiny_model):
    shifts = _shifts(tiny_model, [(1, 2)])
    W_O = tiny_model.blocks[1].attn.o.original_component.weight  # [d_model, n_heads*d_head]
    D = tiny_model.cfg.d_head
    expected = W_O[:, 2 * D:3 * D] @ shifts[(1, 2)]
    assert torch.allclose(bias_from_shifts(tiny_model, shifts)[1], expected, atol=1e-6)


def test_last_position_hook_only_changes_last_and_later(tiny_model):
    shifts = _shifts(tiny_model, [(1, 1)], scale=3.0)
    toks = _tokens(tiny_model)
    base = tiny_model(toks).detach()
    last = torch.full((toks.shape[0],), toks.shape[1] - 2)
    with tiny_model.hooks(fwd_hooks=steering_hooks(shifts, "last", model=tiny_model)(last)):
        out = tiny_model(toks).detach()
    assert torch.equal(out[:, :-2], base[:, :-2]) and (out[:, -2] - base[:, -2]).abs().max() > 1e-3


def test_weights_restored_after_remove_and_exception(tiny_model):
    snap = _snapshot(tiny_model)
    shifts = _shifts(tiny_model, [(0, 0), (1, 3)])
    handle = bake_bias(tiny_model, shifts)
    assert tiny_model.blocks[0].attn.o.original_component.bias is not None
    handle.remove()
    handle.remove()  # idempotent
    assert tiny_model.blocks[0].attn.o.original_component.bias is None and _same(tiny_model, snap)
    with pytest.raises(RuntimeError, match="boom"):
        with baked(tiny_model, shifts):
            raise RuntimeError("boom")
    assert _same(tiny_model, snap)
    with pytest.raises(RuntimeError, match="boom"):
        with steered(tiny_model, shifts):
            raise RuntimeError("boom")
    assert _same(tiny_model, snap)
    assert not any(hp.fwd_hooks for hp in tiny_model.hook_dict.values() if hasattr(hp, "fwd_hooks"))


def test_shift_bad_inputs(tiny_model):
    D = tiny_model.cfg.d_head
    with pytest.raises(ValueError, match="out of range"):
        steering_hooks({(0, 99): torch.zeros(D)}, model=tiny_model)
    with pytest.raises(ValueError, match="shape"):
        steering_hooks({(0, 1): torch.zeros(D + 1)}, model=tiny_model)
    with pytest.raises(ValueError, match="NaN"):
        steering_hooks({(0, 1): torch.full((D,), float("nan"))}, model=tiny_model)
    with pytest.raises(ValueError, match="empty"):
        bake_bias(tiny_model, {})
    with pytest.raises(ValueError, match="position"), without_shape_checks():
        steering_hooks({(0, 1): torch.zeros(D)}, position="first")
    with pytest.raises(ValueError, match="shape"):
        with baked(tiny_model, {(0, 1): torch.zeros(D, 2)}):
            pass


@pytest.mark.float32
def test_save_steered_roundtrip_tiny(tiny_model, tmp_path):
    import editlens

    shifts = _shifts(tiny_model, [(0, 2), (1, 1)])
    toks = _tokens(tiny_model)
    with baked(tiny_model, shifts):
        expected = tiny_model(toks).detach()
    folder = save_steered(tiny_model, shifts, tmp_path / "steered")
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    import json
    assert json.loads((folder / "config.json").read_text())["attention_bias"] is True
    reloaded, _ = editlens.load_model(folder, device="cpu", dtype="float32")  # the tiny model computes in float32
    assert torch.allclose(reloaded(toks).detach(), expected, atol=1e-5)


# ------------------------------------------------------------------------------- SFT

def test_sft_trains_and_restores_exactly(tiny_model):
    from editlens.sft import finetune_consistency, finetuned

    qs = [_Q("P1", "France", "Paris", ["The capital of France is", "France has the capital"], ["Paris", "Berlin"]),
          _Q("P1", "Germany", "Berlin", ["The capital of Germany is", "Germany has the capital"], ["Paris", "Berlin"])]
    snap = _snapshot(tiny_model)
    flags = [p.requires_grad for p in tiny_model.original_model.parameters()]
    seen = {}
    with finetuned(tiny_model, qs, "gold", lr=1e-2, steps=3, batch_size=2, eval_every=1, progress=False,
                   eval_fn=lambda m: {"probe": 1.0}) as (m, res):
        seen["changed"] = not _same(m, snap)
    assert seen["changed"] and res.steps == 3 and [r["step"] for r in res.history] == [0, 1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in res.history[1:]) and res.history[0]["probe"] == 1.0
    assert _same(tiny_model, snap) and flags == [p.requires_grad for p in tiny_model.original_model.parameters()]
    assert all(p.grad is None for p in tiny_model.original_model.parameters())
    with pytest.raises(RuntimeError, match="boom"):
        with finetuned(tiny_model, qs, "gold", lr=1e-2, steps=1, batch_size=2, progress=False):
            raise RuntimeError("boom")
    assert _same(tiny_model, snap)
    r1 = finetune_consistency(tiny_model, qs, "gold", lr=1e-2, steps=2, batch_size=2, progress=False, seed=0)
    r2 = finetune_consistency(tiny_model, qs, "gold", lr=1e-2, steps=2, batch_size=2, progress=False, seed=0)
    assert [h["loss"] for h in r1.history[1:]] == [h["loss"] for h in r2.history[1:]]
    assert _same(tiny_model, snap)
    with pytest.raises(ValueError, match="selects no parameter"):
        finetune_consistency(tiny_model, qs, "gold", steps=1, trainable=["no_such_param"], progress=False)


# ------------------------------------------------------------------------------- embedded model

@pytest.mark.slow
def test_embedded_hook_vs_bias_and_answers(model):
    """The hook and the baked bias are the same function: equal to float32 noise (bf16 rounds the two
    orders of the sum differently, so the identity is checked in float32)."""
    from editlens.consistency import model_answers
    from editlens.data.paraphrases import load_paraphrases
    from editlens.precision import full_precision

    with full_precision(model):
        _hook_vs_bias_and_answers(model, model_answers, load_paraphrases)


def _hook_vs_bias_and_answers(model, model_answers, load_paraphrases):
    snap = _snapshot(model)
    shifts = _shifts(model, [(23, 4), (13, 6), (29, 1)], scale=2.0)
    toks = _tokens(model)
    with steered(model, shifts, "all"):
        hooked = model(toks).detach()
    with baked(model, shifts):
        bias = model(toks).detach()
    assert torch.allclose(hooked, bias, atol=1e-4)
    qs = load_paraphrases("validation", scheme="subjects")[:4]
    a = model_answers(model, qs, fwd_hooks=steering_hooks(shifts, "all", model=model))
    with baked(model, shifts):
        b = model_answers(model, qs)
    assert list(a["answer"]) == list(b["answer"])
    assert np.allclose(a["answer_nll"], b["answer_nll"], atol=1e-4)
    assert _same(model, snap)


@pytest.mark.slow
def test_embedded_save_steered_reloads(model, tmp_path):
    import editlens

    shifts = _shifts(model, [(23, 4), (11, 1)])
    toks = _tokens(model)
    with baked(model, shifts):
        expected = model(toks).detach()
    folder = save_steered(model, shifts, tmp_path / "smol-steered")
    reloaded, tok = editlens.load_model(folder, device="cpu")
    assert reloaded.to_tokens(PROMPTS[0]).tolist() == model.to_tokens(PROMPTS[0]).tolist()
    assert torch.allclose(reloaded(toks).detach(), expected, atol=1e-5)
    assert model.blocks[23].attn.o.original_component.bias is None


@pytest.mark.slow
def test_embedded_sft_gradients_reach_hf_weights(model):
    from editlens.sft import finetuned
    from editlens.data.paraphrases import load_paraphrases

    snap = _snapshot(model)
    qs = load_paraphrases("train", scheme="subjects")[:2]
    with finetuned(model, qs, "gold", lr=1e-5, steps=1, batch_size=4, progress=False,
                   trainable=["layers.29.mlp"]) as (m, res):
        changed = [n for n, t in m.original_model.state_dict().items() if not torch.equal(t, snap[n])]
        assert changed and all("layers.29" in n and "mlp" in n for n in changed)
    assert _same(model, snap)


def test_last_token_steering_packed_equals_unpacked(tiny_model):
    """Steering only the last prompt token gives the same scores in packed prefix trees (the factory's
    at_positions marks each prompt's end node) as one prompt per row, in float32; a prompt that ends
    inside another prompt sends the batch to the unpacked path."""
    from unittest import mock

    from editlens import scoring
    from editlens.precision import full_precision

    prompts = ["The capital of France is", "The capital of Spain is", "Berlin is located in", "The capital of"]
    cands = [["Paris", "New York", "Madrid"], ["Madrid", "Paris"], ["Germany", "New Zealand"], ["France", "Spain"]]
    hooks = steering_hooks(_shifts(tiny_model, [(0, 1), (1, 2)], scale=3.0), "last", model=tiny_model)
    assert hasattr(hooks, "at_positions")
    with full_precision(tiny_model):
        for n, fallback in ((3, False), (4, True)):  # "The capital of" ends inside "The capital of France is"
            ps, cs = prompts[:n], cands[:n]
            unpacked = scoring.score_candidates(tiny_model, ps, cs, fwd_hooks=hooks, packed=False, batch_size=2)
            for rows in (1, 3):
                with mock.patch.object(scoring, "_score_unpacked", wraps=scoring._score_unpacked) as spy:
                    packed = scoring.score_candidates(tiny_model, ps, cs, fwd_hooks=hooks, row_tokens=12,
                                                      rows_per_batch=rows)
                assert spy.called == fallback
                np.testing.assert_allclose(np.concatenate(packed), np.concatenate(unpacked), atol=1e-4)
        plain = scoring.score_candidates(tiny_model, prompts[:3], cands[:3], row_tokens=12)
        steered = scoring.score_candidates(tiny_model, prompts[:3], cands[:3], fwd_hooks=hooks, row_tokens=12)
        assert not np.allclose(np.concatenate(plain), np.concatenate(steered), atol=1e-3)
