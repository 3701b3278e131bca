"""Mixed precision: float32 weights, bfloat16 matrix products where the hardware has native bf16 units.

Taught in: Chapter 0 ("What the model computes in"); every chapter prints the precision it ran with.

The weights stay float32 whatever the precision: every edit (ROME's rank-one update, a baked steering
bias, SFT and LoRA master weights) is made and restored in float32, and restoring is bit-exact. What
changes is how the model *computes*: with ``bfloat16``, each transformer block and the unembedding run
under :func:`torch.autocast`, which casts the inputs of matrix products to bfloat16 (and accumulates
them in float32), while normalisation, softmax and the residual stream stay float32. On a CPU with AMX
or AVX512-BF16, or a GPU with bf16 tensor cores, that is 2.5-3.5x faster than float32.

``"auto"`` (the default of :func:`editlens.load_model`, of every chapter and of the command line)
chooses ``bfloat16`` where torch can use native bf16 matrix instructions and ``float32`` elsewhere: a
CPU without them would emulate bf16, which is far slower than float32.

What stays float32 whatever the precision, because it needs the digits: the weights, C and its
solve, v*'s delta and its optimiser state, probes and statistics. Code that must compute in float32
wraps the forward passes in :func:`full_precision`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

PRECISIONS = ("auto", "float32", "bfloat16")
_ALIASES = {"auto": "auto", None: "auto", "float32": "float32", "fp32": "float32",
            "bfloat16": "bfloat16", "bf16": "bfloat16"}
_STATE_ATTR = "_editlens_precision"


@dataclass(frozen=True)
class Precision:
    """How a loaded model computes: ``compute`` is the dtype of its matrix products."""

    compute: torch.dtype
    requested: str
    reason: str

    @property
    def name(self) -> str:
        return "bfloat16" if self.compute == torch.bfloat16 else "float32"

    def describe(self) -> str:
        """One line for a chapter's output, e.g. ``bfloat16 matrix products, float32 weights (auto: ...)``."""
        what = "bfloat16 matrix products, float32 weights" if self.compute == torch.bfloat16 else "float32 throughout"
        return f"{what} ({self.requested}: {self.reason})"


def native_bf16(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether torch can run bfloat16 matrix products natively on ``device``, and why (one phrase).

    CPU: AMX or AVX512-BF16 instructions that oneDNN may use (``ONEDNN_MAX_CPU_ISA`` below them, as
    ``make check-portable`` sets, counts as absent). CUDA: a GPU with bf16 support (compute capability
    8.0 or newer). Anything else: no.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(dev)} has bf16 tensor cores"
        return False, "this GPU has no native bf16"
    if dev.type != "cpu":
        return False, f"no bf16 policy for {dev.type}"
    cpu = getattr(torch, "cpu", None)
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    if not (amx or avx512_bf16):
        return False, "this CPU has neither AMX nor AVX512-BF16"
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False, "oneDNN may not use this CPU's bf16 instructions (ONEDNN_MAX_CPU_ISA)"
    return True, "this CPU has " + (" and ".join(n for n, ok in (("AMX", amx), ("AVX512-BF16", avx512_bf16)) if ok))


def resolve(precision: str | torch.dtype | None, device: str | torch.device = "cpu") -> Precision:
    """The :class:`Precision` that ``precision`` (``"auto"``, ``"float32"`` or ``"bfloat16"``) means on ``device``."""
    if isinstance(precision, torch.dtype):
        key = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(precision)
    else:
        key = _ALIASES.get(precision.lower() if isinstance(precision, str) else precision)
    if key is None:
        raise ValueError(
            f"precision {precision!r} is not one of {PRECISIONS}. Fix: pass 'auto' (bfloat16 where the hardware "
            "has native bf16, else float32), 'float32' or 'bfloat16'. To store a large model's weights in half "
            "precision, pass weights_dtype='bfloat16' or 'float16' to load_model instead.")
    if key == "float32":
        return Precision(torch.float32, "float32", "requested")
    if key == "bfloat16":
        ok, why = native_bf16(device)
        return Precision(torch.bfloat16, "bfloat16", "requested" + ("" if ok else f"; emulated, slow: {why}"))
    ok, why = native_bf16(device)
    return Precision(torch.bfloat16 if ok else torch.float32, "auto", why)


class _State:
    """Mutable per-model switch read by the wrapped forwards (so :func:`full_precision` can flip it)."""

    def __init__(self, precision: Precision, device_type: str):
        self.precision = precision
        self.device_type = device_type
        self.full = 0  # > 0 inside full_precision()

    @property
    def autocast(self) -> bool:
        return self.precision.compute != torch.float32 and self.full == 0


def _wrap_forward(module: torch.nn.Module, state: _State) -> None:
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not state.autocast:
            return inner(*args, **kwargs)
        with torch.autocast(state.device_type, dtype=state.precision.compute):
            return inner(*args, **kwargs)

    object.__setattr__(module, "forward", forward)  # bridge components forward setattr to the HF module


