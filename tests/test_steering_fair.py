"""Chapter 2's fair comparison (issue #14): LoRA baseline, centred directions, diagnosis, cost."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from editlens.steering import (
    SideEffectData,
    answer_shift,
    choose_setting,
    control_shifts,
    controlled_evaluation,
    cost_by_train_size,
    direction_stability,
    effect_per_relation,
    evaluate_state,
    fit_directions,
    k_shares,
    per_query_scores,
    probe_ranking,
    random_directions,
    steered_vs_controls,
    sweep_settings,
)
from editlens.steering.directions import centre_per_group


class _Q:
    def __init__(self, relation_id, subject, object, prompts, candidates):
        self.relation_id, self.subject, self.object = relation_id, subject, object
        self.prompts, self.candidates, self.split = tuple(prompts), tuple(candidates), "train"


def _queries():
    caps = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")]
    cands = [c for _, c in caps]
    return [_Q("P36", s, o, [f"The capital of {s} is", f"{s} has the capital", f"The capital city of {s} is"], cands)
            for s, o in caps]


def _snapshot(model):
    return {n: t.detach().clone() for n, t in model.original_model.state_dict().items()}


def _same(model, snap):
    now = model.original_model.state_dict()
    return set(now) == set(snap) and all(torch.equal(now[n], snap[n]) for n in snap)


# ------------------------------------------------------------------------------- LoRA

def test_lora_changes_outputs_and_restores_exactly(tiny_model):
    from editlens.sft import LoraSpec, finetuned, lora_adapters

    toks = tiny_model.to_tokens("The capital of France is")
    base = tiny_model(toks).detach()
    snap = _snapshot(tiny_model)
    flags = [p.requires_grad for p in tiny_model.original_model.parameters()]
    modules = {n: type(m) for n, m in tiny_model.original_model.named_modules()}
    with lora_adapters(tiny_model, LoraSpec(r=2, seed=0)) as adapters:
        assert adapters and all("lora_" in n for n in adapters)
        assert torch.equal(tiny_model(toks).detach(), base)  # B = 0 at the start
        with torch.no_grad():
            for n, p in adapters.items():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        assert not torch.allclose(tiny_model(toks).detach(), base)  # the bridge's forward runs through LoRA
    assert torch.equal(tiny_model(toks).detach(), base) and _same(tiny_model, snap)
    assert {n: type(m) for n, m in tiny_model.original_model.named_modules()} == modules

    qs = _queries()[:2]
    seen = {}
    with finetuned(tiny_model, qs, "gold", lr=5e-2, steps=3, batch_size=2, eval_every=1, progress=False,
                   lora=LoraSpec(r=2), eval_fn=lambda m: {"loss_probe": 0.0}) as (m, res):
        seen["changed"] = not torch.allclose(m(toks).detach(), base)
    assert seen["changed"] and res.method == "lora(r=2)" and res.steps == 3
    n_full = sum(p.numel() for p in tiny_model.original_model.parameters())
    assert 0 < res.n_trainable < n_full and all("lora_" in n for n in res.trainable)
    assert _same(tiny_model, snap) and torch.equal(tiny_model(toks).detach(), base)
    assert flags == [p.requires_grad for p in tiny_model.original_model.parameters()]
    assert all(p.grad is None for p in tiny_model.original_model.parameters())
    # same seed, same numbers
    from editlens.sft import finetune_consistency
    a = finetune_consistency(tiny_model, qs, "gold", lr=5e-2, steps=2, batch_size=2, progress=False, lora=LoraSpec(r=2))
    b = finetune_consistency(tiny_model, qs, "gold", lr=5e-2, steps=2, batch_size=2, progress=False, lora=LoraSpec(r=2))
    assert [h["loss"] for h in a.history[1:]] == [h["loss"] for h in b.history[1:]]
    assert _same(tiny_model, snap)
    with pytest.raises(ValueError, match="not both"):
        finetune_consistency(tiny_model, qs, "gold", steps=1, lora=LoraSpec(), trainable=["mlp"], progress=False)
    with pytest.raises(ValueError, match="matches no Linear"):
        finetune_consistency(tiny_model, qs, "gold", steps=1, lora=LoraSpec(target=("nope",)), progress=False)
    with pytest.raises(ValueError, match="r >= 1"):
        LoraSpec(r=0)
    assert _same(tiny_model, snap)


def test_restore_best_yields_the_selected_checkpoint(tiny_model):
    from editlens.sft import finetuned

    qs = _queries()[:2]
    snap = _snapshot(tiny_model)
    metric = iter([0.1, 0.9, 0.2, 0.3])  # best at step 1
    with finetuned(tiny_model, qs, "gold", lr=1e-2, steps=3, batch_size=2, eval_every=1, progress=False,
                   trainable=["layers.1.mlp"], eval_fn=lambda m: {"consistency": next(metric)},
                   restore_best="consistency") as (m, res):
        assert res.restored_step == 1 and res.best("consistency")["step"] == 1
        at_best = _snapshot(m)
    with finetuned(tiny_model, qs, "gold", lr=1e-2, steps=1, batch_size=2, progress=False,
                   trainable=["layers.1.mlp"]) as (m, _):
        assert _same(m, at_best)  # step 1 of the same seeded run
    assert _same(tiny_model, snap)
    with pytest.raises(ValueError, match="restore_best"):
        with finetuned(tiny_model, qs, "gold", steps=1, progress=False, restore_best="consistency"):
            pass


# ------------------------------------------------------------------------------- directions

def test_centred_directions_remove_the_query_offset():
    # two queries far apart; within each, label 1 sits +e1 from label 0. The query offset (along e0)
    # is confounded with the labels (query A has more 1s), which the uncentred mass-mean picks up.
    zA = torch.tensor([[10.0, 1, 0], [10.0, 1, 0], [10.0, 1, 0], [10.0, 0, 0]])
    zB = torch.tensor([[-10.0, 1, 0], [-10.0, 0, 0], [-10.0, 0, 0], [-10.0, 0, 0]])
    z = torch.cat([zA, zB])[:, None, None, :]
    y = [1, 1, 1, 0, 1, 0, 0, 0]
    g = [0] * 4 + [1] * 4
    raw = fit_directions(z, y, method="mass_mean")
    cen = fit_directions(z, y, method="mass_mean", centre_by=g)
    assert abs(raw.theta[0, 0, 0]) > 0.9  # dominated by the query offset
    assert torch.allclose(cen.theta[0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert cen.info["centred"] and not raw.info["centred"]
    c = centre_per_group(z.double(), g)
    assert torch.allclose(c[:4].mean(0), torch.zeros(1, 1, 3, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="group ids"):
        fit_directions(z, y, centre_by=[0, 1])


def test_direction_stability_synthetic():
    rng = np.random.default_rng(0)
    n_q, T, D = 40, 6, 16
    true = np.zeros(D); true[0] = 1.0
    y = rng.integers(0, 2, size=n_q * T)
    x = rng.normal(size=(n_q * T, 2, D))
    x[:, 0] += 3.0 * y[:, None] * true  # head (0, 0): a real direction; head (0, 1): noise only
    z = torch.from_numpy(x).float()[:, None]  # [prompt, layer=1, head=2, d]
    g = np.repeat(np.arange(n_q), T)
    t = direction_stability(z, y, g, seed=0)
    assert list(t.columns) == ["layer", "head", "cosine", "chance"] and len(t) == 2
    assert t.loc[0, "cosine"] > 0.95 and abs(t.loc[1, "cosine"]) < 0.6
    assert t.loc[0, "chance"] == pytest.approx(0.25)
    assert direction_stability(z, y, g, seed=0).equals(t)
    assert len(direction_stability(z, y, g, heads=[(0, 0)], centre=True)) == 1
    with pytest.raises(ValueError, match="one group id"):
        direction_stability(z, y, g[:5])


def test_control_shifts_kinds():
    z = torch.randn(20, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    y = [0, 1] * 10
    out = control_shifts(z, y, [(0, 0), (1, 2)], alpha=2.0, n_seeds=2)
    assert [k for k, _, _ in out] == ["steered", "random heads", "random directions"] * 1 + \
        ["random heads", "random directions"]
    for kind, _, shifts in out:
        if kind == "random heads":
            assert not set(shifts) & {(0, 0), (1, 2)} and len(shifts) == 2
        else:
            assert set(shifts) == {(0, 0), (1, 2)}


def test_centred_controls_measure_sigma_like_the_centred_direction():
    z = torch.randn(24, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    z[:12] += 5.0  # two groups far apart: the uncentred spread is much larger than the centred one
    y = [0, 1] * 12
    g = [0] * 12 + [1] * 12
    plain = random_directions(z, heads=[(0, 0)], seed=1)
    cen = random_directions(z, heads=[(0, 0)], seed=1, centre_by=g)
    assert torch.equal(plain.theta[0, 0], cen.theta[0, 0])  # same direction, other spread
    assert cen.sigma[0, 0] < plain.sigma[0, 0] and cen.info["centred"] and not plain.info["centred"]
    out = control_shifts(z, y, [(0, 0)], alpha=1.0, n_seeds=1, seed=1, centre_by=g)
    shifts = {kind: s for kind, _, s in out}
    assert torch.allclose(shifts["random directions"][(0, 0)], cen.shift([(0, 0)], 1.0)[(0, 0)])
    uncentred = {kind: s for kind, _, s in control_shifts(z, y, [(0, 0)], alpha=1.0, n_seeds=1, seed=1)}
    assert torch.allclose(uncentred["random directions"][(0, 0)], plain.shift([(0, 0)], 1.0)[(0, 0)])


def test_choose_setting_is_the_chapters_rule():
    sweep = pd.DataFrame(dict(K=[8, 8, 16, 16], alpha=[0.5, 1.0, 0.5, 1.0], consistency=[0.70, 0.80, 0.80, 0.90],
                              accuracy=[0.60, 0.59, 0.60, 0.50]))
    best = choose_setting(sweep, base_accuracy=0.60, max_accuracy_drop=0.02)
    assert (best.K, best.alpha) == (8, 1.0)  # 16/1.0 loses too much accuracy; the tie 0.80 goes to the smaller K
    assert choose_setting(sweep, 0.60, 0.2).K == 16
    with pytest.raises(ValueError, match="no setting"):
        choose_setting(sweep, base_accuracy=0.9, max_accuracy_drop=0.01)


def test_sweep_settings_scores_every_cell_once(tiny_model):
    qs = _queries()
    z = torch.randn(30, tiny_model.cfg.n_layers, tiny_model.cfg.n_heads, tiny_model.cfg.d_head,
                    generator=torch.Generator().manual_seed(0))
    y = [0, 1] * 15
    dirs = {"a": fit_directions(z, y), "b": random_directions(z, seed=1)}
    ranking = [(1, 0), (0, 2), (1, 3)]
    frames: dict = {}
    sw = sweep_settings(tiny_model, qs[:2], dirs, ranking, [1, 3], [0.5, 2.0], answers_out=frames, progress=False)
    assert len(sw) == 8 and list(sw.columns) == ["directions", "K", "alpha", "consistency", "accuracy"]
    assert set(frames) == {(n, k, a) for n in "ab" for k in (1, 3) for a in (0.5, 2.0)}
    one = evaluate_state(tiny_model, {"v": qs[:2]}, shifts=dirs["b"].shift(ranking[:3], 2.0))
    row = sw[(sw.directions == "b") & (sw.K == 3) & (sw.alpha == 2.0)].iloc[0]
    assert row.consistency == one["v_consistency"] and row.accuracy == one["v_accuracy"]
    with pytest.raises(ValueError, match="K values"):
        sweep_settings(tiny_model, qs[:2], dirs, ranking, [4], [1.0], progress=False)
    # a K whose random-head control cannot be drawn outside the K chosen fails before any scoring, saying why
    n_heads = tiny_model.cfg.n_layers * tiny_model.cfg.n_heads
    everything = [(layer, h) for layer in range(tiny_model.cfg.n_layers) for h in range(tiny_model.cfg.n_heads)]
    with pytest.raises(ValueError, match=f"more than half of this model's {n_heads} heads"):
        sweep_settings(tiny_model, qs[:2], dirs, everything, [n_heads // 2 + 1], [1.0], progress=False)


def test_k_shares_scale_the_chapters_default_to_a_models_heads():
    assert k_shares(270) == [8, 16, 32, 64]  # SmolLM2's heads: the default itself
    assert k_shares(72) == [2, 4, 9, 17]  # Gemma 3 270M's: what its replay of Chapter 2 sweeps
    assert k_shares(4) == [1, 1, 1, 1]  # never below one head


def test_controlled_evaluation_scores_each_state_once_and_reuses_the_unsteered(tiny_model):
    qs = _queries()
    L, H, D = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads, tiny_model.cfg.d_head
    z = torch.randn(30, L, H, D, generator=torch.Generator().manual_seed(0))
    sets = control_shifts(z, [0, 1] * 15, [(1, 0), (0, 2)], alpha=2.0, n_seeds=2)
    splits = {"a": qs[:2], "b": qs[2:]}
    base_a = evaluate_state(tiny_model, {"a": qs[:2]}, answers_out=(got := {}))
    run = controlled_evaluation(tiny_model, splits, sets, unsteered={"a": got["a"]}, progress=False)
    assert run.frames["a"]["unsteered"][0] is got["a"]  # taken, not scored again
    assert {k: len(v) for k, v in run.frames["b"].items()} == {
        "unsteered": 1, "steered": 1, "random heads": 2, "random directions": 2}
    assert list(run.rows.columns) == ["split", "kind", "seed", "consistency", "accuracy"] and len(run.rows) == 12
    assert run.rows[run.rows.kind == "random heads"]["seed"].tolist() == [0, 1, 0, 1]
    steered_b = evaluate_state(tiny_model, {"b": qs[2:]}, shifts=sets[0][2])
    summ = run.summary()
    assert list(summ.index) == ["unsteered", "steered", "random heads", "random directions"]
    assert summ.loc["steered", ("b", "consistency")] == steered_b["b_consistency"]
    assert summ.loc["unsteered", ("a", "accuracy")] == base_a["a_accuracy"]
    ci = run.intervals(n_boot=100)
    assert set(ci["split"]) == {"a", "b"} and len(ci) == 2 * 3 * 2
    assert set(ci["against"]) == {"unsteered", "random heads", "random directions"}


def test_steered_vs_controls_pairs_queries_and_averages_seeds():
    objects, rel = ["a", "b", "c", "d"], ["R"] * 4
    base = _frame([["a", "x", "y"], ["b", "b", "x"], ["c", "x", "y"], ["d", "d", "d"]], objects, rel)
    steer = _frame([["a", "a", "a"], ["b", "b", "b"], ["c", "c", "y"], ["d", "d", "d"]], objects, rel)
    ctl1 = base.copy()
    ctl2 = _frame([["a", "a", "y"], ["b", "b", "x"], ["c", "x", "y"], ["d", "d", "x"]], objects, rel)
    t = steered_vs_controls({"steered": steer, "unsteered": base, "random heads": [ctl1, ctl2]},
                            against=("unsteered", "random heads"), n_boot=200)
    assert list(t["against"]) == ["unsteered", "unsteered", "random heads", "random heads"]
    pq = {k: per_query_scores(v).set_index("query_id") for k, v in
          {"s": steer, "u": base, "c": [ctl1, ctl2]}.items()}
    cons = t[(t.against == "unsteered") & (t.metric == "consistency")].iloc[0]
    assert cons["diff"] == pytest.approx((pq["s"].consistency - pq["u"].consistency).mean())
    assert cons["low"] <= cons["diff"] <= cons["high"] and cons["n"] == 4
    ctl = t[(t.against == "random heads") & (t.metric == "accuracy")].iloc[0]
    assert ctl["diff"] == pytest.approx((pq["s"].accuracy - pq["c"].accuracy).mean())
    assert pq["c"].loc[0, "consistency"] == pytest.approx((0 + 1 / 3) / 2)  # seeds averaged per query
    assert t.excludes_0.dtype == bool
    with pytest.raises(ValueError, match="lacks"):
        steered_vs_controls({"steered": steer}, against=("unsteered",))


def test_probe_ranking_synthetic():
    rng = np.random.default_rng(0)
    rows = [dict(query_id=q, template=t, relation_id="R1", subject=f"s{q}", object="a", prompt=f"p{q}-{t}",
                 answer=str(rng.choice(["a", "b"]))) for q in range(12) for t in range(3)]
    answers = pd.DataFrame(rows)
    z = torch.randn(len(answers), 2, 3, 4, generator=torch.Generator().manual_seed(0))
    ranking, acc = probe_ranking(z, answers, seed=0)
    assert acc.shape == (2, 3) and len(ranking) == 6 and len(set(ranking)) == 6
    assert acc[ranking[0]] == acc.max()
    with pytest.raises(ValueError, match="one row per answers row"):
        probe_ranking(z[:5], answers)


# ------------------------------------------------------------------------------- answer shift

def _frame(answers, objects, relations):
    rows = []
    for qid, (ans, obj, rel) in enumerate(zip(answers, objects, relations)):
        for t, a in enumerate(ans):
            rows.append(dict(query_id=qid, template=t, answer=a, object=obj, relation_id=rel,
                             correct=a == obj, subject=f"s{qid}"))
    return pd.DataFrame(rows)


def test_answer_shift_by_hand():
    before = _frame([["a", "a", "b", "c"], ["x", "y", "y", "y"], ["y", "y", "z", "z"]], ["a", "y", "z"],
                    ["R1", "R1", "R1"])
    after = _frame([["a", "a", "a", "y"], ["x", "x", "y", "q"], ["y", "y", "z", "z"]], ["a", "y", "z"],
                   ["R1", "R1", "R1"])
    s = answer_shift(before, after)
    # R1's most frequent answer before: y (5 of 12). query 0: b->a (its majority), c->y (frequent);
    # query 1 (majority y): y->x and y->q go elsewhere; query 2 is unchanged
    pq = s.per_query.set_index("query_id")
    assert pq.loc[0, ["to_majority", "to_frequent", "elsewhere"]].tolist() == [1, 1, 0]
    assert pq.loc[1, ["to_majority", "to_frequent", "elsewhere"]].tolist() == [0, 0, 2]
    assert pq.loc[2, "n_changed"] == 0
    assert s.summary["n_changed"] == 4 and s.summary["frac_to_majority"] == 0.25
    assert pq.loc[0, "entropy_before"] == pytest.approx(1.5)
    assert pq.loc[0, "entropy_after"] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert pq.loc[2, "entropy_before"] == pq.loc[2, "entropy_after"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same"):
        answer_shift(before, after.iloc[:-1])
    rel = effect_per_relation(before, after)
    assert set(rel["relation_id"]) == {"R1", "ALL"}
    assert (rel["d_consistency"] == rel["consistency_after"] - rel["consistency_before"]).all()


# ------------------------------------------------------------------------------- evaluation and cost

def test_evaluate_state_and_cost_tiny(tiny_model):
    from editlens.sft import LoraSpec

    qs = _queries()
    snap = _snapshot(tiny_model)
    shifts = {(1, 0): torch.ones(tiny_model.cfg.d_head)}
    got: dict = {}
    row = evaluate_state(tiny_model, {"validation": qs[:2], "test": qs[2:]}, name="steered", shifts=shifts,
                         answers_out=got, seconds=1.5)
    assert row["model"] == "steered" and row["seconds"] == 1.5 and set(got) == {"validation", "test"}
    assert {"validation_consistency", "validation_accuracy", "test_consistency", "test_accuracy"} <= set(row)
    assert 0 <= row["test_consistency"] <= 1
    last = evaluate_state(tiny_model, {"v": qs[:2]}, shifts=shifts, position="last")
    assert 0 <= last["v_consistency"] <= 1
    side = SideEffectData(texts=["The capital of France is Paris", "Berlin is located in Germany"])
    plain = evaluate_state(tiny_model, {"v": qs[:2]}, side=side)
    bent = evaluate_state(tiny_model, {"v": qs[:2]}, side=side, shifts=shifts)
    assert plain["perplexity"] > 1 and bent["perplexity"] != plain["perplexity"]
    assert math.isnan(plain["known_rewrite"]) and math.isnan(plain["generation_agreement"])
    assert math.isnan(evaluate_state(tiny_model, {"v": qs[:2]}, side=side, shifts=shifts, position="last")["perplexity"])
    with pytest.raises(ValueError, match="splits is empty"):
        evaluate_state(tiny_model, {})
    assert _same(tiny_model, snap)

    t = cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1), (1, 2)], sizes=[4, 5],
                           sft_kwargs=dict(steps=2, eval_every=1), lora_kwargs=dict(steps=2, eval_every=1),
                           lora_spec=LoraSpec(r=2))
    assert list(t["method"]) == ["steering", "sft", "lora"] * 2 and list(t["n_train"]) == [4] * 3 + [5] * 3
    assert (t["seconds"] > 0).all() and (t.loc[t.method == "steering", "ratio"] == 1.0).all()
    assert t.loc[t.method == "lora", "n_trainable"].iloc[0] < t.loc[t.method == "sft", "n_trainable"].iloc[0]
    assert _same(tiny_model, snap)
    with pytest.raises(ValueError, match="sizes"):
        cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], sizes=[50])


# ------------------------------------------------------------------------------- embedded model

@pytest.mark.slow
def test_embedded_lora_forward_is_used_and_restored(model):
    from editlens.sft import LoraSpec, lora_adapters

    toks = model.to_tokens("The capital of France is")
    base = model(toks).detach()
    snap = _snapshot(model)
    with lora_adapters(model, LoraSpec(r=4)) as adapters:
        # 30 layers x (q_proj 576->576, v_proj 576->192, o_proj 576->576), rank 4
        assert sum(p.numel() for p in adapters.values()) == 30 * 4 * ((576 + 576) + (576 + 192) + (576 + 576))
        with torch.no_grad():
            for n, p in adapters.items():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        assert not torch.allclose(model(toks).detach(), base, atol=1e-4)
    assert torch.equal(model(toks).detach(), base) and _same(model, snap)


# ---------------------------------------------------------------------- work done once (issue #10)

def test_initial_eval_replaces_the_step_zero_evaluation(tiny_model):
    from editlens.sft import finetune_consistency

    qs = _queries()
    calls = []

    def eval_fn(m):
        calls.append(1)
        return {"consistency": 0.5}

    kw = dict(lr=1e-2, steps=2, batch_size=2, eval_every=1, progress=False, seed=0, eval_fn=eval_fn)
    plain = finetune_consistency(tiny_model, qs, "gold", **kw)
    n_plain = len(calls)
    given = finetune_consistency(tiny_model, qs, "gold", initial_eval={"consistency": -1.0}, **kw)
    assert len(calls) - n_plain == n_plain - 1  # one evaluation fewer: step 0
    assert given.history[0]["consistency"] == -1.0 and given.history[0]["step"] == 0
    assert [r["loss"] for r in given.history[1:]] == [r["loss"] for r in plain.history[1:]]
    with pytest.raises(ValueError, match="eval_fn"):
        finetune_consistency(tiny_model, qs, "gold", steps=1, progress=False, initial_eval={"consistency": 0.0})


def test_first_steps_equals_a_shorter_run(tiny_model):
    from editlens.sft import finetune_consistency

    qs = _queries()

    def eval_fn(m):
        return {"consistency": float(sum(p.float().sum() for p in m.original_model.parameters()))}

    kw = dict(lr=1e-2, batch_size=2, eval_every=2, progress=False, seed=0, eval_fn=eval_fn)
    long = finetune_consistency(tiny_model, qs, "gold", steps=6, **kw)
    short = finetune_consistency(tiny_model, qs, "gold", steps=4, **kw)
    cut = long.first_steps(4)
    assert [r["step"] for r in cut.history] == [r["step"] for r in short.history] == [0, 2, 4]
    for a, b in zip(cut.history, short.history):  # same trajectory: same weights, same losses
        assert a["consistency"] == b["consistency"]
        assert (math.isnan(a["loss"]) and math.isnan(b["loss"])) or a["loss"] == b["loss"]
    assert cut.steps == 4 and cut.settings["steps"] == 4 and cut.train_seconds == long.history[2]["train_seconds"]
    with pytest.raises(ValueError, match="evaluated steps"):
        long.first_steps(3)


def test_cost_curve_reuses_a_full_run_only_when_it_is_the_same_run(tiny_model):
    from editlens.sft import LoraSpec, finetune_consistency

    qs = _queries()
    snap = _snapshot(tiny_model)
    kw = dict(sizes=[3, 5], methods=("sft",), sft_kwargs=dict(steps=2, eval_every=1, lr=1e-2))
    fresh = cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], **kw)
    from editlens import consistency as C

    base = C.summary(C.model_answers(tiny_model, qs[:2]))["consistency"]
    targets = {i: a for i, a in enumerate(C.query_consistency(C.model_answers(tiny_model, qs))["majority"])}

    def val(m):
        return {"consistency": C.summary(C.model_answers(m, qs[:2]))["consistency"]}

    run = finetune_consistency(tiny_model, qs, targets, lr=1e-2, steps=4, eval_every=1, batch_size=16, seed=0,
                               eval_fn=val, progress=False)
    reused = cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], base_consistency=base,
                                full_runs={"sft": run}, **kw)
    cols = ["n_train", "method", "val_consistency", "best_step"]
    pd.testing.assert_frame_equal(fresh[cols], reused[cols])
    assert reused.loc[reused.n_train == 5, "seconds_per_step"].iloc[0] == run.first_steps(2).seconds_per_step
    other_lr = finetune_consistency(tiny_model, qs, targets, lr=5e-2, steps=2, eval_every=1, batch_size=16, seed=0,
                                    eval_fn=val, progress=False)
    with pytest.raises(ValueError, match="lr="):
        cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], full_runs={"sft": other_lr}, **kw)
    lora = finetune_consistency(tiny_model, qs, targets, lr=1e-2, steps=2, eval_every=1, batch_size=16, seed=0,
                                eval_fn=val, progress=False, lora=LoraSpec(r=2))
    with pytest.raises(ValueError, match="lora="):
        cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], full_runs={"sft": lora}, **kw)
    part = finetune_consistency(tiny_model, qs, targets, lr=1e-2, steps=2, eval_every=1, batch_size=16, seed=0,
                                eval_fn=val, progress=False, trainable=["mlp"])
    with pytest.raises(ValueError, match="subset of the parameters"):
        cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], full_runs={"sft": part}, **kw)
    with pytest.raises(ValueError, match="full_runs keys"):
        cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], full_runs={"SFT": run}, **kw)
    assert _same(tiny_model, snap)


def test_cost_curve_takes_the_full_size_steering_point_from_the_caller(tiny_model):
    from editlens import consistency as C

    qs = _queries()
    kw = dict(sizes=[3, 5], methods=("steering",), alpha=2.0)
    fresh = cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], **kw)
    answers = C.model_answers(tiny_model, qs, rows_per_batch=8)
    full = dict(answers=answers, answers_seconds=1.5, seconds=4.0, val_consistency=0.25)
    reused = cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], full_steering=full, **kw)
    last = reused[reused.n_train == 5].iloc[0]
    assert (last.seconds, last.shared_seconds, last.val_consistency) == (4.0, 1.5, 0.25)
    first = ["n_train", "method", "val_consistency"]
    pd.testing.assert_frame_equal(fresh[fresh.n_train == 3][first], reused[reused.n_train == 3][first])
    with pytest.raises(ValueError, match="full_steering needs"):
        cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], full_steering={"seconds": 1.0}, **kw)
    with pytest.raises(ValueError, match="covers 2 queries"):
        cost_by_train_size(tiny_model, qs, qs[:2], heads=[(0, 1)], **kw,
                           full_steering=dict(full, answers=answers[answers.query_id < 2]))
