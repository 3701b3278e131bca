"""Mixed precision (editlens.precision): what "auto" chooses, what stays float32, what bf16 must not break."""

from __future__ import annotations

import pytest
import torch

from editlens import precision as P


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


def test_weights_cast_once_give_autocasts_outputs_bit_for_bit(tiny_model):
    """The bf16 copies of the Linear weights (cast once, not at every call) are autocast's own cast: the same
    logits; an in-place change of a weight (an edit, then its undo) is seen; training keeps its gradients."""
    from editlens.rome import update

    toks = tiny_model.to_tokens(["The capital of France is", "Berlin is a city in"], padding_side="right")
    _bf16(tiny_model)
    state = tiny_model._editlens_precision

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        state.cast_once = True
        once = tiny_model(toks).detach()
        state.cast_once = False
        every = tiny_model(toks).detach()
        state.cast_once = True
        return once, every

    once, every = both()
    assert torch.equal(once, every)
    W = update.w_out(tiny_model, 0)
    with torch.no_grad():
        W.add_(0.05)
    edited, every = both()
    assert torch.equal(edited, every) and not torch.equal(edited, once)
    with torch.no_grad():
        W.sub_(0.05)
    tiny_model.zero_grad()
    tiny_model(toks).float().logsumexp(-1).sum().backward()
    grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert grads and all(g.abs().sum() > 0 for n, g in grads.items() if "mlp" in n)
    tiny_model.zero_grad()
    state.cast_once = False
    tiny_model(toks).float().logsumexp(-1).sum().backward()
    for n, p in tiny_model.named_parameters():
        if n in grads:
            assert torch.equal(p.grad, grads[n]), n


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
