"""The v* optimisation (Chapter 3) and its extension points for STEAM and SADR (Chapters 4-5).

Fast path vs plain forward, loss-term names, early stopping with extra terms, row lengths, extra rows,
the KL through ``ctx.initial``, zero-weighted terms.
"""

from __future__ import annotations

import pytest
import torch

from editlens.data import as_request
from editlens.rome import LossTerm, ROMEHyperParams, compute_v, compute_vs
from editlens.rome import v_forward as VF
from editlens.rome import v_optimise as VO
from editlens.rome import values as V
from editlens.rome.keys import subject_last_index

# a random model's v0 is tiny: no weight decay and no clamp, so delta can grow and the NLL moves
HP = ROMEHyperParams(layer=1, v_num_grad_steps=6, context_lengths=((3, 2),), v_lr=0.5, v_weight_decay=0.0,
                     clamp_norm_factor=1e4)
CASE = {"case_id": 7, "requested_rewrite": {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                                            "relation_id": "P131", "target_new": {"str": "Rome", "id": "Q220"},
                                            "target_true": {"str": "Paris", "id": "Q90"}}}


class Recorder(LossTerm):
    """Sees hooks below, at and above the edit layer; adds a differentiable zero (weight 1, no rows)."""

    def __init__(self, hooks, name="recorder"):
        self.hook_names = hooks
        self.name = name
        self.seen = []

    def __call__(self, ctx):
        acts = [ctx.acts[h] for h in self.hook_names]
        self.seen.append({h: a.detach().clone() for h, a in zip(self.hook_names, acts)})
        self.real = ctx.batch.attention_mask  # padding positions may differ between paths (nothing reads them)
        return 0.0 * sum(a.float().sum() for a in acts)


class Constant(LossTerm):
    """A term stuck at ``value`` (no gradient): it should keep the optimisation going."""

    def __init__(self, value, name="stuck", stop_below=None):
        self.value, self.name, self.stop_below = value, name, stop_below

    def __call__(self, ctx):
        return torch.tensor(self.value) + 0.0 * ctx.delta.sum()


def _steps(res):
    return len(res.history)


@pytest.fixture
def tiny3_model(embedded_tokenizer):
    """``tiny_model`` with 3 layers, so that editing layer 1 skips a layer below and has one above."""
    from editlens.localize.toy import tiny_llama

    return tiny_llama(0, n_layers=3, d_mlp=128, weight_std=None, tokenizer=embedded_tokenizer, tie_embeddings=True,
                      max_positions=256)[0]


@pytest.mark.parametrize("reuse_prefix", [False, True], ids=["fast", "prefix"])
@pytest.mark.parametrize("layer", [0, 1])
def test_fast_path_equals_plain_full_forward(tiny_model, tiny3_model, layer, reuse_prefix):
    """Edit layer 0 of tiny_model (logits only where scored) and layer 1 of a 3-layer one (also from the layer up);
    with prefix reuse, only the positions from the delta position on run (the terms still see full-shape
    activations, attention patterns included)."""
    model = tiny_model if layer == 0 else tiny3_model
    req = as_request(CASE)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]
    hp = HP.replace(layer=layer, v_reuse_prefix=reuse_prefix)
    fast_term, plain_term = Recorder(hooks), Recorder(hooks)
    fast = compute_v(model, req, layer, hp, [fast_term])
    plain = compute_v(model, req, layer, hp.replace(v_fast_forward=False), [plain_term])
    assert _steps(fast) == _steps(plain) >= 3
    torch.testing.assert_close(fast.v_star, plain.v_star, rtol=1e-4, atol=1e-4 * float(plain.v_star.abs().max()))
    torch.testing.assert_close(fast.v0, plain.v0, rtol=0, atol=0)
    for hf, hpl in zip(fast.history, plain.history):
        for k in ("nll", "kl", "loss"):
            assert hf[k] == pytest.approx(hpl[k], rel=1e-4, abs=1e-6), k
    real = plain_term.real
    for a, b in zip(fast_term.seen, plain_term.seen):  # the terms see the same activations (also below the layer)
        for h in hooks:  # at the real positions: [batch, pos, d] or attention [batch, head, query, key]
            keep = real[:, None, :, None] if a[h].ndim == 4 else real[:, :, None]
            torch.testing.assert_close(a[h] * keep, b[h] * keep, rtol=1e-4, atol=1e-5)
    assert fast.history[-1]["nll"] < fast.history[0]["nll"]


