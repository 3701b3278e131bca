"""Causal tracing (Chapter 3): shapes, positions, and that restoring everything gives the clean answer back."""

from __future__ import annotations

import pytest
import torch

from editlens import tracing

FACT = {"requested_rewrite": {"prompt": "The capital of {} is", "subject": "France", "relation_id": "P36",
                              "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}}}


def test_subject_token_range(tiny_model):
    ids, (s0, s1) = tracing.subject_token_range(tiny_model, "The capital of {} is", "France")
    assert tiny_model.tokenizer.decode(ids[s0:s1]).strip() == "France"
    ids, (s0, s1) = tracing.subject_token_range(tiny_model, "{} is located in", "The Eiffel Tower")
    assert s0 == 1 and tiny_model.tokenizer.decode(ids[s0:s1]) == "The Eiffel Tower"


def test_window_layers():
    assert tracing.window_layers(0, 6, 30) == [0, 1, 2]
    assert tracing.window_layers(10, 6, 30) == [7, 8, 9, 10, 11, 12]
    assert tracing.window_layers(29, 6, 30) == [26, 27, 28, 29]
    assert tracing.window_layers(5, 1, 30) == [5]


@pytest.mark.parametrize("kind", tracing.KINDS)
def test_trace_shapes_and_sanity(tiny_model, kind):
    res = tracing.trace_fact(tiny_model, FACT, kind, n_samples=3, window=2, seed=0)
    n_tok = len(tiny_model.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]) + 1
    assert res.scores.shape == (n_tok, tiny_model.cfg.n_layers)
    assert res.indirect_effect.shape == res.scores.shape
    assert torch.isfinite(res.scores).all() and (res.scores >= 0).all() and (res.scores <= 1).all()
    if kind == "hidden":
        # restoring the last token's residual after the last block restores the clean run exactly
        assert res.scores[-1, -1].item() == pytest.approx(res.p_clean, rel=1e-4)
        # tokens before the subject are not corrupted: restoring them changes nothing
        assert torch.allclose(res.scores[0], torch.full_like(res.scores[0], res.p_corrupted), rtol=1e-4)
    again = tracing.trace_fact(tiny_model, FACT, kind, n_samples=3, window=2, seed=0)
    assert torch.equal(res.scores, again.scores)  # seeded noise


@pytest.mark.float32
def test_start_at_layer_matches_full_run(tiny_model):
    """The speed trick (restart from the cached corrupted stream) must equal restoring inside a full run."""
    res = tracing.trace_fact(tiny_model, FACT, "hidden", n_samples=2, seed=1, positions="subject_last")
    ids, (s0, s1) = tracing.subject_token_range(tiny_model, "The capital of {} is", "France")
    toks = torch.tensor([ids])
    std = tracing.embedding_std(tiny_model)
    eps = tracing._noise(2, s1 - s0, tiny_model.cfg.d_model, 3.0 * std, 1, "cpu")
    with torch.no_grad():
        _, clean = tiny_model.run_with_cache(toks)
        tgt = tiny_model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]

        def corrupt(a, hook):
            a = a.clone(); a[:, s0:s1] += eps; return a

        def restore(a, hook):
            a = a.clone(); a[:, s1 - 1] = clean["blocks.0.hook_resid_post"][0, s1 - 1]; return a

        logits = tiny_model.run_with_hooks(toks.expand(2, -1), fwd_hooks=[("hook_embed", corrupt),
                                                                          ("blocks.0.hook_resid_post", restore)])
    p = torch.softmax(logits[:, -1], -1)[:, tgt].mean()
    assert res.scores[0, 0].item() == pytest.approx(p.item(), rel=1e-4)


