"""Run a model from layer ``l`` up, on a residual stream you give it (Chapter 3: causal tracing).

A TransformerBridge accepts ``run_with_hooks(resid, start_at_layer=l)``, but it still runs the blocks
below ``l`` (their output is then replaced), so a restored run costs a whole forward pass. Causal
tracing runs one such pass per (layer, kind) and fact, and the layers below the restoration are the
corrupted run's own, so they need not run again. Here the model runs once with hooks that record the
arguments each block is called with (rotary position embeddings, attention mask, ...); afterwards any
residual stream of the same batch shape can be pushed through blocks ``l .. n_layers - 1`` directly,
with the bridge's hook points firing as usual, and unembedded only where logits are needed.
The v* optimisation (:mod:`editlens.rome.v_forward`, Chapter 3) records and runs its blocks with
:func:`recording_block_calls` and :func:`run_blocks`, adding its own bookkeeping for gradients and cut prefixes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def supports_block_runs(model: TransformerBridge) -> bool:
    """True for a TransformerBridge whose logits are ``unembed(ln_final(resid))`` (no soft-capping after the head)."""
    if getattr(model, "blocks", None) is None or not hasattr(model, "ln_final") or not hasattr(model, "unembed"):
        return False
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    return not getattr(hf_cfg, "final_logit_softcapping", None)


@dataclass
class BlockCalls:
    """How each block was called in one recorded run: ``calls[i] = (args after the residual, kwargs)``."""

    calls: dict[int, tuple[tuple, dict[str, Any]]] = field(default_factory=dict)
    batch: int = 0
    n_tokens: int = 0


@contextlib.contextmanager
def recording_block_calls(model: TransformerBridge, start: int = 0,
                          observe: Callable[[int, tuple, dict[str, Any]], None] | None = None) -> Iterator[BlockCalls]:
    """Inside the block, every call of blocks ``start ..`` is recorded in the :class:`BlockCalls` it yields (its
    ``batch`` and ``n_tokens`` are left to the caller): the arguments after the residual stream, and the keyword
    arguments without a key/value cache (``past_key_values=None``, ``use_cache=False``), so re-running a block does
    not grow one. ``observe(index, args, kwargs)``, if given, first sees each call as the model made it (the
    residual stream entering it, the cache it was handed)."""
    rec = BlockCalls()

    def capture(idx: int) -> Callable:
        def pre(module: Any, args: tuple, kwargs: dict) -> None:
            if observe is not None:
                observe(idx, args, kwargs)
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if "past_key_values" in kw:
                kw["past_key_values"] = None
            if "use_cache" in kw:
                kw["use_cache"] = False
            rec.calls[idx] = (tuple(args[1:]) if args else (), kw)
        return pre

    handles = []
    try:
        for i in range(start, len(model.blocks)):
            handles.append(model.blocks[i].register_forward_pre_hook(capture(i), with_kwargs=True))
        yield rec
    finally:
        for h in handles:
            h.remove()


def record_block_calls(model: TransformerBridge, tokens: Int[Tensor, "batch pos"],
                       fwd_hooks: Sequence[tuple[str, Callable]] = (), *, keep: Iterable[str] = (),
                       keep_rows: int | None = None
                       ) -> tuple[Float[Tensor, "batch pos d_vocab"], BlockCalls, dict[str, Tensor]]:
    """Run ``model`` on ``tokens`` with ``fwd_hooks``; return its logits, every block's call arguments (without a
    key/value cache, so re-running a block does not grow one) and the activations of the hook points ``keep``
    (their first ``keep_rows`` rows; default all), detached."""
    kept: dict[str, Tensor] = {}

    def saver(name: str) -> Callable:
        def save(act: Tensor, hook: Any) -> Tensor:
            kept[name] = act[:keep_rows].detach()
            return act
        return save

    with recording_block_calls(model) as rec:
        logits = model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, *((n, saver(n)) for n in keep)])
    rec.batch, rec.n_tokens = int(tokens.shape[0]), int(tokens.shape[1])
    if len(rec.calls) != len(model.blocks):
        raise RuntimeError(f"record_block_calls: {len(rec.calls)} of {len(model.blocks)} blocks were called. "
                           "Fix: use a TransformerBridge whose blocks run in order (editlens.load_model).")
    return logits, rec, kept


def run_blocks(model: TransformerBridge, resid: Float[Tensor, "batch pos d_model"], start: int,
               calls: Mapping[int, tuple[tuple, dict[str, Any]]]) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after blocks ``start ..`` applied to ``resid`` (before the final norm), each block called
    with its recorded ``calls[i] = (args after the residual, kwargs)``. Hooks fire as the caller set them."""
    h = resid
    for i in range(start, len(model.blocks)):
        args, kwargs = calls[i]
        out = model.blocks[i](h, *args, **kwargs)
        h = out[0] if isinstance(out, (tuple, list)) else out
    return h


def run_from_layer(model: TransformerBridge, resid: Float[Tensor, "batch pos d_model"], start: int, calls: BlockCalls,
                   *,
                   fwd_hooks: Sequence[tuple[str, Callable]] = (), positions: slice | None = None
                   ) -> Float[Tensor, "batch n_pos d_vocab"]:
    """Logits of blocks ``start ..`` applied to ``resid`` (the residual stream entering block ``start``; ``start``
    = n_layers: only the final norm and unembedding), at ``positions`` of the sequence (default all). ``resid``
    must have the recorded run's batch and length: the recorded arguments (masks, positions) are for them."""
    if tuple(resid.shape[:2]) != (calls.batch, calls.n_tokens):
        raise ValueError(f"run_from_layer: the residual stream is {tuple(resid.shape[:2])} (batch, pos) but the "
                         f"block calls were recorded for {(calls.batch, calls.n_tokens)}. Fix: record them "
                         "(record_block_calls) on tokens of the same batch and length.")
    n_layers = len(model.blocks)
    if not 0 <= start <= n_layers:
        raise ValueError(f"run_from_layer: start {start} is outside 0..{n_layers}.")
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        h = run_blocks(model, resid, start, calls.calls)
        h = h if positions is None else h[:, positions]
        return model.unembed(model.ln_final(h))
