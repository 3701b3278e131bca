"""Attention drift, seen: how much the predicting position attends to the edited subject, before and after an edit.

Taught in: Chapter 5 (SADR). The diagnostic of the paper's notebook: at the last prompt token, the attention paid
to the edited subject's last token, per layer and head ([layer, head]), on the unedited model and on the edited
one (the edit applied and undone with :func:`editlens.rome.applied_edit`, weights restored bit for bit); the full
attention row of one head; and the distracted prompts it is measured on, built by
:func:`editlens.evaluate.distracted_prompt` (the DNS probe's own builder). ``hook_pattern`` is per query head
(SmolLM2: 9 query heads sharing 3 key/value heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from editlens.data import FactLike, as_case
from editlens.evaluate import distracted_prompt, fill_subject
from editlens.rome.keys import subject_last_index
from editlens.rome.update import Edit, applied_edit
from editlens.sadr.patterns import PromptBatch, prompt_batch, run_patterns

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def distracted_prompts(fact: FactLike) -> list[str]:
    """One distracted prompt per neighbourhood prompt of a record: the edit stated as text, then the neighbour
    (:func:`editlens.evaluate.distracted_prompt`, what DNS scores)."""
    case = as_case(fact)
    req = case.requested_rewrite
    return [distracted_prompt(req.text, req.target_new, fill_subject(p, req.subject))
            for p in case.neighborhood_prompts]


def subject_positions(model: TransformerBridge, prompts: Sequence[str], subject: str) -> Int[Tensor, " prompt"]:
    """Index (BOS counted) of the last token of the first occurrence of ``subject`` in each prompt."""
    out = []
    for p in prompts:
        if subject not in p:
            raise ValueError(f"The subject {subject!r} does not occur in the prompt {p!r}. Fix: pass prompts that "
                             "contain the edited subject (e.g. editlens.sadr.distracted_prompts(case)).")
        if "{" in p or "}" in p:
            raise ValueError(f"The prompt {p!r} contains braces. Fix: remove them (the subject is located through a "
                             "'{}' template, editlens.rome.keys.subject_last_index).")
        out.append(subject_last_index(model, p.replace(subject, "{}", 1), subject)[1])
    return torch.tensor(out)


def attention_to(model: TransformerBridge, prompts: Sequence[str] | PromptBatch, key_positions: Int[Tensor, " prompt"],
                 layers: Sequence[int] | None = None) -> Float[Tensor, "prompt layer head"]:
    """Attention from each prompt's last token to its key position, per layer and (query) head, as the model is
    now."""
    batch = prompts if isinstance(prompts, PromptBatch) else prompt_batch(model, prompts)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    _, pats = run_patterns(model, batch, layers)
    rows = torch.arange(batch.n, device=batch.tokens.device)
    keys = key_positions.to(batch.tokens.device)
    return torch.stack([pats[layer][rows, :, batch.last, keys] for layer in layers], dim=1).float().cpu()


def subject_attention(model: TransformerBridge, prompts: Sequence[str], subject: str,
                      layers: Sequence[int] | None = None) -> Float[Tensor, "prompt layer head"]:
    """Attention from the last token to the subject's last token, [prompt, layer, head], as the model is now."""
    return attention_to(model, prompts, subject_positions(model, prompts, subject), layers)


def attention_row(model: TransformerBridge, prompt: str, layer: int, head: int | None = None) -> Float[Tensor, " key"]:
    """The last token's attention over every position of ``prompt`` in one head (``head=None``: summed over heads,
    as the paper's heatmap), as the model is now."""
    batch = prompt_batch(model, [prompt])
    _, pats = run_patterns(model, batch, [layer])
    row = pats[layer][0, :, int(batch.last[0]), : int(batch.lengths[0])]
    return (row.sum(0) if head is None else row[head]).float().cpu()


@dataclass
class Drift:
    """Attention to the subject's last token before and after an edit, [prompt, layer, head]."""

    before: Float[Tensor, "prompt layer head"]
    after: Float[Tensor, "prompt layer head"]
    prompts: list[str]

    @property
    def change(self) -> Float[Tensor, "layer head"]:
        """Mean over prompts of after - before."""
        return (self.after - self.before).mean(0)

    def top_heads(self, k: int, layers: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """The ``k`` (layer, head) pairs whose attention to the subject grew most (within ``layers``)."""
        change = self.change.clone()
        if layers is not None:
            keep = torch.zeros(change.shape[0], dtype=torch.bool)
            keep[list(layers)] = True
            change[~keep] = -float("inf")
        n_heads = change.shape[1]
        idx = change.flatten().argsort(descending=True)[:k]
        return [(int(i) // n_heads, int(i) % n_heads) for i in idx]


def attention_drift(model: TransformerBridge, edit: Edit | Sequence[Edit], prompts: Sequence[str], subject: str,
                    layers: Sequence[int] | None = None) -> Drift:
    """:func:`subject_attention` on the unedited model and with ``edit`` applied (undone on exit)."""
    prompts = list(prompts)
    keys = subject_positions(model, prompts, subject)
    before = attention_to(model, prompts, keys, layers)
    with applied_edit(model, edit):
        after = attention_to(model, prompts, keys, layers)
    return Drift(before=before, after=after, prompts=prompts)
