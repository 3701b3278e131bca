"""SADR (Chapter 5): the attention-drift term, its editor, drift diagnostics, the restoration experiment, pooling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from editlens.data import as_request
from editlens.evaluate import EvalReport, probe_rows
from editlens.rome import Edit, ROMEHyperParams, compute_v
from editlens.rome import values as V
from editlens.rome.editor import rome_editor
from editlens.sadr import (
    DEFAULT_GAMMA,
    AttentionDriftTerm,
    all_pairs,
    answer_probability,
    answer_run,
    attention_drift,
    attention_row,
    combined_terms,
    distracted_prompts,
    drift_loss_per_layer,
    pooled_summary,
    prompt_batch,
    random_pairs,
    record_patterns,
    record_run,
    restoration_experiment,
    restore,
    row_kl,
    run_patterns,
    sadr_editor,
    sadr_terms,
    selective_mask,
    subject_attention,
    subject_positions,
)

# as in test_values.py: a random model's v0 is tiny, so no weight decay and no clamp
HP = ROMEHyperParams(layer=0, v_num_grad_steps=5, context_lengths=((3, 2),), v_lr=0.5, v_weight_decay=0.0,
                     clamp_norm_factor=1e4)
CASE = {"case_id": 7, "requested_rewrite": {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                                            "relation_id": "P131", "target_new": {"str": "Rome", "id": "Q220"},
                                            "target_true": {"str": "Paris", "id": "Q90"}},
        "neighborhood_prompts": ["The Louvre is located in the city of", "Notre-Dame is located in the city of"],
        "paraphrase_prompts": ["Where is the Eiffel Tower? It is in the city of"]}


@pytest.fixture
def tiny3_model(embedded_tokenizer):
    """A 3-layer tiny Llama (4 query heads, 2 key/value heads: GQA like SmolLM2)."""
    from editlens.localize.toy import tiny_llama

    return tiny_llama(0, n_layers=3, d_mlp=128, weight_std=None, tokenizer=embedded_tokenizer, tie_embeddings=True,
                      max_positions=256)[0]


# ---------------------------------------------------------------------------------------------- the term, by hand
def test_selective_mask_compares_with_the_max_over_heads_before():
    before = torch.zeros(1, 3, 4)
    before[0, :, 2] = torch.tensor([0.1, 0.3, 0.2])  # subject key s = 2: max over heads 0.3
    now = torch.zeros(1, 3, 4)
    now[0, :, 2] = torch.tensor([0.35, 0.3, 0.25])
    mask = selective_mask(now, before, torch.tensor([2]))
    assert mask.tolist() == [[True, False, False]]  # strict; head 2 grew (0.2 -> 0.25) but not past 0.3
    per_head = now[0, :, 2] > before[0, :, 2]
    assert per_head.tolist() == [True, False, True]  # not the per-head before/after comparison
    now.requires_grad_(True)
    assert not selective_mask(now, before, torch.tensor([2])).requires_grad


def test_kl_and_reduction_by_hand():
    a0 = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])  # [row 1, head 2, key 3]
    a = torch.tensor([[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]]])
    keys = torch.tensor([[True, True, False]])
    eps = 1e-8
    p, q = a0 + eps, a + eps
    expected = (p * (p / q).log())[..., :2].sum(-1)
    torch.testing.assert_close(row_kl(a0, a, keys), expected)
    # hinge off: sum over heads / rows; two rows, one layer
    two = drift_loss_per_layer([torch.cat([a, a])], [torch.cat([a0, a0])], torch.tensor([1, 1]),
                               torch.cat([keys, keys]), hinge=False)
    torch.testing.assert_close(two, expected.sum()[None])  # divided by the number of rows
    # hinge on, subject key 1: before max 0.5; now head 0 has 0.75 > 0.5 (kept), head 1 has 0.5 (dropped)
    one = drift_loss_per_layer([a], [a0], torch.tensor([1]), keys)
    torch.testing.assert_close(one, expected[0, :1])


def test_default_gamma_is_the_authors_rome_setting():
    assert DEFAULT_GAMMA == pytest.approx(0.01)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        AttentionDriftTerm(-1.0)


# ---------------------------------------------------------------------------------------------- the term in v*
class Spy(AttentionDriftTerm):
    """Records delta, the term's value and its per-layer values at every step."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.steps = []

    def __call__(self, ctx):
        value = super().__call__(ctx)
        self.steps.append({"delta": ctx.delta.detach().clone(), "value": float(value.detach()),
                           "per_layer": self.per_layer(ctx).detach().clone(), "step": ctx.step})
        return value


