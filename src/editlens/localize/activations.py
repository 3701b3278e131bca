"""Per-head outputs before W_O (``hook_z``) at the last prompt token.

Taught in: Chapter 1. On SmolLM2 ``hook_z`` is [batch, pos, 9, 64]: one slice per *query* head.
With grouped-query attention the 9 query heads of a layer share 3 key/value heads (heads 0-2 use
kv head 0, 3-5 kv head 1, 6-8 kv head 2), but each query head has its own attention pattern, its
own z and its own W_O[h] slice, so "a head" here is a query head.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from editlens.consistency import _Encoder, _device, _pad_id, pad_rows


def z_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def last_token_z(
    model, prompts: Sequence[str], *, batch_size: int = 32, dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "prompt layer head d_head"]:
    """``hook_z`` of every layer at each prompt's last token (BOS prepended), on the CPU."""
    enc = _Encoder(model)
    ids = [enc.prompt(p) for p in prompts]
    L = model.cfg.n_layers
    out = torch.empty(len(prompts), L, model.cfg.n_heads, model.cfg.d_head, dtype=dtype)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    pad, dev = _pad_id(model), _device(model)
    names = {z_hook_name(l) for l in range(L)}
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


def unique_prompts(*columns: Sequence[str]) -> list[str]:
    """Prompts of several columns, deduplicated, in first-seen order."""
    return list(dict.fromkeys(p for col in columns for p in col))


def kv_group(head: int, n_heads: int, n_kv_heads: int) -> int:
    """Key/value head shared by query head ``head`` under GQA (heads are grouped contiguously)."""
    return head // (n_heads // n_kv_heads)


def gqa_groups(model) -> np.ndarray:
    """``[n_heads]`` array: the kv head each query head reads (all zeros-to-n_kv-1, contiguous)."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return np.array([kv_group(h, model.cfg.n_heads, n_kv) for h in range(model.cfg.n_heads)])