@pytest.mark.parametrize("kind", tracing.KINDS)
def test_all_layers_in_one_pass_match_one_batch_per_layer(tiny_model, kind, monkeypatch):
    """The staircase (every layer's restorations in one pass, runs joining at their start block) gives the
    scores of one restored batch per layer, also when the rows are split into several passes."""
    per_layer = tracing.trace_fact(tiny_model, FACT, kind, n_samples=3, window=2, seed=2, batch_layers=False)
    together = tracing.trace_fact(tiny_model, FACT, kind, n_samples=3, window=2, seed=2)
    torch.testing.assert_close(together.scores, per_layer.scores, atol=1e-6, rtol=1e-4)
    assert together.p_corrupted == pytest.approx(per_layer.p_corrupted, rel=1e-5)
    monkeypatch.setattr(tracing, "MAX_ROWS", 3 * len(per_layer.positions))  # one layer per pass
    split = tracing.trace_fact(tiny_model, FACT, kind, n_samples=3, window=2, seed=2)
    torch.testing.assert_close(split.scores, per_layer.scores, atol=1e-6, rtol=1e-4)


def test_average_indirect_effects(tiny_model):
    avg = tracing.average_indirect_effects(tiny_model, [FACT, FACT], kinds=("hidden", "mlp"), n_samples=2, window=1,
                                           only_known=False, progress=False)
    assert avg.subject_last["mlp"].shape == (tiny_model.cfg.n_layers,) and avg.n_facts == 2
    assert avg.traced == ["The capital of France is"] * 2 and avg.skipped == []
    # best_layer is the argmax over layers of the mean indirect effect of restoring at the subject's last
    # token: recompute that from one trace_fact per kind (both facts are FACT, so the mean is that trace).
    # A random model's effects are tiny (~1e-8), so compare relatively, not with an absolute tolerance.
    std = tracing.embedding_std(tiny_model, ["France"])
    for kind in ("hidden", "mlp"):
        one = tracing.trace_fact(tiny_model, FACT, kind, window=1, n_samples=2, noise_std=std, seed=0,
                                 positions="subject_last")
        ie = one.indirect_effect[0]
        torch.testing.assert_close(avg.subject_last[kind], ie, atol=1e-12, rtol=1e-3)
        top2 = torch.topk(ie, 2).values
        assert top2[0] - top2[1] > 1e-3 * ie.abs().max(), (kind, ie)  # a clear argmax, not a tie
        assert avg.best_layer(kind) == int(torch.argmax(ie)), (kind, ie)
    with pytest.raises(ValueError, match="known"):
        tracing.average_indirect_effects(tiny_model, [FACT], kinds=("hidden",), n_samples=2, progress=False)


@pytest.mark.slow
def test_tracing_embedded_peaks_at_subject(model):
    res = tracing.trace_fact(model, FACT, "hidden", n_samples=4, positions=None)
    assert res.p_clean > 0.3 and res.p_corrupted < res.p_clean
    ie = res.indirect_effect
    s_last = res.subject_last
    # early layers: the subject's last token carries the fact; late layers: the last token does
    assert ie[s_last, :5].mean() > ie[0, :5].mean()
    assert ie[-1, -1] > 0.5 * (res.p_clean - res.p_corrupted)


@pytest.mark.slow
def test_trace_mlps_record_holds_what_its_readers_read(model):
    """The one tracing.json writer (scripts/choose_edit_layer.py, scripts/method_or_model.py): the known fact is
    traced with its relation, the unknown one skipped, and the per-fact effects average to the stored mean."""
    import json

    unknown = {"requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Zorblax Quintervane",
                                     "relation_id": "P103", "target_new": {"str": "French"},
                                     "target_true": {"str": "Klingon"}}}
    tr, record = tracing.trace_mlps(model, [FACT, unknown], model_name="smollm2-135m", facts_source="two facts",
                                    progress=False)
    record = json.loads(json.dumps(record))  # it is stored as JSON
    assert record["traced"] == ["The capital of France is"] and record["relation_of_traced"] == ["P36"]
    assert record["skipped"] == ["The mother tongue of Zorblax Quintervane is"] and record["n_skipped"] == 1
    assert record["n_layers"] == model.cfg.n_layers == len(record["indirect_effect_subject_last"])
    per_fact = torch.tensor(record["per_fact_subject_last"])
    assert per_fact.shape == (1, model.cfg.n_layers)
    torch.testing.assert_close(per_fact.mean(0), torch.tensor(record["indirect_effect_subject_last"]))
    assert record["window"] == 1 and record["n_samples"] == 10 and tr.best_layer() == int(per_fact[0].argmax())