def reference_value(model, req, hp, delta, gamma, layers, hinge, eps=1e-8):
    """The term from two plain forward passes (delta = 0 and delta), with loops over rows, layers and heads."""
    batch = V.build_v_batch(model, req, hp)
    rows = [r for r in range(batch.n_rows) if bool(batch.delta_rows[r])]

    def patterns(d):
        store = {}

        def add(act, hook):
            act = act.clone()
            for r in rows:
                act[r, batch.subject_idx[r]] += d
            return act

        hooks = [(f"blocks.{hp.layer}.hook_mlp_out", add)]
        hooks += [(f"blocks.{l}.attn.hook_pattern", lambda a, hook, l=l: store.__setitem__(l, a.detach()))
                  for l in layers]
        with torch.no_grad():
            model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        return store

    a0s, a1s = patterns(torch.zeros_like(delta)), patterns(delta)
    total = 0.0
    for l in layers:
        layer_sum = 0.0
        for b in range(batch.n_rewrite):
            i, s = int(batch.last_prompt_idx[b]), int(batch.subject_idx[b])
            a0, a1 = a0s[l][b, :, i, : i + 1].double(), a1s[l][b, :, i, : i + 1].double()
            top = max(float(a0[h, s]) for h in range(a0.shape[0]))
            for h in range(a0.shape[0]):
                if hinge and not float(a1[h, s]) > top:
                    continue
                p, q = a0[h] + eps, a1[h] + eps
                layer_sum += float((p * (p / q).log()).sum())
        total += layer_sum / batch.n_rewrite
    return gamma * total


MODES = {"plain": {"v_fast_forward": False}, "fast": {"v_reuse_prefix": False}, "prefix": {}}


@pytest.mark.parametrize("hinge", [True, False], ids=["hinge", "all-heads"])
def test_term_equals_a_reference_from_plain_forward_passes(tiny3_model, hinge):
    req = as_request(CASE)
    values = {}
    for mode, kw in MODES.items():
        hp = HP.replace(**kw)
        spy = Spy(1.0, hinge=hinge)
        res = compute_v(tiny3_model, req, 0, hp, [spy])
        assert spy.layers == [1, 2] and spy.steps[0]["value"] == 0.0 and res.history[0]["sadr"] == 0.0
        values[mode] = [s["value"] for s in spy.steps]
        if mode == "plain":  # the reference, at the delta each step used
            for s in spy.steps[1:]:
                ref = reference_value(tiny3_model, req, hp, s["delta"], 1.0, [1, 2], hinge)
                assert s["value"] == pytest.approx(ref, rel=1e-4, abs=1e-7), s["step"]
            assert max(values[mode]) > 1e-6, "the test needs a term that is not 0"
    for mode in ("fast", "prefix"):  # the packed-prefix mode gives the same to float noise
        assert len(values[mode]) == len(values["plain"])
        for a, b in zip(values[mode], values["plain"]):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-5), mode


@pytest.mark.parametrize("mode", ["plain", "prefix"])
def test_layers_at_or_below_the_edit_layer_contribute_zero(tiny3_model, mode):
    """Reading every layer gives the same value as reading only those above the edit layer (layer 1 of 0..2)."""
    req = as_request(CASE)
    hp = HP.replace(layer=1, **MODES[mode])
    every = Spy(1.0, hinge=False, read_unchanged=True)
    upper = Spy(1.0, hinge=False)
    compute_v(tiny3_model, req, 1, hp, [every])
    compute_v(tiny3_model, req, 1, hp, [upper])
    assert every.layers == [0, 1, 2] and upper.layers == [2]
    tol = 0.0 if mode == "plain" else 1e-6
    for e, u in zip(every.steps[1:], upper.steps[1:]):
        assert float(e["per_layer"][:2].abs().max()) <= tol  # layers 0 and 1: A = A0 at the query row
        assert e["value"] == pytest.approx(u["value"], rel=1e-5, abs=1e-6)
    assert max(s["value"] for s in upper.steps) > 0


