"""The model's anatomy: its shape, its hook points and what its attention heads attend to.

Taught in: Chapter 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import ActivationCache
    from transformer_lens.model_bridge import TransformerBridge


def config_summary(model: "TransformerBridge") -> dict[str, object]:
    """The sizes that matter in this book, read from the model's config."""
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": getattr(cfg, "original_architecture", None) or type(model.original_model).__name__,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads (query)": cfg.n_heads,
        "n_key_value_heads": n_kv,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "d_vocab": cfg.d_vocab,
        "parameters (millions)": round(n_params / 1e6, 1),
    }


def hook_table(cache: "ActivationCache", layer: int | None = 0) -> pd.DataFrame:
    """Hook names and activation shapes in ``cache``: those of block ``layer`` and the global ones.

    ``layer=None`` lists every hook. Shapes include the batch dimension.
    """
    rows = []
    for name in cache.keys():
        in_block = name.startswith("blocks.")
        if layer is not None and in_block and not name.startswith(f"blocks.{layer}."):
            continue
        rows.append({"hook": name, "shape": tuple(cache[name].shape)})
    return pd.DataFrame(rows)


def attention_patterns(cache: "ActivationCache", n_layers: int) -> Float[Tensor, "layer head query key"]:
    """All post-softmax attention patterns of the first batch element, stacked over layers, in float32
    (under mixed precision the cached patterns are bfloat16, :mod:`editlens.precision`)."""
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0].float() for layer in range(n_layers)])


def previous_token_scores(patterns: Float[Tensor, "layer head query key"]) -> Float[Tensor, "layer head"]:
    """Mean attention each head pays to the token just before the query (queries 1..end)."""
    sub_diagonal = patterns.diagonal(offset=-1, dim1=-2, dim2=-1)  # [layer, head, query-1]
    return sub_diagonal.mean(dim=-1)


def first_token_scores(patterns: Float[Tensor, "layer head query key"]) -> Float[Tensor, "layer head"]:
    """Mean attention each head pays to position 0 (the BOS 'attention sink'), over queries 1..end."""
    return patterns[..., 1:, 0].mean(dim=-1)


def has_norm_after_mlp(model: "TransformerBridge", layer: int = 0) -> bool:
    """Whether block ``layer`` normalises its MLP's output before adding it to the residual stream (Gemma 2/3's
    ``post_feedforward_layernorm``, which TransformerLens's bridge calls ``ln2_post``)."""
    return getattr(model.blocks[layer], "ln2_post", None) is not None


@torch.no_grad()
def mlp_width(model: TransformerBridge) -> int:
    """The MLP's hidden size ``d_mlp`` (the keys' dimension ROME and MEMIT edit in). TransformerLens types it
    ``int | None`` (None for attention-only models); every model of this book has MLPs."""
    d_mlp = model.cfg.d_mlp
    assert d_mlp is not None, "the model has no MLP (cfg.d_mlp is None)"
    return d_mlp


def embedding_scale(model: "TransformerBridge") -> float:
    """What the model multiplies a token's embedding row by before the residual stream (``hook_embed``): 1 for
    most models, sqrt(d_model) for Gemma; measured on the first 8 rows."""
    W_E = model.W_E.detach()
    probe = torch.arange(min(8, W_E.shape[0]), device=W_E.device)[None]
    return float(model.embed(probe).float().norm() / W_E[probe[0]].float().norm())


@torch.no_grad()
def model_card(model: "TransformerBridge") -> dict[str, object]:
    """:func:`config_summary` plus what differs between architectures and matters to the book's methods: how the
    attention layers see the past, the norms after attention and MLP (ROME writes before the latter), the scale of
    the embeddings (causal tracing's noise follows it), tied embeddings.

    Taught in: Setup ("The second model"), which shows the two embedded models side by side."""
    hf_cfg = model.original_model.config
    types = list(getattr(hf_cfg, "layer_types", None) or ["full_attention"] * model.cfg.n_layers)
    n_sliding = sum(t == "sliding_attention" for t in types)
    window = getattr(hf_cfg, "sliding_window", None)
    attention = (f"{n_sliding} sliding-window ({window} tokens), {len(types) - n_sliding} full" if n_sliding
                 else f"{len(types)} full")
    card = dict(config_summary(model))
    card.update({
        "attention layers": attention,
        "norm after attention": getattr(model.blocks[0], "ln1_post", None) is not None,
        "norm after MLP": has_norm_after_mlp(model),
        "embeddings scaled by": round(embedding_scale(model), 2),
        "tied embeddings": bool(getattr(hf_cfg, "tie_word_embeddings", False)),
    })
    return card
