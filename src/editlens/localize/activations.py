"""Per-head outputs before W_O (``hook_z``) at the last prompt token.

Taught in: Chapter 1. On SmolLM2 ``hook_z`` is [batch, pos, 9, 64]: one slice per *query* head.
With grouped-query attention the 9 query heads of a layer share 3 key/value heads (heads 0-2 use
kv head 0, 3-5 kv head 1, 6-8 kv head 2), but each query head has its own attention pattern, its
own z and its own W_O[h] slice, so "a head" here is a query head.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from editlens.scoring import (PrefixTree, TokenCache, forward_packed, model_device, packing_supported, pad_id,
                              pad_rows)


def z_hook_name(layer: int) -> str:
    """Hook of the per-head outputs before W_O: ``[batch, pos, head, d_head]`` (Chapters 1-2)."""
    return f"blocks.{layer}.attn.hook_z"


def last_token_z(
    model, prompts: Sequence[str], *, batch_size: int = 32, dtype: torch.dtype = torch.float32,
    packed: bool | None = None, row_tokens: int = 256,
) -> Float[Tensor, "prompt layer head d_head"]:
    """``hook_z`` of every layer at each prompt's last token (BOS prepended), on the CPU.

    Prompts sharing a prefix run it once (:class:`editlens.scoring.PrefixTree`, tree attention)
    unless ``packed=False`` or the model does not support it; then right-padded batches."""
    enc = TokenCache(model)
    ids = [enc.prompt(p) for p in prompts]
    L = model.cfg.n_layers
    out = torch.empty(len(prompts), L, model.cfg.n_heads, model.cfg.d_head, dtype=dtype)
    names = {z_hook_name(l) for l in range(L)}
    if packed is not False and packing_supported(model):
        tree = PrefixTree(ids, row_tokens=row_tokens)
        by_row: dict[int, list[tuple[int, int]]] = {}
        for i, seq in enumerate(ids):
            r, pos = tree.home[tree.node(i, len(seq) - 1)]
            by_row.setdefault(r, []).append((i, pos))
        store: dict[str, Tensor] = {}

        def grabber(name: str):
            def grab(z: Tensor, hook) -> Tensor:
                store[name] = z
                return z
            return grab

        with torch.no_grad():
            for r, members in sorted(by_row.items()):
                at = torch.tensor([a for _, a in members])
                forward_packed(model, tree.rows[r], [members[0][1]], [(n, grabber(n)) for n in sorted(names)])
                z = torch.stack([store[z_hook_name(l)][0, at.to(store[z_hook_name(l)].device)] for l in range(L)], 1)
                out[torch.tensor([i for i, _ in members])] = z.to("cpu", dtype)
        return out
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    pad, dev = pad_id(model), model_device(model)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            tokens = pad_rows([ids[i] for i in idx], pad, dev)
            last = torch.tensor([len(ids[i]) - 1 for i in idx], device=dev)
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            ar = torch.arange(len(idx), device=dev)
            z = torch.stack([cache[z_hook_name(l)][ar, last] for l in range(L)], dim=1)  # [b, L, H, d]
            out[torch.tensor(idx)] = z.to("cpu", dtype)
    return out


def prompt_index(prompts: Sequence[str]) -> dict[str, int]:
    """Map prompt text -> row of the array returned by :func:`last_token_z` (first occurrence)."""
    index: dict[str, int] = {}
    for i, p in enumerate(prompts):
        index.setdefault(p, i)
    return index


def unique_prompts(*columns: Iterable[str]) -> list[str]:
    """Prompts of several columns (lists or DataFrame columns), deduplicated, in first-seen order."""
    return list(dict.fromkeys(p for col in columns for p in col))


def kv_group(head: int, n_heads: int, n_kv_heads: int) -> int:
    """Key/value head shared by query head ``head`` under GQA (heads are grouped contiguously)."""
    return head // (n_heads // n_kv_heads)


def gqa_groups(model) -> np.ndarray:
    """``[n_heads]`` array: the kv head each query head reads (all zeros-to-n_kv-1, contiguous)."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return np.array([kv_group(h, model.cfg.n_heads, n_kv) for h in range(model.cfg.n_heads)])
