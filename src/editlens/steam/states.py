"""Residual-stream states at the last prompt token, layer by layer.

Taught in: Chapter 4 (STEAM). The one place where Chapter 4 reads ``blocks.{l}.hook_resid_post`` of plain
prompts: the semantic anchors (:mod:`editlens.steam.anchors`) and the diagnostics
(:mod:`editlens.steam.diagnostics`) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from editlens.scoring import HookList, encode_prompt, model_device, pad_id, pad_rows

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def resid_hook(layer: int) -> str:
    """The residual stream after block ``layer`` (what STEAM aligns and anchors)."""
    return f"blocks.{layer}.hook_resid_post"


def check_layers_in_range(layers: Sequence[int], n_layers: int, what: str = "layers") -> list[int]:
    """``layers`` as a list of ints, each in ``0..n_layers-1``; otherwise a ``ValueError`` naming the fix."""
    out = [int(layer) for layer in layers]
    if not out:
        raise ValueError(f"No {what} given. Fix: pass at least one layer index between 0 and {n_layers - 1}.")
    bad = [layer for layer in out if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"{what} {bad} are outside the model's layers 0..{n_layers - 1}. "
                         f"Fix: pass layer indices between 0 and {n_layers - 1}.")
    return out


def _recorder(store: dict[int, Tensor], layer: int, rows: Tensor, last: Tensor) -> Any:
    """A hook that stores ``act[rows, last]`` of its layer (float32, CPU) under ``store[layer]``."""
    def rec(act: Tensor, hook: Any) -> Tensor:
        store[layer] = act[rows, last].detach().float().cpu()
        return act
    return rec


@torch.no_grad()
def last_token_states(model: TransformerBridge, prompts: Sequence[str], layers: Sequence[int] | None = None, *,
                      batch_size: int = 32, fwd_hooks: Sequence[tuple[str, Any]] = ()
                      ) -> Float[Tensor, "prompt layer d_model"]:
    """``hook_resid_post`` of each layer at the last token of each prompt (BOS first, as everywhere in the book).

    ``layers=None`` takes every layer. Prompts are right-padded in batches: with causal attention the last real
    token never sees the padding. ``fwd_hooks`` run as well (e.g. a steering hook); float32 on the CPU."""
    if isinstance(prompts, str):
        raise TypeError("last_token_states() takes a list of prompts; wrap one prompt in a list.")
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else check_layers_in_range(layers, n_layers)
    prompts = list(prompts)
    if not prompts:
        return torch.zeros(0, len(layers), model.cfg.d_model)
    out: list[Tensor] = []
    dev = model_device(model)
    for b in range(0, len(prompts), batch_size):
        ids = [encode_prompt(model, p) for p in prompts[b:b + batch_size]]
        tokens = pad_rows(ids, pad_id(model), dev)
        last = torch.tensor([len(i) - 1 for i in ids], device=dev)
        rows = torch.arange(len(ids), device=dev)
        store: dict[int, Tensor] = {}
        hooks: HookList = [*fwd_hooks, *[(resid_hook(layer), _recorder(store, layer, rows, last)) for layer in layers]]
        model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None)
        out.append(torch.stack([store[layer] for layer in layers], dim=1))
    return torch.cat(out, dim=0)