@pytest.mark.parametrize("reuse_prefix", [False, True], ids=["fast", "prefix"])
def test_fast_forward_runs_only_the_upper_blocks(tiny3_model, reuse_prefix):
    tiny_model = tiny3_model
    batch = V.build_v_batch(tiny_model, as_request(CASE), HP)
    fwd = VF.VForward(tiny_model, batch, 1, [], fast=True, reuse_prefix=reuse_prefix)
    fwd.initial_pass()
    assert fwd.fast and set(fwd.block_calls) == {1, 2} and fwd.resid_in.shape == (*batch.tokens.shape, 64)
    assert fwd.mode == ("prefix" if reuse_prefix else "fast")
    calls = []
    handle = tiny_model.blocks[0].register_forward_hook(lambda *a: calls.append(0))
    try:
        acts: dict = {}
        out = fwd.step("blocks.1.hook_mlp_out", torch.zeros(batch.n_rows, 64), acts)
    finally:
        handle.remove()
    assert out is None and calls == [] and acts[V.FINAL_HOOK].shape == (*batch.tokens.shape, 64)
    with torch.no_grad():
        full = tiny_model(batch.tokens)
    torch.testing.assert_close(fwd.unembed(acts[V.FINAL_HOOK]), full, rtol=1e-4, atol=1e-5)


def test_reading_positions_equals_the_full_shape(tiny3_model):
    """v_forward.VForward.at (positions gathered from the packed suffix run, as ctx.at reads them) gives what indexing the
    full-shape activation gives, for attention patterns and the residual stream, at every real position; and the
    packed run equals the one that runs every position. Rows of two facts (different lengths) share the packs."""
    other = {**CASE, "requested_rewrite": {**CASE["requested_rewrite"], "subject": "Danielle Darrieux",
                                           "prompt": "The mother tongue of {} is"}}
    batches = [V.build_v_batch(tiny3_model, as_request(c), HP) for c in (CASE, other)]
    width = max(int(b.tokens.shape[1]) for b in batches)
    batch = VO.stack_batches([VO.padded_batch(b, width) for b in batches])
    names = ["blocks.1.attn.hook_pattern", "blocks.2.attn.hook_pattern", "blocks.1.hook_resid_post", V.FINAL_HOOK]
    delta = torch.randn(batch.n_rows, 64, generator=torch.Generator().manual_seed(0))
    runs = {}
    for mode in ("prefix", "fast"):
        fwd = VF.VForward(tiny3_model, batch, 0, names, fast=True, reuse_prefix=mode == "prefix")
        fwd.initial_pass()
        fwd.step("blocks.0.hook_mlp_out", delta)
        runs[mode] = fwd
    assert runs["prefix"].mode == "prefix" and runs["prefix"].plan.n_blocks > 1  # rows of both facts in one pack
    real = batch.attention_mask
    rows, pos = real.nonzero(as_tuple=True)
    for name in names:
        got = runs["prefix"].at(name, rows, pos)
        full = V.index_query(runs["prefix"].full(name), name, rows, pos)
        plain = V.index_query(runs["fast"].full(name), name, rows, pos)
        if got.ndim == 3:  # [n, head, key]: the real keys up to the query
            keep = ((torch.arange(width)[None] <= pos[:, None]) & real[rows])[:, None, :]
            got, full, plain = got * keep, full * keep, plain * keep
        assert torch.equal(got, full), name
        torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)


def test_terms_cannot_overwrite_each_other_or_builtins(tiny_model):
    req = as_request(CASE)
    for name in ("nll", "kl", "weight_decay", "loss"):
        with pytest.raises(ValueError, match=f"named '{name}'.*built-in"):
            compute_v(tiny_model, req, 1, HP, [Constant(0.0, name=name)])
    with pytest.raises(ValueError, match="Two loss terms are named 'stuck'"):
        compute_v(tiny_model, req, 1, HP, [Constant(0.0), Constant(1.0)])
    res = compute_v(tiny_model, req, 1, HP.replace(v_num_grad_steps=2), [Constant(0.25, "a"), Constant(0.5, "b")])
    assert res.history[0]["a"] == 0.25 and res.history[0]["b"] == 0.5


