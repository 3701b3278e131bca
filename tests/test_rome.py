"""ROME from scratch (Chapter 3): requests, hparams, key statistics, k*, v*, the update, undoable edits."""

from __future__ import annotations

import pytest
import torch

from editlens.data import BadRequestError, RewriteRequest, as_request, validate_request
from editlens.fingerprint import weights_fingerprint
from editlens.rome import (
    Edit,
    LossTerm,
    ROMEHyperParams,
    applied_edit,
    compute_k,
    compute_v,
    edited,
    get_hparams,
    rank_one_update,
    rome_editor,
)
from editlens.rome import key_stats as ks
from editlens.rome.keys import encode, subject_last_index

FAST = ROMEHyperParams(layer=0, v_num_grad_steps=5, context_lengths=((3, 2),), mom2_n_tokens=600, v_lr=0.5)
CASE = {"case_id": 7, "requested_rewrite": {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                                            "relation_id": "P131", "target_new": {"str": "Rome", "id": "Q220"},
                                            "target_true": {"str": "Paris", "id": "Q90"}}}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    return tmp_path


# ---------------------------------------------------------------------------------------------- requests
def test_as_request_accepts_counterfact_flat_and_typed_records():
    r = as_request(CASE)
    assert (r.prompt, r.subject, r.target_new, r.target_true, r.case_id) == (
        "{} is located in the city of", "The Eiffel Tower", "Rome", "Paris", 7)
    flat = as_request({"prompt": "{} is in", "subject": "X", "target_new": "Y"})
    assert flat.target_new == "Y" and flat.target_true is None
    from editlens.data import parse_records

    record = {**CASE, "paraphrase_prompts": ["Where is the Eiffel Tower? It is in the city of"],
              "neighborhood_prompts": ["The Louvre is located in the city of"], "attribute_prompts": [],
              "generation_prompts": ["The Eiffel Tower is"]}
    rec = parse_records([record], format="counterfact")[0]  # a typed record from the data module
    assert as_request(rec) == as_request(CASE)
    assert as_request(rec).subject == "The Eiffel Tower" and as_request(rec).case_id == 7


@pytest.mark.parametrize("prompt, subject, new, match", [
    ("The Eiffel Tower is in", "The Eiffel Tower", "Rome", "no '{}' placeholder"),
    ("The tower is in", "Eiffel Tower", "Rome", "not in the prompt"),
    ("{} and {} are in", "X", "Rome", "2 '{}' placeholders"),
    ("{} is in", "X", "   ", "target_new is empty"),
    ("{} is in", "", "Rome", "subject is empty"),
    ("{} is in", " X", "Rome", "leading/trailing spaces"),
    ("{} is in", "X", "Paris", "nothing to edit"),
])
def test_bad_requests_name_problem_and_fix(prompt, subject, new, match):
    req = RewriteRequest(prompt=prompt, subject=subject, target_new=new, target_true="Paris")
    with pytest.raises(BadRequestError, match=match) as err:
        validate_request(req)
    assert "Fix" in str(err.value)


def test_target_that_tokenises_to_nothing(embedded_tokenizer):
    class Empty:  # a tokenizer that drops the word, as some do for unknown characters
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [] if text.strip() == "\u200b" else embedded_tokenizer(text, add_special_tokens=False)["input_ids"]}

    req = RewriteRequest(prompt="{} is in", subject="X", target_new="\u200b", target_true="Paris")
    with pytest.raises(BadRequestError, match="tokenises to no tokens"):
        validate_request(req, Empty())


# ---------------------------------------------------------------------------------------------- hparams
def test_hparams_registry():
    assert get_hparams("gpt2-xl").layer == 17
    assert get_hparams("EleutherAI/gpt-j-6B").layer == 5
    assert get_hparams("/some/where/SmolLM2-135M-Instruct-Q4_1").kl_factor == 0.0625
    assert get_hparams("gpt2-xl", layer=3).layer == 3
    with pytest.raises(KeyError, match="register"):
        get_hparams("my-unknown-model")