def _cast_weight_once(linear: torch.nn.Linear, state: _State) -> None:
    """Inside autocast, ``linear`` multiplies by a bf16 copy of its weight that is made once and made again only
    when the weight changes (an edit writes it in place, which bumps its version counter), instead of autocast
    casting the float32 weight at every call. The numbers are autocast's, bit for bit (the same rounding of the
    same weight); what changes is the time: on a CPU, casting the weights cost more than the matrix products
    for small batches (generation token by token, an edit's v* steps on a few positions). A weight that takes a
    gradient (training it) goes through autocast as before."""
    inner = linear.forward
    memo: dict[str, Any] = {}

    @functools.wraps(inner)
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        w = linear.weight
        if (args or kwargs or not state.autocast or not torch.is_autocast_enabled(state.device_type)
                or (w.requires_grad and torch.is_grad_enabled())):
            return inner(x, *args, **kwargs)
        ref = memo.get("ref")
        if ref is None or ref() is not w or memo["version"] != w._version:
            memo.update(ref=weakref.ref(w), version=w._version, weight=w.detach().to(state.precision.compute))
        dtype = state.precision.compute
        bias = linear.bias
        return torch.nn.functional.linear(x.to(dtype), memo["weight"], None if bias is None else bias.to(dtype))

    object.__setattr__(linear, "forward", forward)


def _mask_safe(attn: torch.nn.Module) -> None:
    """Clamp an additive float mask to the scores' dtype before the bridge casts it.

    The model builds its padding mask in float32 with ``finfo(float32).min``, which is ``-inf`` once
    cast to bfloat16: a query row that sees no key (a left pad) then softmaxes to NaN, and the NaN
    reaches real tokens through the values. Clamped to ``finfo(bfloat16).min`` it stays finite, as
    in float32. (TransformerLens 4.3's ``_apply_reconstruct_attention_mask``; tested in
    tests/test_precision.py with a left-padded batch.)"""
    # a bound method, which torch's Module.__getattr__ types Tensor | Module:
    inner: Callable[..., Any] = attn._apply_reconstruct_attention_mask  # type: ignore[assignment]

    @functools.wraps(inner)
    def apply(attn_scores: torch.Tensor, attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any):
        if (attention_mask is not None and attention_mask.is_floating_point()
                and attention_mask.dtype != attn_scores.dtype):
            attention_mask = attention_mask.clamp(min=torch.finfo(attn_scores.dtype).min)
        return inner(attn_scores, attention_mask, *args, **kwargs)

    object.__setattr__(attn, "_apply_reconstruct_attention_mask", apply)


def apply(model: TransformerBridge, precision: Precision) -> Any:
    """Make ``model`` (a ``TransformerBridge``) compute in ``precision``; its weights are not touched.

    Wraps each block and the unembedding in autocast (the Hugging Face forward, ``run_with_hooks`` and the
    block-by-block runs of :mod:`editlens.block_runner` all go through them), and gives each ``nn.Linear`` a
    bf16 copy of its weight, cast once (:func:`_cast_weight_once`). Called once by :func:`editlens.load_model`."""
    if getattr(model, _STATE_ATTR, None) is not None:
        raise ValueError("apply: this model already has a precision. Fix: load it again with another precision.")
    params = list(model.parameters())
    floats = {p.dtype for p in params if p.is_floating_point()}
    if precision.compute != torch.float32 and floats != {torch.float32}:
        raise ValueError(f"apply: mixed precision needs float32 weights, these are {sorted(map(str, floats))}. "
                         "Fix: load with weights_dtype='float32', or precision='float32' for half-precision weights.")
    device_type = params[0].device.type if params else "cpu"
    state = _State(precision, device_type)
    for block in model.blocks:
        _wrap_forward(block, state)
    _wrap_forward(model.unembed, state)
    for module in model.modules():
        if hasattr(module, "_apply_reconstruct_attention_mask"):
            _mask_safe(module)
    if precision.compute != torch.float32:
        linears = {id(m): m for m in model.modules() if type(m) is torch.nn.Linear}
        for linear in linears.values():
            _cast_weight_once(linear, state)
    object.__setattr__(model, _STATE_ATTR, state)
    return model


def of(model: TransformerBridge) -> Precision:
    """The precision ``model`` computes in (float32 for a model :func:`apply` never saw)."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        dtype = next(model.parameters()).dtype
        return Precision(dtype if dtype.is_floating_point else torch.float32, "float32", "weights' dtype")
    return Precision(torch.float32, state.precision.requested, "inside full_precision") if state.full \
        else state.precision


@contextmanager
def full_precision(model: TransformerBridge) -> Iterator[None]:
    """Inside this block ``model`` computes in float32 (key statistics, exactness checks). Nests; re-entrant."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        yield
        return
    state.full += 1
    try:
        yield
    finally:
        state.full -= 1