def test_bad_early_stop_rule_is_named(tiny_model):
    with pytest.raises(ValueError, match="v_early_stop_on must be one of"):
        compute_v(tiny_model, as_request(CASE), 1, HP.replace(v_early_stop_on="kl"))


def test_early_stopping_sees_extra_terms(tiny_model):
    req = as_request(CASE)
    hp = HP.replace(v_num_grad_steps=8, v_loss_early_stop=100.0)  # the NLL is below 100 at once
    for rule in ("nll", "nll+extra"):
        assert _steps(compute_v(tiny_model, req, 1, hp.replace(v_early_stop_on=rule))) == 1
    # "nll" ignores a term without stop_below; "nll+extra" does not
    assert _steps(compute_v(tiny_model, req, 1, hp.replace(v_early_stop_on="nll"), [Constant(1e3)])) == 1
    assert _steps(compute_v(tiny_model, req, 1, hp.replace(v_early_stop_on="nll+extra"), [Constant(1e3)])) == 8
    # a per-term threshold holds under every rule
    for rule in ("loss", "nll", "nll+extra"):
        stuck = Constant(1.0, stop_below=0.5)
        assert _steps(compute_v(tiny_model, req, 1, hp.replace(v_early_stop_on=rule), [stuck])) == 8, rule
    assert _steps(compute_v(tiny_model, req, 1, hp, [Constant(0.1, stop_below=0.5)])) == 1


class RowsTerm(LossTerm):
    """Adds rows of its own (one with delta at its subject, one without) and checks what the batch says."""

    name = "rows"

    def __init__(self, model, weight=1.0, hook="blocks.2.hook_resid_post"):
        self.model = model
        self.weight = weight
        self.hook = hook
        self.hook_names = [hook]
        self.calls = 0

    def extra_rows(self, ctx):
        assert ctx.batch.term_rows == {}
        with_delta = subject_last_index(self.model, "Where is {}? It is in", ctx.request.subject)
        ids, _ = subject_last_index(self.model, "Paris is a city", "Paris")
        return [with_delta, (ids, None)]

    def prepare(self, ctx):
        self.rows = ctx.batch.rows_of(self.name)
        self.initial = ctx.initial[self.hook][self.rows].clone()

    def __call__(self, ctx):
        self.calls += 1
        act = ctx.acts[self.hook][self.rows]
        if ctx.step > 0:  # delta reaches the row that has it, not the other one
            last = ctx.batch.last_prompt_idx[self.rows]
            assert not torch.allclose(act[0, last[0]], self.initial[0, last[0]])
            n = int(ctx.batch.lengths[self.rows][1])
            torch.testing.assert_close(act[1, :n], self.initial[1, :n], rtol=1e-5, atol=1e-5)
        return self.weight * act.float().pow(2).mean() * 0.0


def test_the_book_model_stops_every_method_on_the_nll():
    """Equal budgets by construction (issue 29): on SmolLM2 a STEAM or SADR term does not keep v* running after
    ROME would have stopped (it did under "nll+extra": STEAM ran 20 steps where ROME stopped at about 13)."""
    from editlens.rome import get_hparams

    assert get_hparams("smollm2-135m").v_early_stop_on == "nll"


def test_edit_steps_reads_the_yielded_edits(tiny_model):
    import math

    from editlens.evaluate import edit_steps
    from editlens.rome import key_stats as ks
    from editlens.rome.update import compute_rome_edit

    hp = HP.replace(v_num_grad_steps=3, v_loss_early_stop=0.0)  # never stops early: 3 steps
    stats = ks.get_key_stats(tiny_model, hp.layer, n_tokens=300, seq_len=32, progress=False)
    edit = compute_rome_edit(tiny_model, CASE, hp, stats)
    assert edit_steps([edit]) == 3 == len(edit.v_result.history)
    assert math.isnan(edit_steps([])) and math.isnan(edit_steps("not an edit"))


