"""Mixed precision (editlens.precision): what "auto" chooses, what stays float32, what bf16 must not break."""

from __future__ import annotations

import pytest
import torch

from editlens import precision as P

# These tests apply bfloat16 themselves, so tiny_model comes in float32 whatever EDITLENS_TEST_PRECISION says.
pytestmark = pytest.mark.float32


def _bf16(model):
    """``model`` (float32 weights) computing with bfloat16 matrix products, as load_model does on AMX."""
    return P.apply(model, P.Precision(torch.bfloat16, "bfloat16", "test"))


def test_names_resolve_and_a_bad_one_names_the_fix():
    assert P.resolve("float32").compute == torch.float32
    assert P.resolve("fp32").compute == torch.float32
    assert P.resolve("bf16").compute == torch.bfloat16
    assert P.resolve(torch.bfloat16).compute == torch.bfloat16
    with pytest.raises(ValueError, match="weights_dtype"):
        P.resolve("float16")


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(P, "native_bf16", lambda device="cpu": (True, "AMX"))
    assert P.resolve("auto").compute == torch.bfloat16
    assert "AMX" in P.resolve("auto").describe()
    monkeypatch.setattr(P, "native_bf16", lambda device="cpu": (False, "no AMX"))
    assert P.resolve("auto").compute == torch.float32
    assert P.resolve(None).compute == torch.float32
    assert P.resolve("bfloat16").compute == torch.bfloat16  # forcing is always possible (emulated)
    assert "emulated" in P.resolve("bfloat16").reason


def test_the_cpu_answer_respects_onednn_limits():
    ok, why = P.native_bf16("cpu")
    assert isinstance(ok, bool) and why
    if ok:
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_bf16_forward_keeps_float32_weights_and_residual(tiny_model):
    before = {n: t.detach().clone() for n, t in tiny_model.original_model.state_dict().items()}
    _bf16(tiny_model)
    toks = tiny_model.to_tokens(["The capital of France is"])
    _, cache = tiny_model.run_with_cache(toks)
    assert cache["blocks.0.hook_resid_post"].dtype == torch.float32  # the residual stream stays float32
    assert cache["blocks.0.mlp.hook_post"].dtype == torch.bfloat16  # inside the block: bf16 products
    after = tiny_model.original_model.state_dict()
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], before[n]) for n in before)


def test_full_precision_is_the_float32_model_bit_for_bit(tiny_model):
    toks = tiny_model.to_tokens(["The capital of France is", "Berlin is a city in"], padding_side="right")
    ref = tiny_model(toks).detach()
    _bf16(tiny_model)
    mixed = tiny_model(toks).detach()
    assert not torch.equal(mixed.float(), ref)  # the precision really changed
    with P.full_precision(tiny_model):
        with P.full_precision(tiny_model):  # nests
            pass
        assert P.of(tiny_model).compute == torch.float32
        assert torch.equal(tiny_model(toks).detach(), ref)
    assert P.of(tiny_model).compute == torch.bfloat16
    assert torch.allclose(mixed.float(), ref, atol=0.1)


def test_weights_cast_once_give_autocasts_numbers_and_follow_an_edit(tiny_model):
    """Each Linear keeps a bf16 copy of its weight (cast once, not at every call): the same logits as autocast's
    cast at every call, bit for bit, and an in-place edit of the weight (ROME's, restored exactly) is seen."""
    from editlens.rome import update

    toks = tiny_model.to_tokens(["The capital of France is", "Berlin is a city in"], padding_side="right")
    _bf16(tiny_model)

    def logits(cached: bool) -> torch.Tensor:
        if cached:
            with torch.no_grad():
                return tiny_model(toks).float()
        with torch.enable_grad():  # weights that take a gradient: autocast casts them at every call
            assert all(p.requires_grad for p in tiny_model.parameters())
            return tiny_model(toks).detach().float()

    hf_linears = [m for m in tiny_model.original_model.modules() if type(m) is torch.nn.Linear]
    assert hf_linears and all(hasattr(m.forward, "__wrapped__") for m in hf_linears)  # every one casts once
    before = logits(True)
    assert torch.equal(before, logits(False))
    W = update.w_out(tiny_model, 1)
    delta = 0.5 * torch.outer(torch.randn(W.shape[0], generator=torch.Generator().manual_seed(0)), W[0].detach())
    with update.applied_edit(tiny_model, update.Edit(layer=1, delta=delta)):
        edited = logits(True)
        assert not torch.equal(edited, before)  # the edit reached the cached copy
        assert torch.equal(edited, logits(False))
    assert torch.equal(logits(True), before)  # undone: the copy follows the restored weight