def test_gradient_reaches_delta(tiny3_model):
    class Grad(AttentionDriftTerm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.grads = []

        def __call__(self, ctx):
            v = super().__call__(ctx)
            if ctx.step > 0:
                (g,) = torch.autograd.grad(v, ctx.delta, retain_graph=True)
                self.grads.append(g)
            return v

    term = Grad(1.0, hinge=False)
    compute_v(tiny3_model, as_request(CASE), 0, HP.replace(v_num_grad_steps=3), [term])
    assert term.grads and all(torch.isfinite(g).all() for g in term.grads) and term.grads[-1].norm() > 0


def test_gamma_zero_reproduces_rome_bit_for_bit(tiny3_model, tmp_path, monkeypatch):
    req = as_request(CASE)
    plain = compute_v(tiny3_model, req, 0, HP)
    zero = compute_v(tiny3_model, req, 0, HP, [AttentionDriftTerm(0.0)])
    assert torch.equal(plain.v_star, zero.v_star) and torch.equal(plain.delta, zero.delta)
    assert [h["loss"] for h in plain.history] == [h["loss"] for h in zero.history]
    assert not torch.equal(plain.v_star, compute_v(tiny3_model, req, 0, HP, [AttentionDriftTerm(1.0)]).v_star)
    # through the editor: the edited weights, and the weights after the edit is undone
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    from editlens.rome import key_stats as ks

    stats = ks.get_key_stats(tiny3_model, 0, n_tokens=300, seq_len=32, progress=False)
    hp = HP.replace(mom2_n_tokens=300)
    before = {n: p.detach().clone() for n, p in tiny3_model.named_parameters()}
    with rome_editor(hp, stats)(tiny3_model, CASE) as edits:
        rome_w = tiny3_model.blocks[0].mlp.W_out.detach().clone()
        rome_v = edits[0].v_star
    with sadr_editor(hp, stats, gamma=0.0)(tiny3_model, CASE) as edits:
        assert torch.equal(tiny3_model.blocks[0].mlp.W_out, rome_w) and torch.equal(edits[0].v_star, rome_v)
    with sadr_editor(hp, stats, gamma=1.0, steps=3)(tiny3_model, CASE) as edits:
        assert len(edits[0].v_result.history) <= 3 and "sadr" in edits[0].v_result.history[-1]
    for n, p in tiny3_model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_a_shorter_run_is_the_start_of_a_longer_one(tiny3_model):
    """also_steps: the 3-step result taken from a 6-step run is the 3-step run, bit for bit (with SADR's term)."""
    req = as_request(CASE)
    hp = HP.replace(v_num_grad_steps=6)
    long = compute_v(tiny3_model, req, 0, hp, [AttentionDriftTerm(1.0)], also_steps=[3, 1])
    for n in (1, 3):
        short = compute_v(tiny3_model, req, 0, hp.replace(v_num_grad_steps=n), [AttentionDriftTerm(1.0)])
        got = long.earlier[n]
        assert torch.equal(got.delta, short.delta) and torch.equal(got.v_star, short.v_star)
        assert got.history == short.history and len(got.history) == n
    assert not torch.equal(long.earlier[3].delta, long.delta) and len(long.history) == 6
    # a run that stops early (before the shorter limit): the shorter result is the final one
    stop = hp.replace(v_loss_early_stop=1e9, v_early_stop_on="loss")
    early = compute_v(tiny3_model, req, 0, stop, also_steps=[3])
    assert len(early.history) == 1 and torch.equal(early.earlier[3].delta, early.delta)
    with pytest.raises(ValueError, match="also_steps"):
        compute_v(tiny3_model, req, 0, hp, also_steps=[6])


def test_earlier_edits_replay_the_shorter_edit_and_restore_the_weights(tiny3_model, tmp_path, monkeypatch):
    from editlens.rome import key_stats as ks
    from editlens.rome.editor import EarlierEdits

    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    stats = ks.get_key_stats(tiny3_model, 0, n_tokens=300, seq_len=32, progress=False)
    hp = HP.replace(mom2_n_tokens=300)
    before = {n: p.detach().clone() for n, p in tiny3_model.named_parameters()}
    kept = EarlierEdits(3)
    with pytest.raises(KeyError, match="No kept 3-step edit"):
        with kept.editor()(tiny3_model, CASE):
            pass
    with sadr_editor(hp, stats, gamma=1.0, steps=6, earlier=kept)(tiny3_model, CASE) as edits:
        long_w = tiny3_model.blocks[0].mlp.W_out.detach().clone()
        assert len(edits[0].v_result.history) == 6
    with sadr_editor(hp, stats, gamma=1.0, steps=3)(tiny3_model, CASE) as edits:
        short_w = tiny3_model.blocks[0].mlp.W_out.detach().clone()
    with kept.editor()(tiny3_model, CASE) as edits:
        assert torch.equal(tiny3_model.blocks[0].mlp.W_out, short_w)
        assert edits[0].info["steps"] == 3
    assert not torch.equal(short_w, long_w)
    for n, p in tiny3_model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_steam_and_sadr_terms_run_in_one_optimisation(tiny3_model):
    from editlens.steam import AlignmentTerm, AnchorSet

    anchors = AnchorSet(object="Rome", prompts=(), layers=[0, 1, 2], states=torch.randn(3, 3, 64))
    steam = lambda model, case: [AlignmentTerm(anchors, 1.0, n_layers=3, edit_layer=0)]
    make = combined_terms(steam, sadr_terms(1.0))
    terms = make(tiny3_model, CASE)
    assert [t.name for t in terms] == ["steam_align", "sadr"]
    res = compute_v(tiny3_model, as_request(CASE), 0, HP.replace(v_num_grad_steps=3), terms)
    assert all(math.isfinite(h["steam_align"]) and math.isfinite(h["sadr"]) for h in res.history)
    assert res.history[0]["sadr"] == 0.0 and res.history[0]["steam_align"] > 0


# ---------------------------------------------------------------------------------------------- diagnostics
def test_distracted_prompts_are_the_dns_probes():
    dns = [r[1] for r in probe_rows(CASE) if r[0] == "DNS"]
    assert distracted_prompts(CASE) == dns
    assert dns[0] == "The Eiffel Tower is located in the city of Rome. The Louvre is located in the city of"


def random_edit(model, layer=0, scale=0.5, seed=1):
    W = model.blocks[layer].mlp.W_out
    g = torch.Generator().manual_seed(seed)
    return Edit(layer=layer, delta=scale * torch.randn(W.shape, generator=g).to(W.dtype))


def test_subject_attention_rows_and_drift(tiny3_model):
    prompts = distracted_prompts(CASE)
    pos = subject_positions(tiny3_model, prompts, "The Eiffel Tower")
    ids = [tiny3_model.tokenizer.decode(prompt_batch(tiny3_model, [p]).tokens[0, int(i)]) for p, i in zip(prompts, pos)]
    assert all(t.strip() == "Tower" for t in ids)
    att = subject_attention(tiny3_model, prompts, "The Eiffel Tower")
    assert att.shape == (2, 3, 4) and (att >= 0).all() and (att <= 1).all()
    row = attention_row(tiny3_model, prompts[0], 1, 2)
    assert row.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert attention_row(tiny3_model, prompts[0], 1).sum().item() == pytest.approx(4.0, abs=1e-4)
    torch.testing.assert_close(row[int(pos[0])], att[0, 1, 2])
    before = {n: p.detach().clone() for n, p in tiny3_model.named_parameters()}
    drift = attention_drift(tiny3_model, random_edit(tiny3_model), prompts, "The Eiffel Tower")
    torch.testing.assert_close(drift.before, att)
    torch.testing.assert_close(drift.after[:, 0], att[:, 0])  # layer 0's attention is before the edited MLP
    assert not torch.allclose(drift.after[:, 1:], att[:, 1:])
    assert len(drift.top_heads(3, layers=[1, 2])) == 3 and all(l > 0 for l, _ in drift.top_heads(3, layers=[1, 2]))
    for n, p in tiny3_model.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(ValueError, match="does not occur"):
        subject_positions(tiny3_model, ["Nothing here"], "The Eiffel Tower")


def test_overwriting_patterns(tiny3_model):
    from editlens.scoring import score_continuations

    prompts = distracted_prompts(CASE)
    batch = prompt_batch(tiny3_model, prompts, ["Paris", "New York City"])
    logits, pats = run_patterns(tiny3_model, batch, [1, 2])
    same, _ = run_patterns(tiny3_model, batch, replace=pats)  # a run's own patterns put back: nothing changes
    torch.testing.assert_close(same, logits)
    uniform = {1: torch.tril(torch.ones_like(pats[1])) / torch.tril(torch.ones_like(pats[1])).sum(-1, keepdim=True)}
    one_head, got = run_patterns(tiny3_model, batch, [1], replace=uniform, heads={1: [3]})
    torch.testing.assert_close(got[1][:, 3], uniform[1][:, 3])
    torch.testing.assert_close(got[1][:, :3], pats[1][:, :3])
    assert not torch.allclose(one_head, logits)
    # the answer's probability is the scorer's: exp(-mean NLL * n_tokens)
    p = answer_probability(logits, batch)
    nll = score_continuations(tiny3_model, list(zip(prompts, ["Paris", "New York City"])))
    expected = torch.tensor([math.exp(-float(n) * len(a)) for n, a in zip(nll, batch.answers)])
    torch.testing.assert_close(p.double(), expected.double(), rtol=1e-3, atol=1e-9)
    assert set(record_patterns(tiny3_model, prompts)) == {0, 1, 2}
    # answer_run: the same probabilities and patterns, only the answer positions unembedded
    p_run, pats_run = answer_run(tiny3_model, batch, [1, 2])
    torch.testing.assert_close(p_run, p, rtol=1e-5, atol=1e-9)
    assert all(torch.equal(pats_run[layer], pats[layer]) for layer in (1, 2))
    p_one, _ = answer_run(tiny3_model, batch, replace=uniform, heads={1: [3]})
    torch.testing.assert_close(p_one, answer_probability(one_head, batch), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="needs answers"):
        answer_run(tiny3_model, prompt_batch(tiny3_model, prompts))


def test_restoration_experiment(tiny3_model):
    prompts = distracted_prompts(CASE)
    answers = ["Paris", "Paris"]
    edit = random_edit(tiny3_model, scale=2.0)
    before = {n: p.detach().clone() for n, p in tiny3_model.named_parameters()}
    table, run = restoration_experiment(tiny3_model, edit, prompts, answers, "The Eiffel Tower", top_k=(2, 100))
    assert list(table.condition) == ["all heads of layers 1-2", "8 random heads (any layer)", "top-2 drifted heads",
                                     "2 random heads (layers 1-2)"]
    assert (table.p_unedited != table.p_edited).all() and table.fraction_recovered.notna().all()
    nothing = restore(tiny3_model, run, [], "nothing")
    torch.testing.assert_close(nothing.p_restored, run.p_edited)
    assert nothing.fraction == pytest.approx(0.0, abs=1e-5)
    # the conditions run together (one forward) give what each gives alone
    for row, cond in zip(table.itertuples(), run.results[:4]):
        alone = restore(tiny3_model, run, cond.pairs, cond.label)
        torch.testing.assert_close(alone.p_restored, cond.p_restored, rtol=1e-5, atol=1e-9)
        assert row.p_restored == pytest.approx(float(alone.p_restored.mean()), rel=1e-5)
    # an edit that changes nothing: edited = unedited
    null = record_run(tiny3_model, Edit(layer=0, delta=torch.zeros_like(edit.delta)), prompts, answers)
    torch.testing.assert_close(null.p_edited, null.p_unedited)
    assert random_pairs(all_pairs([1, 2], 4), 3, seed=5) == random_pairs(all_pairs([1, 2], 4), 3, seed=5)
    with pytest.raises(ValueError, match="Cannot draw"):
        random_pairs(all_pairs([1], 4), 5)
    for n, p in tiny3_model.named_parameters():
        assert torch.equal(p, before[n]), n


# ---------------------------------------------------------------------------------------------- pooling
def test_pooled_summary_micro_averages_over_prompts():
    one = {**CASE, "neighborhood_prompts": ["A is in"], "paraphrase_prompts": []}
    ten = {**CASE, "neighborhood_prompts": [f"N{i} is in" for i in range(9)], "paraphrase_prompts": []}
    rep = EvalReport(records=[{"edited": {"ES": 1.0, "NS": 0.0, "DNS": 1.0}},
                              {"edited": {"ES": 0.0, "NS": 1.0, "DNS": 5 / 9}}])
    pooled = pooled_summary(rep, [one, ten])
    assert pooled["NS"] == pytest.approx(90.0) and pooled["n_NS"] == 10
    assert pooled["DNS"] == pytest.approx(60.0) and pooled["ES"] == pytest.approx(50.0)
    assert rep.summary()["NS"] == pytest.approx(50.0)  # the per-record mean, unchanged


# ---------------------------------------------------------------------------------------------- gamma calibration
def _calibration_rows(costs: dict[float, float], n: int = 40) -> "pd.DataFrame":
    """ROME's rows (PS 1, DNS 0.3) and one arm per gamma whose PS is lower by ``costs[gamma]`` on every fact and
    whose DNS is higher by 10 gamma; facts spread over 4 relations."""
    import pandas as pd

    rows = []
    for i in range(n):
        rows.append({"case_id": i, "relation": f"P{i % 4}", "method": "rome", "PS": 1.0, "DNS": 0.3})
        for g, c in costs.items():
            rows.append({"case_id": i, "relation": f"P{i % 4}", "method": f"sadr γ={g:g}", "PS": 1.0 - c,
                         "DNS": 0.3 + 10 * g})
    return pd.DataFrame(rows)


def test_calibration_table_pairs_each_gamma_with_rome_and_choose_gamma_takes_the_authors_cost():
    from editlens.sadr import (
        AUTHORS_PS_COST,
        calibration_table,
        choose_gamma,
        gamma_grid,
        reaches_target,
    )

    assert AUTHORS_PS_COST == pytest.approx(0.0322)  # PS 99.58 -> 96.36 on GPT-J
    costs = {0.01: 0.0, 0.1: 0.01, 1.0: 0.04, 10.0: 0.2}
    arms = {g: f"sadr γ={g:g}" for g in costs}
    table = calibration_table(_calibration_rows(costs), arms)
    assert list(table["gamma"]) == [0.01, 0.1, 1.0, 10.0] and set(table["n"]) == {40}
    assert table["PS cost"].tolist() == pytest.approx(list(costs.values()))
    assert table["DNS gain"].tolist() == pytest.approx([0.1, 1.0, 10.0, 100.0])
    assert (table["PS cost low"] <= table["PS cost"]).all() and (table["PS cost"] <= table["PS cost high"]).all()
    assert choose_gamma(table) == 1.0 and reaches_target(table)  # 0.04 is nearest 0.0322
    assert choose_gamma(table, target=0.005) == 0.01  # a tie (0.0 and 0.01 both 0.005 away): the smaller gamma
    low = calibration_table(_calibration_rows({0.01: 0.0, 0.1: 0.01}), {0.01: "sadr γ=0.01", 0.1: "sadr γ=0.1"})
    assert choose_gamma(low) == 0.1 and not reaches_target(low)  # the grid stops short: widen it
    with pytest.raises(ValueError, match="every gamma must be > 0"):
        gamma_grid([0, 0.01])
    with pytest.raises(ValueError, match="no rows for gamma 5"):
        calibration_table(_calibration_rows(costs), {5.0: "sadr γ=5"})


CALIBRATIONS = Path(__file__).resolve().parents[1] / "book" / "results" / "sadr-calibration"
METHOD_OR_MODEL_FACTS = (Path(__file__).resolve().parents[1] / "book" / "results" / "method-or-model" / "gemma3-270m"
                         / "compare-nearest" / "settings.json")


def _reported_case_ids(folder_name: str) -> set:
    """The facts a calibration's validation facts must not touch: Chapter 5's 50 (the authors' budget, SmolLM2),
    or the "Method or model?" page's 100 (the book's budget, both models)."""
    import json

    from editlens.data import load_facts, spread_over_relations

    if folder_name == "smollm2-135m":
        return {f.case_id for f in spread_over_relations(load_facts(), 50)}
    return set(json.loads(METHOD_OR_MODEL_FACTS.read_text())["case_ids"])


@pytest.mark.parametrize("folder_name, model_name, budget", [
    ("smollm2-135m", "smollm2-135m", "authors"),
    ("smollm2-135m-book-budget", "smollm2-135m", "book"),
    ("gemma3-270m-book-budget", "gemma3-270m", "book"),
])
def test_stored_calibration_is_recomputed_from_its_rows(folder_name, model_name, budget):
    """book/results/sadr-calibration/<run>: the calibration table and the chosen gamma are what calibration_table
    and choose_gamma compute from the stored rows; every arm ran the budget the run names (the authors' 80 steps and
    early stop, or the book's: the model's registry settings); its facts are validation facts, disjoint from the
    facts the book reports with the gamma chosen."""
    import json

    import pandas as pd

    from editlens import compare
    from editlens.rome import get_hparams
    from editlens.sadr import calibration_table, choose_gamma, reaches_target

    folder = CALIBRATIONS / folder_name
    settings = json.loads((folder / "settings.json").read_text())
    rows = compare.read_per_record(folder / "per_record.jsonl")
    table = calibration_table(rows, dict(zip(settings["gammas"], settings["arms"])))
    stored = pd.read_csv(folder / "calibration.csv")
    pd.testing.assert_frame_equal(table, stored, check_dtype=False, atol=1e-9)
    summary = json.loads((folder / "calibration.json").read_text())
    assert summary["chosen gamma"] == choose_gamma(table)
    assert summary["grid brackets the target"] == reaches_target(table)
    assert settings["model"] == model_name and settings.get("budget", "authors") == budget
    if budget == "authors":
        assert settings["steps"] == 80 and settings["early_stop"] == "loss" and settings["prefixes"] is None
    else:
        hp = get_hparams(model_name)
        assert (settings["steps"], settings["early_stop"], settings["prefixes"]) == (
            hp.v_num_grad_steps, hp.v_early_stop_on, hp.v_num_prefixes)
        assert rows["steps"].max() <= hp.v_num_grad_steps
    assert not _reported_case_ids(folder_name) & set(settings["case_ids"])
    assert len(settings["case_ids"]) == 40
    assert set(rows["case_id"]) == set(settings["case_ids"]) and len(rows) == len(settings["case_ids"]) * (
        1 + len(settings["gammas"]))


def test_sadr_calibration_page_is_the_stored_run_and_its_claims_hold():
    """book/sadr-calibration.md: its table is what the script writes from the stored run, the gamma it names is
    the stored choice, and the reading of the table holds (authors' gamma under-regularised, a plateau from 1 to
    10 whose PS cost reaches 0, a real cost from 30, a choice between 10 and 30 closer than one probe)."""
    import json

    import pandas as pd
    from conftest import load_script

    script = load_script("sadr_calibration")
    page = script.PAGE.read_text(encoding="utf-8")
    assert f"<!-- table:calibration -->\n{script.calibration_markdown()}\n<!-- /table:calibration -->" in page, \
        "book/sadr-calibration.md's table is stale. Fix: python scripts/sadr_calibration.py --write-page"
    folder = script.RESULTS / "smollm2-135m"
    summary = json.loads((folder / "calibration.json").read_text(encoding="utf-8"))
    assert f"takes **$\\gamma = {summary['chosen gamma']:g}$**" in page and summary["grid brackets the target"]
    t = pd.read_csv(folder / "calibration.csv").set_index("gamma")
    assert t.loc[0.01, "DNS gain low"] <= 0 < t.loc[0.01, "DNS gain"]  # the authors' gamma: a gain reaching 0
    plateau = t.loc[[1.0, 3.0, 10.0]]
    assert (plateau["DNS gain low"] > 0).all() and (plateau["PS cost low"] <= 0).all()
    assert t.loc[30.0, "PS cost low"] > 0 and t.loc[100.0, "PS cost low"] > 0
    one_probe = 1 / (2 * summary["n_facts"])  # two paraphrase prompts per fact
    gaps = (t["PS cost"] - summary["target PS cost"]).abs()
    assert summary["chosen gamma"] == 30.0 and gaps.loc[10.0] - gaps.loc[30.0] < one_probe
    toc = (script.PAGE.parents[1] / "_toc.yml").read_text(encoding="utf-8")
    assert "- file: book/sadr-calibration" in toc


def test_stored_reported_run_and_its_control_are_recomputed_from_their_rows():
    """book/results/sadr-calibration/smollm2-135m-reported: Chapter 5's 50 facts at the authors' settings, the
    authors' gamma and the calibrated one; its summary is what compare.summary_table computes from the rows
    (relations resampled, Holm), and its control is ROME with all 80 steps on the same facts."""
    import json

    import pandas as pd
    from conftest import load_script

    from editlens import compare
    from editlens.data import load_facts, spread_over_relations

    script = load_script("sadr_calibration")
    folder = script.REPORTED
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    chosen = json.loads((script.RESULTS / "smollm2-135m" / "calibration.json").read_text())["chosen gamma"]
    assert settings["role"] == "reported" and settings["gammas"] == [0.01, chosen]
    assert settings["steps"] == 80 and settings["early_stop"] == "loss" and settings["prefixes"] is None
    chapter5 = [f.case_id for f in spread_over_relations(load_facts(), 50)]
    assert settings["skipped"] == 0 and settings["case_ids"] == chapter5
    rows = compare.read_per_record(folder / "per_record.jsonl")
    assert len(rows) == 50 * 3 and set(rows["case_id"]) == set(chapter5)
    flags = {"CI excludes 0": float, "Holm excludes 0": float}  # the baseline's rows: None in memory, NaN on disk
    table = compare.summary_table(rows, script.METRICS, cluster="relation", correction="holm").astype(flags)
    stored = pd.read_csv(folder / "summary.csv").astype(flags)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), stored, check_dtype=False, atol=1e-9)
    control = json.loads((folder / "control" / "settings.json").read_text(encoding="utf-8"))
    assert control["early_stop"] is None and control["case_ids"] == chapter5 and control["arm"] == script.CONTROL
    control_rows = compare.read_per_record(folder / "control" / "per_record.jsonl")
    assert (control_rows["steps"] == 80).all() and (control_rows["method"] == script.CONTROL).all()


