"""Reading and overwriting attention patterns of plain prompts, batched.

Taught in: Chapter 5 (SADR). The one place where Chapter 5 runs prompts for their attention patterns
(``blocks.{l}.attn.hook_pattern``, post-softmax, [batch, head, query, key], one head per query head: SmolLM2's 9
query heads, although they share 3 key/value heads). The model must run eager attention (``editlens.load_model``
does), otherwise the pattern hook does not fire. Prompts are right-padded with BOS first (the book's one rule):
with causal attention the real positions never see the padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from editlens.sadr.regulariser import pattern_hook
from editlens.scoring import (
    HookList,
    encode_answer,
    encode_prompt,
    model_device,
    pad_id,
    pad_rows,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class PromptBatch:
    """Right-padded rows: each prompt (BOS first), optionally followed by its answer's tokens but the last
    (teacher forcing). ``last[b]`` is the last prompt token of row b (it predicts the answer's first token)."""

    tokens: Int[Tensor, "batch pos"]
    last: Int[Tensor, " batch"]
    lengths: Int[Tensor, " batch"]
    answers: list[list[int]]  # answer token ids per row (empty without answers)

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])


def prompt_batch(model: TransformerBridge, prompts: Sequence[str], answers: Sequence[str] | None = None) -> PromptBatch:
    """Token rows for ``prompts`` (and ``answers``: ``" " + answer`` teacher-forced after each prompt)."""
    if isinstance(prompts, str):
        raise TypeError("prompt_batch() takes a list of prompts; wrap one prompt in a list.")
    ids = [encode_prompt(model, p) for p in prompts]
    ans = [encode_answer(model, a) for a in answers] if answers is not None else [[] for _ in ids]
    if len(ans) != len(ids):
        raise ValueError(f"{len(ids)} prompts but {len(ans)} answers. Fix: give one answer per prompt.")
    rows = [p + a[:-1] for p, a in zip(ids, ans)]
    dev = model_device(model)
    return PromptBatch(tokens=pad_rows(rows, pad_id(model), dev),
                       last=torch.tensor([len(p) - 1 for p in ids], device=dev),
                       lengths=torch.tensor([len(r) for r in rows], device=dev), answers=ans)


Heads = Mapping[int, Sequence[int] | None]
"""Layer -> the heads to overwrite there (None: every head)."""


def _overwrite(recorded: Tensor, heads: Sequence[int] | None):
    def hook(act: Float[Tensor, "batch head query key"], hook: Any) -> Tensor:
        src = recorded.to(act.device, act.dtype)
        if heads is None:
            return src.clone()
        act = act.clone()
        idx = torch.as_tensor(list(heads), dtype=torch.long, device=act.device)
        act[:, idx] = src[:, idx]
        return act
    return hook


def _hooks(layers: Sequence[int], replace: Mapping[int, Tensor] | None, heads: Heads | None,
           store: dict[int, Tensor]) -> HookList:
    """Hooks that overwrite the patterns of ``replace`` (the heads in ``heads``), then record those of ``layers``."""
    hooks: HookList = []
    for layer, pattern in (replace or {}).items():
        hooks.append((pattern_hook(layer), _overwrite(pattern, (heads or {}).get(layer))))

    def recorder(layer: int):
        def rec(act: Tensor, hook: Any) -> Tensor:
            store[layer] = act.detach().clone()
            return act
        return rec

    return hooks + [(pattern_hook(layer), recorder(layer)) for layer in layers]


@torch.no_grad()
def run_patterns(model: TransformerBridge, batch: PromptBatch, layers: Sequence[int] = (), *,
                 replace: Mapping[int, Tensor] | None = None, heads: Heads | None = None
                 ) -> tuple[Float[Tensor, "batch pos d_vocab"], dict[int, Tensor]]:
    """One forward of ``batch``: the logits and the patterns of ``layers`` (detached, [batch, head, query, key]).

    ``replace``: layer -> a recorded pattern of the same batch that overwrites this run's (the heads in
    ``heads[layer]``, default every head) before the attention output is computed."""
    store: dict[int, Tensor] = {}
    logits = model.run_with_hooks(batch.tokens, fwd_hooks=_hooks(layers, replace, heads, store))
    return logits, store


class _Stop(Exception):
    """Ends a forward pass after the final norm (the logits of every position are not needed)."""


@torch.no_grad()
def answer_run(model: TransformerBridge, batch: PromptBatch, layers: Sequence[int] = (), *,
               replace: Mapping[int, Tensor] | None = None, heads: Heads | None = None,
               fwd_hooks: Sequence[tuple[str, Any]] = ()) -> tuple[Float[Tensor, " batch"], dict[int, Tensor]]:
    """:func:`run_patterns`, returning the answers' probabilities (:func:`answer_probability`) instead of the
    logits: the forward stops after the final norm, and only the positions that predict answer tokens are
    unembedded (the unembedding of every position, and its softmax over the whole vocabulary, cost more than
    the rest of a short batch's forward). ``fwd_hooks``: more hooks, run before the recorders."""
    if not any(batch.answers):
        raise ValueError("answer_run needs answers. Fix: build the batch with prompt_batch(model, prompts, answers).")
    store: dict[int, Tensor] = {}
    final: dict[str, Tensor] = {}

    def stop(act: Tensor, hook: Any) -> Tensor:
        final["resid"] = act
        raise _Stop

    try:
        model.run_with_hooks(batch.tokens, fwd_hooks=[*fwd_hooks, *_hooks(layers, replace, heads, store),
                                                      ("ln_final.hook_out", stop)])
    except _Stop:
        pass
    dev = final["resid"].device
    rows = torch.cat([torch.full((len(a),), b, dtype=torch.long) for b, a in enumerate(batch.answers)]).to(dev)
    pos = torch.cat([int(batch.last[b]) + torch.arange(len(a)) for b, a in enumerate(batch.answers)]).to(dev)
    tok = torch.tensor([t for a in batch.answers for t in a], dtype=torch.long, device=dev)
    lp = torch.log_softmax(model.unembed(final["resid"][rows, pos][None])[0].float(), -1)
    per_row = torch.zeros(batch.n, device=dev).index_add_(0, rows, lp[torch.arange(len(tok), device=dev), tok])
    return per_row.exp(), store


def answer_probability(logits: Float[Tensor, "batch pos d_vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
    """Teacher-forced probability of each row's whole answer (the product over its tokens; for a one-token answer,
    the next-token probability at the last prompt token)."""
    lp = torch.log_softmax(logits.float(), -1)
    out = []
    for b, ans in enumerate(batch.answers):
        pos = batch.last[b] + torch.arange(len(ans), device=lp.device)
        tok = torch.as_tensor(ans, device=lp.device)
        out.append(lp[b, pos, tok].sum().exp())
    return torch.stack(out) if out else torch.zeros(0)


def record_patterns(model: TransformerBridge, prompts: Sequence[str] | PromptBatch, layers: Sequence[int] | None = None
                    ) -> dict[int, Float[Tensor, "batch head query key"]]:
    """Attention patterns of ``layers`` (default: all) on ``prompts`` (or a :class:`PromptBatch`), as the model is
    now (e.g. inside :func:`editlens.rome.applied_edit`)."""
    batch = prompts if isinstance(prompts, PromptBatch) else prompt_batch(model, prompts)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    return run_patterns(model, batch, layers)[1]