def test_left_padding_gives_no_nan_under_bf16(tiny_model, embedded_tokenizer):
    """A left pad sees no key; float32's -3.4e38 mask would become -inf in bf16 and its softmax NaN."""
    _bf16(tiny_model)
    enc = embedded_tokenizer(["The capital city of France is", "Hi"], return_tensors="pt", padding=True,
                             padding_side="left")
    logits = tiny_model(enc["input_ids"], attention_mask=enc["attention_mask"])
    assert not torch.isnan(logits).any()


def test_rome_invariant_and_exact_restore_under_bf16_forwards(tiny_model, tiny_rome):
    """v*, k* come from bf16 forwards; the update itself is float32, so W' k* = v* to float32 tolerance."""
    from editlens.rome import update

    hp, stats = tiny_rome
    _bf16(tiny_model)
    W0 = update.w_out(tiny_model, hp.layer).detach().clone()
    request = {"prompt": "The capital of {} is", "subject": "France", "target_new": {"str": "Rome"}}
    edit = update.compute_rome_edit(tiny_model, request, hp, stats)
    assert edit.k_star.dtype == torch.float32 and edit.v_star.dtype == torch.float32
    with update.applied_edit(tiny_model, edit):
        W = update.w_out(tiny_model, hp.layer).detach()
        assert W.dtype == torch.float32
        torch.testing.assert_close(edit.k_star @ W, edit.v_star, atol=1e-4, rtol=1e-5)
    assert torch.equal(update.w_out(tiny_model, hp.layer).detach(), W0)


def test_key_statistics_are_one_file_whatever_the_precision(tiny_model, tiny_rome):
    """C is computed in float32 and cached per weights and layer: a bf16 model reuses it, bit for bit."""
    from editlens.rome import key_stats as ks

    _, stats32 = tiny_rome  # computed by the float32 tiny model (cached in this test's directory)
    path = ks._cache_path(tiny_model, 0, 300, "self", 0, 32)
    assert path.exists()
    fresh = ks.compute_key_stats(_bf16(tiny_model), 0, n_tokens=300, seq_len=32)  # not from the cache
    assert torch.equal(fresh.C, stats32.C)
    assert ks._cache_path(tiny_model, 0, 300, "self", 0, 32) == path


def test_apply_refuses_half_weights_and_a_second_call(tiny_model):
    _bf16(tiny_model)
    with pytest.raises(ValueError, match="already has a precision"):
        _bf16(tiny_model)
    tiny = tiny_model.original_model
    tiny.to(torch.bfloat16)
    try:
        object.__delattr__(tiny_model, "_editlens_precision")
        with pytest.raises(ValueError, match="float32 weights"):
            _bf16(tiny_model)
    finally:
        tiny.to(torch.float32)


@pytest.mark.slow
def test_embedded_model_reports_its_precision(model):
    prec = P.of(model)
    assert prec.requested == "auto"
    assert prec.compute == (torch.bfloat16 if P.native_bf16("cpu")[0] else torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fine_tuning_steps_reach_the_bf16_weight_copies(tiny_model):
    """SFT's fused AdamW writes the weights without bumping their version counters; the trainer bumps them, so
    a no-grad forward after a step (the validation checks) computes with the trained weights, not with the bf16
    copies made before it: the same logits as autocast casting the current weights at every call."""
    from types import SimpleNamespace

    from editlens import sft

    queries = [SimpleNamespace(relation_id="P1", subject=s, object=o, split="train", candidates=("Paris", "Berlin"),
                               prompts=(f"The capital of {s} is", f"{s} has the capital"))
               for s, o in [("France", "Paris"), ("Germany", "Berlin")]]
    toks = tiny_model.to_tokens(["The capital of France is"], padding_side="right")
    _bf16(tiny_model)
    with torch.no_grad():
        before = tiny_model(toks).float()  # makes the bf16 copies

    calls = []

    def check(model) -> dict[str, float]:  # the validation check, at step 0 and after each step
        with torch.no_grad():
            cached = model(toks).float()
        with torch.enable_grad():  # autocast casts the current weights
            fresh = model(toks).detach().float()
        assert torch.equal(cached, fresh), float((cached - fresh).abs().max())
        assert torch.equal(cached, before) == (not calls)  # after a step, the model has changed
        calls.append(1)
        return {"consistency": 0.0}

    with sft.finetuned(tiny_model, queries, "gold", lr=1e-2, steps=2, batch_size=4, eval_fn=check, eval_every=1,
                       progress=False):
        pass
    assert len(calls) == 3
    with torch.no_grad():
        assert torch.equal(tiny_model(toks).float(), before)  # restored, and the copies follow