def test_sadr_reported_tables_are_the_stored_runs_and_the_page_reads_them_right():
    """book/sadr-calibration.md's second and third tables are what the script writes, and what the page says of
    them holds: the calibrated gamma's DNS gain excludes 0 against both baselines but not after Holm, its
    portability cost survives Holm against both, its RelS gain survives Holm against ROME-80 only, and the control
    (all 80 steps) moves ROME by little."""
    import pandas as pd
    from conftest import load_script

    script = load_script("sadr_calibration")
    page = script.PAGE.read_text(encoding="utf-8")
    for name, table in (("reported", script.reported_markdown()), ("control", script.control_markdown())):
        assert f"<!-- table:{name} -->\n{table}\n<!-- /table:{name} -->" in page, \
            f"book/sadr-calibration.md's {name} table is stale. Fix: python scripts/sadr_calibration.py --write-page"
    reported = pd.read_csv(script.REPORTED / "summary.csv").set_index(["metric", "method"])
    control = script.control_table().set_index(["metric", "method"])
    arm = "sadr γ=30"
    for t in (reported, control):
        assert t.loc[("DNS", arm), "CI excludes 0"] and not t.loc[("DNS", arm), "Holm excludes 0"]
        assert t.loc[("Port", arm), "Holm excludes 0"] and t.loc[("Port", arm), "diff high"] < 0
        assert t.loc[("PS", arm), "diff high"] >= 0  # the PS cost's interval reaches 0
    assert reported.loc[("RelS", arm), "Holm excludes 0"] and not control.loc[("RelS", arm), "Holm excludes 0"]
    assert abs(control.loc[("RelS", script.CONTROL), "mean"] - reported.loc[("RelS", "rome"), "mean"]) <= 0.03
    assert abs(control.loc[("DNS", script.CONTROL), "mean"] - reported.loc[("DNS", "rome"), "mean"]) <= 0.01
    assert control.loc[("steps", arm), "mean"] == control.loc[("steps", script.CONTROL), "mean"] == 80