def test_extra_rows_lengths_and_row_slices(tiny3_model):
    tiny_model = tiny3_model  # 3 layers: delta at layer 1 reaches later positions through layer 2
    req = as_request(CASE)
    term = RowsTerm(tiny_model)
    res = compute_v(tiny_model, req, 1, HP.replace(v_num_grad_steps=3), [term])
    assert term.calls == 3 and len(res.history) == 3
    batch = V.build_v_batch(tiny_model, req, HP, extra=[("rows", term.extra_rows(V.VContext(
        tiny_model, req, 1, HP, V.build_v_batch(tiny_model, req, HP), torch.zeros(64))))])
    n = batch.n_rewrite + batch.n_kl
    assert batch.rows_of("rows") == slice(n, n + 2) and batch.rows_of("other") == slice(n + 2, n + 2)
    assert batch.delta_rows.tolist() == [True] * (n + 1) + [False]
    mask = batch.attention_mask
    assert mask.shape == batch.tokens.shape and mask.sum(1).tolist() == batch.lengths.tolist()
    assert len(set(batch.lengths.tolist())) > 1  # rows differ in length: padding is visible to terms
    with pytest.raises(ValueError, match="outside its row"):
        V.build_v_batch(tiny_model, req, HP, extra=[("bad", [([1, 2, 3], 5)])])


def test_zero_weight_reproduces_rome_bit_for_bit(tiny_model):
    req = as_request(CASE)
    plain = compute_v(tiny_model, req, 1, HP)
    with_zero_term = compute_v(tiny_model, req, 1, HP, [Recorder(["blocks.1.hook_resid_post"])])  # returns 0 * x
    assert torch.equal(plain.v_star, with_zero_term.v_star) and len(plain.history) == len(with_zero_term.history)
    weight0 = RowsTerm(tiny_model, weight=0.0, hook="blocks.1.hook_resid_post")  # weight 0: skipped, its rows are not even added
    res = compute_v(tiny_model, req, 1, HP, [weight0])
    assert torch.equal(plain.v_star, res.v_star) and weight0.calls == 0 and res.history[0]["rows"] == 0.0


def test_kl_uses_ctx_initial(tiny_model):
    req = as_request(CASE)
    seen = {}

    class Peek(LossTerm):
        name = "peek"
        hook_names = ()

        def prepare(self, ctx):
            seen["initial"] = set(ctx.initial)

        def __call__(self, ctx):
            seen.setdefault("kl0", V.KLTerm(1.0)(ctx).item())
            return 0.0 * ctx.delta.sum()

    res = compute_v(tiny_model, req, 1, HP, [Peek()])
    assert V.FINAL_HOOK in seen["initial"]
    assert seen["kl0"] == pytest.approx(0.0, abs=1e-6) and res.history[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert res.history[-1]["kl"] > 0  # delta moves the KL prompt's distribution
    # a different reference distribution changes the KL: it really reads ctx.initial
    ctx = V.VContext(tiny_model, req, 1, HP, V.build_v_batch(tiny_model, req, HP), torch.zeros(64))
    fwd = VF.VForward(tiny_model, ctx.batch, 1, [V.FINAL_HOOK], fast=True)
    ctx._unembed = fwd.unembed
    ctx.initial = fwd.initial_pass()
    ctx.resid_final = ctx.initial[V.FINAL_HOOK]
    assert V.KLTerm(1.0)(ctx).item() == pytest.approx(0.0, abs=1e-6)
    ctx.initial = {V.FINAL_HOOK: ctx.initial[V.FINAL_HOOK] * 2}
    assert V.KLTerm(1.0)(ctx).item() > 1e-4


# ---------------------------------------------------------------------------------------------- evaluation baseline
EVAL_CASE = {"case_id": 1, "requested_rewrite": {"prompt": "The capital of {} is", "subject": "France",
                                                 "relation_id": "P36", "target_new": {"str": "Rome"},
                                                 "target_true": {"str": "Paris"}},
             "paraphrase_prompts": ["It rained. France's capital city is"],
             "neighborhood_prompts": ["The capital of Germany is", "The capital of Spain is"],
             "attribute_prompts": ["The capital of Italy is"],
             "generation_prompts": ["France is", "People in France often say that"],
             "relation_prompts": [{"prompt": "The official language of {} is", "target": "French"}]}
EVAL_CASES = [EVAL_CASE,
              {**EVAL_CASE, "case_id": 2, "requested_rewrite": {
                  "prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "relation_id": "P131",
                  "target_new": {"str": "New York City"}, "target_true": {"str": "Paris"}},
               "generation_prompts": ["The Eiffel Tower is a landmark that"], "relation_prompts": []},
              {**EVAL_CASE, "case_id": 3, "paraphrase_prompts": [], "generation_prompts": []}]


def test_batched_baseline_equals_per_record_baseline(tiny_model):
    from editlens import evaluate as ev

    gen = ev.GenerationSettings(n_prompts=2, max_new_tokens=6)
    per_record = [ev.case_metrics(tiny_model, ev.as_case(c), generation=gen, descriptions={}) for c in EVAL_CASES]
    batched = ev.baseline_metrics(tiny_model, EVAL_CASES, generation=gen, descriptions={}, generation_batch_size=2)
    assert len(batched) == len(per_record)
    for b, p in zip(batched, per_record):
        assert list(b) == list(p)
        assert b["generations"] == p["generations"] and b["RS_source"] == p["RS_source"]
        for k, v in p.items():
            if isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-7, nan_ok=True), k
    assert [len(m["generations"]) for m in batched] == [2, 1, 1]
    assert batched[0]["generations"] != batched[1]["generations"]  # each record keeps its own generations
    no_gen = ev.baseline_metrics(tiny_model, EVAL_CASES, generation=None, descriptions={})
    assert [set(m) for m in no_gen] == [set(ev.probe_scores(tiny_model, c)) for c in EVAL_CASES]


