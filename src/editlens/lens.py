"""The logit lens: read the residual stream after each layer through the final norm and unembedding.

Taught in: Chapter 0 (and used to read edits in Chapters 3-5).
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


def residual_stack(cache: "ActivationCache", n_layers: int, position: int = -1) -> Float[Tensor, "layer_plus_1 batch d_model"]:
    """Residual stream at ``position``: the embeddings (row 0), then after each block (rows 1..n_layers)."""
    rows = [cache["blocks.0.hook_resid_pre"][:, position]]
    rows += [cache[f"blocks.{layer}.hook_resid_post"][:, position] for layer in range(n_layers)]
    return torch.stack(rows)


@torch.no_grad()
def logit_lens(
    model: "TransformerBridge", cache: "ActivationCache", position: int = -1
) -> Float[Tensor, "layer_plus_1 batch d_vocab"]:
    """Log-probabilities of the next token read from every layer's residual stream.

    Row ``i`` applies the model's final norm (``ln_final``) and unembedding to the residual
    stream after ``i`` blocks; the last row equals the model's own output. Log-probabilities are
    float32 whatever the model computes in (under mixed precision the unembedding returns bfloat16
    logits, :mod:`editlens.precision`; the log-softmax runs on them converted to float32).
    """
    resid = residual_stack(cache, model.cfg.n_layers, position)
    return model.unembed(model.ln_final(resid)).float().log_softmax(dim=-1)


def logit_lens_table(
    model: "TransformerBridge", cache: "ActivationCache", answer: str, position: int = -1, top_k: int = 3
) -> pd.DataFrame:
    """One row per layer: probability and rank of ``answer`` (first token), and the top-k tokens.

    ``answer`` is tokenised without BOS, so mind its leading space (" Paris", not "Paris").
    """
    answer_ids = model.to_tokens(answer, prepend_bos=False)[0]
    if answer_ids.numel() == 0:
        raise ValueError("answer is empty: pass the text the model should predict, e.g. ' Paris'.")
    answer_id = int(answer_ids[0])
    logprobs = logit_lens(model, cache, position)[:, 0]  # [layer, vocab], first batch element
    ranks = (logprobs > logprobs[:, answer_id : answer_id + 1]).sum(dim=-1)
    top = logprobs.topk(top_k, dim=-1).indices
    rows = []
    for layer in range(logprobs.shape[0]):
        rows.append(
            {
                "layer": "embed" if layer == 0 else layer - 1,
                "p_answer": logprobs[layer, answer_id].exp().item(),
                "rank_answer": int(ranks[layer]),
                "top_tokens": [model.tokenizer.decode(int(t)) for t in top[layer]],
            }
        )
    return pd.DataFrame(rows)
