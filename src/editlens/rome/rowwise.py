"""Several edited models in one batch: each row of a batch runs with its own rank-one edits.

Taught in: Chapter 3 (the evaluation); used by :func:`editlens.evaluate.evaluate_edits` for Chapters 3-6.

A ROME edit changes one matrix by a rank-one term, ``W_out' = W_out + outer(left, right)``, so on a key
``k`` the edited MLP computes ``k @ W_out + (k . left) * right``. Adding that second term per row, with
a forward hook on the edit layer's output matrix, runs fifty edited models side by side in one
batched generation instead of fifty generations of two prompts each. Generation on a CPU is
memory-bound (every new token reads all the weights), so a batch of 32 rows costs little more than a
batch of 2. The weights are never touched. The result equals applying the edit to the weights up to
float rounding (about 1e-6 relative; ``tests/test_rowwise.py`` checks the logits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from editlens.rome.update import Edit

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def edit_factors(edit: Edit) -> tuple[Float[Tensor, "d_mlp"], Float[Tensor, "d_model"]]:
    """``(left, right)`` of a rank-one :class:`Edit`, with a clear error when the edit does not carry them."""
    if edit.factors is None:
        raise ValueError(f"The edit at layer {edit.layer} carries no rank-one factors (Edit.factors is None). "
                         "Fix: build it with editlens.rome.compute_rome_edit, or evaluate it with its weights "
                         "applied (evaluate_edits(..., batch_generations=False)).")
    return edit.factors


def output_matrix_module(model: TransformerBridge, layer: int) -> torch.nn.Module:
    """The module that multiplies by ``blocks[layer].mlp.W_out`` (Hugging Face's ``down_proj``)."""
    out = model.blocks[layer].mlp.out
    inner = getattr(out, "original_component", None) or getattr(out, "_original_component", None)
    return inner if isinstance(inner, torch.nn.Linear) else out


@contextlib.contextmanager
def rowwise_edits(model: TransformerBridge, rows: Sequence[Sequence[Edit]]) -> Iterator[None]:
    """Inside the block, row ``b`` of every batch the model runs sees the edits ``rows[b]`` (an empty list:
    the unedited model). Batches must have exactly ``len(rows)`` rows, in that order (generation with a
    key/value cache keeps the batch, so it works there too). The hooks are removed on exit, also after an
    exception; the weights are not modified at any point."""
    n = len(rows)
    per_layer: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
    for b, edits in enumerate(rows):
        for e in edits:
            left, right = edit_factors(e)
            per_layer.setdefault(e.layer, []).append((b, left, right))
    handles = []
    try:
        for layer, items in per_layer.items():
            W = model.blocks[layer].mlp.W_out
            d_mlp, d_model = W.shape
            L = torch.zeros(n, d_mlp, dtype=torch.float64, device=W.device)
            R = torch.zeros(n, d_model, dtype=torch.float64, device=W.device)
            counts = torch.zeros(n, dtype=torch.long)
            for b, left, right in items:
                if counts[b]:  # two edits of one row at one layer: not a single rank-one term
                    raise ValueError(f"Row {b} has more than one edit at layer {layer}; rowwise_edits takes at most "
                                     "one per row and layer. Fix: evaluate that row with its edits applied to the "
                                     "weights (editlens.rome.applied_edit).")
                counts[b] += 1
                L[b], R[b] = left.to(W.device, torch.float64), right.to(W.device, torch.float64)
            L, R = L.to(W.dtype), R.to(W.dtype)

            def hook(module: torch.nn.Module, inputs: tuple, output: Tensor, L: Tensor = L, R: Tensor = R) -> Tensor:
                x = inputs[0]  # [batch, pos, d_mlp]: the keys
                if x.shape[0] != L.shape[0]:
                    raise RuntimeError(f"rowwise_edits holds {L.shape[0]} rows but the model ran a batch of "
                                       f"{x.shape[0]}. Fix: run exactly one batch row per entry of `rows`.")
                return output + (x @ L.unsqueeze(-1)) * R.unsqueeze(1)

            handles.append(output_matrix_module(model, layer).register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