def test_evaluate_edits_scores_the_baseline_once(tiny_model, monkeypatch):
    from editlens import evaluate as ev

    calls = {"case": 0, "nll": 0}
    case_metrics, nll = ev.case_metrics, ev.continuation_nll

    def count_case(*a, **k):
        calls["case"] += 1
        return case_metrics(*a, **k)

    def count_nll(*a, **k):
        calls["nll"] += 1
        return nll(*a, **k)

    monkeypatch.setattr(ev, "case_metrics", count_case)
    monkeypatch.setattr(ev, "continuation_nll", count_nll)
    rep = ev.evaluate_edits(tiny_model, EVAL_CASES, None, generation=None, descriptions={}, progress=False)
    assert calls == {"case": 0, "nll": 1} and len(rep.records) == 3
    expected = ev.probe_scores_many(tiny_model, EVAL_CASES)
    for r, e in zip(rep.records, expected):
        assert r["unedited"] == pytest.approx(e, nan_ok=True)


def test_batched_facts_equal_one_at_a_time(tiny_model):
    """compute_vs: each fact gets what compute_v gives it alone, also after another fact of the batch stopped
    early (a finished fact's delta must not move: Adam's momentum would move it on a zero gradient)."""
    other = {**CASE, "requested_rewrite": {**CASE["requested_rewrite"], "subject": "Danielle Darrieux",
                                           "prompt": "The mother tongue of {} is"}}
    reqs = [as_request(CASE), as_request(other)]
    hp = HP.replace(v_num_grad_steps=6)
    alone = [compute_v(tiny_model, r, 0, hp) for r in reqs]
    # a threshold that one fact reaches before the other: the first one stops early
    stop_at = sorted(h["nll"] for h in alone[0].history)[2]
    hp = hp.replace(v_loss_early_stop=stop_at, v_early_stop_on="nll")
    alone = [compute_v(tiny_model, r, 0, hp) for r in reqs]
    together = compute_vs(tiny_model, reqs, 0, hp)
    assert [len(r.history) for r in together] == [len(r.history) for r in alone]
    assert len({len(r.history) for r in alone}) == 2, "the test needs facts that stop at different steps"
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.v_star, b.v_star, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one list"):
        compute_vs(tiny_model, reqs, 0, hp, [[]])
