"""Fused attention for the package's bulk forward passes: scoring answers and generating text.

TransformerLens's bridge computes each attention layer step by step so that ``hook_attn_scores`` and
``hook_pattern`` can see (and change) the scores and the pattern: it builds the full
``batch x head x query x key`` score tensor, adds the mask, softmaxes it in float32 and multiplies by
the values, four passes over a tensor that for the book's packed rows (8 rows of 256 tokens, 9 heads)
is larger than the layer's activations. Inside ``with enabled(model):`` a layer whose scores and
pattern nobody hooks calls ``torch.nn.functional.scaled_dot_product_attention`` instead, which
computes the same function in one fused kernel. The scorer (:func:`editlens.scoring.score_candidates`,
so every probe, answer and perplexity of the book) and the generator (:func:`editlens.evaluate.generate`)
run inside it; nothing else does. A chapter's own ``model(tokens)``, ``run_with_cache`` and the hooked
runs of patching and tracing compute step by step, so a clean run and a patched run always compare
like with like. A hook on ``hook_attn_scores`` or ``hook_pattern`` brings back the step-by-step path for
its layer even inside the block, and so does a forward that may take gradients (on a CPU the fused
kernel's backward pass was the slower one).

In exact arithmetic the two paths are the same function; in floating point they round differently.
In float32 the embedded model's logits agree to about 1e-4 (of logits up to 30: as far as another CPU's
kernels move them); in bfloat16 the two paths differ by about as much as either differs from float32,
so a near-tie between two answers can flip, as it does between CPUs (``book/precision.md``).

The fused path covers the attention layers the book runs (Llama-style: rotary position embeddings
over the whole head, grouped-query attention, no query/key norms, no soft-capping, no sinks);
any other layer keeps the bridge's path, which is always correct, only slower.

Explained in ``book/setup.md`` ("What the model computes in"); measured by ``benchmarks/bench_attention.py``."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_STATE = "_editlens_fused_attention"  # the _Switch a wrapped layer and its model share
# Grouped-query attention inside the kernel (torch >= 2.5): the same numbers, bit for bit, as repeating each
# KV head for its query heads first (tested in tests/test_fused_attention.py), without copying the keys and
# values, which cost a quarter of a generation's time on a CPU (benchmarks/bench_kernels.py).
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class _Switch:
    """How many ``enabled(model)`` blocks are open (``on``) and how many ``enabled(model, False)`` (``off``):
    a layer fuses while ``on > 0 and off == 0``, so forcing the step-by-step path wins at any depth."""

    def __init__(self) -> None:
        self.on = 0
        self.off = 0

    @property
    def fused(self) -> bool:
        return self.on > 0 and self.off == 0


def _hooked(hook_point: Any) -> bool:
    """Whether anything listens at ``hook_point`` (a TransformerLens ``HookPoint``)."""
    return hook_point is not None and bool(
        hook_point._forward_hooks or hook_point._forward_pre_hooks or hook_point._backward_hooks)


def _layer_supported(attn: Any) -> bool:
    """Can this layer's computation be written as plain scaled dot-product attention? Decided once per
    layer from its configuration (the hooks are checked at every call)."""
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    if type(attn) is not PositionEmbeddingsAttentionBridge:
        return False  # a subclass may change the computation; keep its own forward
    hf = attn.original_component
    cfg = attn.config
    flags = ("use_split_qkv_input", "use_attn_in", "gated_q_proj", "use_attn_result", "qk_norm_after_rope",
             "rotary_interleaved_cos_sin", "rotary_adjacent_pairs")
    if hf is None or any(bool(getattr(cfg, f, False)) for f in flags):
        return False
    if "q_norm" in attn.submodules or "k_norm" in attn.submodules or attn._modules.get("gate") is not None:
        return False
    if any(getattr(hf, a, None) is not None for a in ("key_multiplier", "attn_logit_softcapping", "sinks")):
        return False
    if getattr(getattr(hf, "config", None), "clip_qkv", None) is not None:
        return False
    rope = getattr(getattr(hf, "config", None), "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
        return False
    return getattr(cfg, "positional_embedding_type", None) == "rotary" and hasattr(hf, "head_dim")


def _fused_forward(attn: Any, hidden_states: Float[Tensor, "batch pos d_model"], kwargs: dict[str, Any]
                   ) -> tuple[Float[Tensor, "batch pos d_model"], None]:
    """The bridge's attention forward with the scores, mask, softmax and value product fused."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    hf = attn.original_component
    head_dim = hf.head_dim
    position_embeddings = kwargs.pop("position_embeddings")
    attention_mask = kwargs.pop("attention_mask", None)
    hidden_states = attn.hook_in(hidden_states)
    input_shape = hidden_states.shape[:-1]
    shape = (*input_shape, -1, head_dim)
    q = attn.q(hidden_states).view(shape).transpose(1, 2)
    k = attn.k(hidden_states).view(shape).transpose(1, 2)
    v = attn.v(hidden_states).view(shape).transpose(1, 2)
    cos, sin = attn._apply_position_embedding_hooks(position_embeddings)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if hasattr(attn, "hook_rot_q"):
        q = attn.hook_rot_q(q)
    if hasattr(attn, "hook_rot_k"):
        k = attn.hook_rot_k(k)
    k, v = attn._update_kv_cache(k, v, **kwargs)
    groups = getattr(hf, "num_key_value_groups", 1)
    if groups > 1 and not _SDPA_GQA:
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    dtype = v.dtype  # bfloat16 under autocast (the value projection's output), else the weights' dtype
    q, k = q.to(dtype), k.to(dtype)
    # The additive mask exactly as the bridge's own path builds it (causal when none is given, the
    # caller's 4-D mask as is), built once per layer call on a [batch or 1, 1, query, key] tensor.
    zeros = torch.zeros((1, 1, q.shape[-2], k.shape[-2]), dtype=dtype, device=q.device)
    mask = attn._apply_reconstruct_attention_mask(attn_scores=zeros, attention_mask=attention_mask,
                                                  seq_len=k.shape[-2], q_seq_len=q.shape[-2])
    scaling = getattr(hf, "scaling", head_dim ** -0.5)
    gqa = {"enable_gqa": True} if groups > 1 and _SDPA_GQA else {}  # each query head reads its KV head in place
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(dtype), scale=scaling, **gqa)
    out = out.transpose(1, 2).contiguous().reshape(*input_shape, -1)
    o_weight = getattr(getattr(attn.o, "original_component", None), "weight", None)
    if isinstance(o_weight, Tensor) and o_weight.dtype.is_floating_point and out.dtype != o_weight.dtype:
        out = out.to(o_weight.dtype)
    return attn.hook_out(attn.o(out)), None