# ---------------------------------------------------------------------------------------------- positions
def test_subject_last_index_counts_bos(tiny_model):
    ids, i = subject_last_index(tiny_model, "The capital of {} is", "France")
    assert ids[0] == tiny_model.tokenizer.bos_token_id
    assert tiny_model.tokenizer.decode(ids[i]).strip() == "France"
    ids, i = subject_last_index(tiny_model, "{} is located in", "The Eiffel Tower")
    assert tiny_model.tokenizer.decode(ids[i]).strip() == "Tower"
    assert ids == encode(tiny_model, "The Eiffel Tower is located in")


# ---------------------------------------------------------------------------------------------- update
def test_rank_one_update_writes_value_exactly():
    torch.manual_seed(0)
    W, u, k, v = torch.randn(32, 8), torch.randn(32), torch.randn(32), torch.randn(8)
    Wn = W + rank_one_update(W, u, k, v)
    torch.testing.assert_close(k @ Wn, v, atol=1e-5, rtol=1e-5)
    k2 = torch.randn(32)
    k2 = k2 - (k2 @ u) / (u @ u) * u  # orthogonal to u: untouched
    torch.testing.assert_close(k2 @ Wn, k2 @ W, atol=1e-5, rtol=1e-5)


def test_edit_changes_forward_and_restores_bit_exactly_even_on_exception(tiny_model):
    W = tiny_model.blocks[1].mlp.W_out
    hf_W = tiny_model.original_model.model.layers[1].mlp.down_proj.weight
    before = W.detach().clone()
    before_0 = tiny_model.blocks[0].mlp.W_out.detach().clone()  # layer 0 gets an edit in the failing block
    toks = torch.tensor([encode(tiny_model, "The Eiffel Tower is in")])
    with torch.no_grad():
        base = tiny_model(toks)
    edit = Edit(layer=1, delta=torch.randn_like(before) * 0.1)
    with applied_edit(tiny_model, edit):
        assert not torch.equal(hf_W.T, before)  # the HF weight shares storage with W_out
        with torch.no_grad():
            assert (tiny_model(toks) - base).abs().max() > 1e-4  # the forward pass sees the edit
    assert torch.equal(W, before)
    with pytest.raises(ZeroDivisionError):
        with applied_edit(tiny_model, [edit, Edit(layer=0, delta=torch.ones_like(before))]):
            1 / 0
    assert torch.equal(W, before) and torch.equal(tiny_model.blocks[0].mlp.W_out, before_0)
    assert not edit.applied


# ---------------------------------------------------------------------------------------------- key statistics
def test_key_stats_rank_deficient_then_regularised_and_cached(tiny_model, cache):
    st = ks.get_key_stats(tiny_model, 1, n_tokens=60, seq_len=32, progress=False)  # 60 tokens < d_mlp = 128
    assert st.C.shape == (128, 128)
    assert st.rank() < 128 and st.meta["layer"] == 1 and st.meta["source"] == "self"
    assert st.meta["weights"] == weights_fingerprint(tiny_model)
    k = torch.randn(128)
    u = st.solve(k, reg=1e-2)
    assert torch.isfinite(u).all()
    torch.testing.assert_close(st.regularised(1e-2).float() @ u, k, atol=1e-3, rtol=1e-3)
    files = list((cache / "stats").glob("C_*.safetensors"))
    assert len(files) == 1 and files[0].with_suffix(".json").exists()
    again = ks.get_key_stats(tiny_model, 1, n_tokens=60, seq_len=32, progress=False)
    assert torch.equal(again.C, st.C)
    with torch.no_grad():  # other weights: the cached file is not reused
        tiny_model.blocks[0].mlp.W_out.add_(0.01)
    ks.get_key_stats(tiny_model, 1, n_tokens=60, seq_len=32, progress=False)
    assert len(list((cache / "stats").glob("C_*.safetensors"))) == 2


def test_key_stats_from_text_file(tiny_model, cache, tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("The Eiffel Tower is in Paris. Rome is the capital of Italy. " * 40)
    st = ks.get_key_stats(tiny_model, 0, n_tokens=200, source=[f], progress=False)
    assert st.meta["source"].startswith("files:") and st.n_tokens > 0


def test_key_stats_convergence_rows(tiny_model, cache):
    torch.manual_seed(0)
    keys = torch.randn(2, 128)
    rows = ks.key_stats_convergence(tiny_model, 1, keys, [100, 400], seq_len=32, progress=False)
    assert rows[0]["n_tokens"] < rows[1]["n_tokens"]
    # the same statistics computed independently (same self-sampled text: the sample is cached and nested)
    small, ref = (ks.compute_key_stats(tiny_model, 1, n, seq_len=32) for n in (100, 400))
    assert [r["n_tokens"] for r in rows] == [small.n_tokens, ref.n_tokens]
    assert [r["rank"] for r in rows] == [small.rank(), ref.rank()]

    def mean_cos(st: ks.KeyStats, reg: float = 1e-2) -> float:
        return float(torch.stack([torch.nn.functional.cosine_similarity(st.solve(k.double(), reg),
                                                                        ref.solve(k.double(), reg), dim=0)
                                  for k in keys]).mean())

    assert rows[0]["cos_u_vs_ref"] == pytest.approx(mean_cos(small), abs=1e-5)
    assert rows[0]["cos_u_vs_ref"] < 1.0 - 1e-6  # 100 tokens do not pin down the 400-token direction


# ---------------------------------------------------------------------------------------------- k*, v*
class Probe(LossTerm):
    """Records what a loss term sees; adds a differentiable zero."""

    name = "probe"

    def __init__(self, hooks):
        self.hook_names = hooks
        self.seen = []

    def prepare(self, ctx):
        self.prepared = ctx.batch.n_rewrite

    def __call__(self, ctx):
        acts = [ctx.acts[h] for h in self.hook_names]
        self.seen.append((ctx.step, [a.requires_grad for a in acts], set(ctx.initial), acts[0].shape))
        return 0.0 * sum(a.float().sum() for a in acts)


def test_compute_k_and_v_with_extra_loss_term(tiny_model):
    req = as_request(CASE)
    k_avg, k_bare = compute_k(tiny_model, req, 1, FAST)
    assert k_avg.shape == (128,) and not torch.equal(k_avg, k_bare)
    probe = Probe(["blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern"])
    hp = FAST.replace(v_weight_decay=0.0, clamp_norm_factor=1e4)  # a random model's v0 is tiny: let delta grow
    res = compute_v(tiny_model, req, 0, hp, [probe])
    plain = compute_v(tiny_model, req, 0, hp)
    assert res.v_star.shape == (64,) and len(res.history) >= 2
    assert res.history[-1]["nll"] < res.history[0]["nll"]  # the optimisation learns
    torch.testing.assert_close(res.v_star, plain.v_star)  # a zero-weighted term leaves ROME unchanged
    step, grads, initial, shape = probe.seen[0]
    assert all(grads) and set(probe.hook_names) <= initial and shape[0] == FAST.context_lengths[0][1] + 2
    assert probe.prepared == 1 + FAST.context_lengths[0][1]
    clamped = compute_v(tiny_model, req, 0, FAST)
    assert clamped.delta.norm() <= FAST.clamp_norm_factor * clamped.v0.norm() * (1 + 1e-5)
    assert all(p.requires_grad for p in tiny_model.parameters())  # parameters unfrozen afterwards


def test_edited_context_manager_writes_v_star(tiny_model, cache):
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    stats = ks.get_key_stats(tiny_model, 0, n_tokens=600, seq_len=32, progress=False)
    for variant in ("r-rome", "rome"):
        hp = FAST.replace(key_variant=variant)
        with edited(tiny_model, CASE, hp, stats) as edits:
            e = edits[0]
            W = tiny_model.blocks[0].mlp.W_out
            torch.testing.assert_close(e.k_star @ W, e.v_star, atol=1e-4, rtol=1e-4)
            k_avg, k_bare = compute_k(tiny_model, e.request, 0, hp)  # keys are read before W_out: unchanged
            torch.testing.assert_close(e.k_star, k_avg if variant == "r-rome" else k_bare)
    for n, p in tiny_model.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(RuntimeError, match="inside"):
        with edited(tiny_model, [CASE, CASE], FAST, stats):
            raise RuntimeError("inside")
    for n, p in tiny_model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_edits_computed_together_equal_one_at_a_time(tiny_model, cache):
    """compute_rome_edits (v* of several requests in one batch) gives each request compute_rome_edit's edit, and a
    batched rome_editor gives evaluate_edits the same records as the one-at-a-time editor."""
    from editlens import evaluate as ev
    from editlens.rome import compute_rome_edit, compute_rome_edits

    stats = ks.get_key_stats(tiny_model, 0, n_tokens=600, seq_len=32, progress=False)
    other = {**CASE, "case_id": 1, "requested_rewrite": {**CASE["requested_rewrite"], "subject": "Danielle Darrieux",
                                                         "prompt": "The mother tongue of {} is"}}
    cases = [{**CASE, "case_id": 0}, other, {**CASE, "case_id": 2}]
    hp = FAST.replace(v_num_grad_steps=4)
    alone = [compute_rome_edit(tiny_model, c, hp, stats) for c in cases]
    together = compute_rome_edits(tiny_model, cases, hp, stats)
    for a, b in zip(together, alone):
        assert a.request == b.request and a.layer == b.layer
        torch.testing.assert_close(a.v_star, b.v_star, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.delta, b.delta, rtol=1e-4, atol=1e-6)
    assert compute_rome_edits(tiny_model, [], hp, stats) == []
    kept = []
    batched = rome_editor(hp, stats, batch=2)
    one = ev.evaluate_edits(tiny_model, cases, rome_editor(hp, stats), generation=None, progress=False)
    two = ev.evaluate_edits(tiny_model, cases, batched, generation=None, progress=False,
                            while_edited=lambda case, info: kept.append((case.case_id, info[0].applied)))
    assert kept == [(0, True), (1, True), (2, True)]  # called inside each context, the edit applied
    for a, b in zip(one.records, two.records):
        # the edits agree to rtol 1e-4 (above), so their scores do too (not to the last digit)
        assert a["edited"] == pytest.approx(b["edited"], rel=1e-4, abs=1e-9, nan_ok=True)
    with pytest.raises(ValueError, match="batch"):
        rome_editor(hp, stats, batch=0)


# ---------------------------------------------------------------------------------------------- embedded model
@pytest.mark.slow
def test_rome_on_embedded_model(model):
    from editlens.evaluate import probe_scores
    from editlens.rome import apply_rome, stats_for

    hp = get_hparams(model)
    W = model.blocks[hp.layer].mlp.W_out
    saved = W.detach().clone()
    try:
        stats = stats_for(model, hp, progress=False)
        case = {**CASE, "paraphrase_prompts": ["Where is the Eiffel Tower? It is in the city of"]}
        assert probe_scores(model, case)["ES"] == 0.0
        edit = apply_rome(model, case, hp, stats)
        torch.testing.assert_close(edit.k_star @ W, edit.v_star, atol=1e-3, rtol=1e-4)
        assert probe_scores(model, case)["ES"] == 1.0
        edit.undo(model)
        assert torch.equal(W, saved)
    finally:
        with torch.no_grad():
            W.copy_(saved)