def _rotates_whole_head(attn: Any, position_embeddings: Any) -> bool:
    """Rotary embeddings given, and over the whole head (a partial or half-width rotation keeps the
    bridge's path)."""
    return (isinstance(position_embeddings, tuple) and len(position_embeddings) == 2
            and position_embeddings[0].shape[-1] == attn.original_component.head_dim)


def _wrap(attn: Any, switch: _Switch) -> None:
    inner = attn.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if (switch.fused and not _hooked(attn.hook_attn_scores)
                and not _hooked(attn.hook_pattern) and _rotates_whole_head(attn, kwargs.get("position_embeddings"))
                and not (attn.training and getattr(attn.original_component, "attention_dropout", 0.0) > 0)):
            if "hidden_states" in kwargs:
                hidden_states = kwargs.pop("hidden_states")
            elif args and isinstance(args[0], Tensor):
                hidden_states, args = args[0], args[1:]
            else:
                return inner(*args, **kwargs)
            if not args and not torch.is_grad_enabled():
                return _fused_forward(attn, hidden_states, kwargs)
            return inner(hidden_states, *args, **kwargs)
        return inner(*args, **kwargs)

    object.__setattr__(attn, "forward", forward)  # bridge components forward setattr to the HF module


def install(model: TransformerBridge) -> int:
    """Wrap every supported attention layer of ``model`` (a ``TransformerBridge``) so that
    :class:`enabled` can switch it to the fused kernel; until then it computes step by step, as before.
    Returns how many layers were wrapped (0 when ``model`` has them already). Called once by
    :func:`editlens.load_model` and :func:`editlens.localize.toy.tiny_llama`."""
    if hasattr(model, _STATE):
        return 0
    switch = _Switch()
    n = 0
    for module in model.modules():
        if hasattr(module, "hook_pattern") and _layer_supported(module):
            _wrap(module, switch)
            n += 1
    object.__setattr__(model, _STATE, switch)
    return n


def is_fused(model: TransformerBridge) -> bool:
    """Whether ``model``'s wrapped layers fuse now (inside :class:`enabled`, no ``enabled(model, False)``)."""
    switch = getattr(model, _STATE, None)
    return bool(switch is not None and switch.fused)


class enabled:
    """``with fused_attention.enabled(model):`` runs the wrapped attention layers of ``model`` fused
    (where no hook looks at the pattern and no gradient is taken); ``with enabled(model, False):`` forces
    the step-by-step path inside, even where the package fuses (to compare the two, or to time them).
    Nests. A model :func:`install` never saw is left as it is."""

    def __init__(self, model: TransformerBridge, on: bool = True):
        self.switch = getattr(model, _STATE, None)
        self.field = "on" if on else "off"

    def __enter__(self) -> None:
        if self.switch is not None:
            setattr(self.switch, self.field, getattr(self.switch, self.field) + 1)

    def __exit__(self, *exc: Any) -> None:
        if self.switch is not None:
            setattr(self.switch, self.field, getattr(self.switch, self.field) - 1)
