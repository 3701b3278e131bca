"""Attention drift, causally confirmed: give the edited model back its unedited attention patterns.

Taught in: Chapter 5 (SADR). The authors' experiment (their notebook: GPT-2 XL edited at layer 17; restoring the
unedited attention of layers 20-47 brought P(Egypt) on a distracted prompt from 0.0002 back to 0.76): on distracted
prompts, record the unedited model's attention patterns (``hook_pattern``, post-softmax), apply the edit, and
overwrite the edited run's patterns of some (layer, head) pairs with the recorded ones. Everything else (values,
MLPs, the residual stream) stays edited. Measured: the probability of the true answer (teacher-forced over its
tokens), unedited, edited and restored, and the fraction recovered
(p_restored - p_edited) / (p_unedited - p_edited). Conditions: every head of the layers above the edit layer; the
top-k most drifted heads (attention to the subject's last token grew most); controls with the same number of
(layer, head) pairs chosen at random (seeded). Batched over prompts; the edit is undone on exit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from editlens.rome.update import Edit, applied_edit
from editlens.sadr.drift import Drift, subject_positions
from editlens.sadr.patterns import PromptBatch, answer_run, prompt_batch
from editlens.sadr.regulariser import pattern_hook

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Pair = tuple[int, int]


def as_heads(pairs: Sequence[Pair]) -> dict[int, list[int]]:
    """(layer, head) pairs grouped by layer."""
    out: dict[int, list[int]] = {}
    for layer, head in pairs:
        out.setdefault(int(layer), []).append(int(head))
    return {layer: sorted(set(h)) for layer, h in sorted(out.items())}


def all_pairs(layers: Sequence[int], n_heads: int) -> list[Pair]:
    """Every (layer, head) pair of ``layers``."""
    return [(int(layer), h) for layer in layers for h in range(n_heads)]


def random_pairs(pool: Sequence[Pair], k: int, seed: int = 0) -> list[Pair]:
    """``k`` distinct pairs drawn from ``pool`` (seeded; the control condition)."""
    if k > len(pool):
        raise ValueError(f"Cannot draw {k} (layer, head) pairs from a pool of {len(pool)}. Fix: pass k <= {len(pool)}.")
    return sorted(random.Random(seed).sample(list(pool), k))


def fraction_recovered(p_unedited: Tensor | float, p_edited: Tensor | float, p_restored: Tensor | float):
    """(p_restored - p_edited) / (p_unedited - p_edited): 0 = no effect, 1 = the unedited probability is back."""
    return (p_restored - p_edited) / (p_unedited - p_edited)


@dataclass
class Restoration:
    """One condition of the restoration experiment, per prompt."""

    label: str
    pairs: list[Pair]
    p_unedited: Float[Tensor, " prompt"]
    p_edited: Float[Tensor, " prompt"]
    p_restored: Float[Tensor, " prompt"]

    @property
    def fraction(self) -> float:
        """Fraction recovered of the mean probabilities (robust when a prompt barely moved). Meaningless when the
        edit barely moved the mean (p_unedited ~ p_edited: the denominator is noise): read the raw probabilities."""
        return float(fraction_recovered(self.p_unedited.mean(), self.p_edited.mean(), self.p_restored.mean()))

    @property
    def fraction_per_prompt(self) -> Float[Tensor, " prompt"]:
        return fraction_recovered(self.p_unedited, self.p_edited, self.p_restored)

    def row(self) -> dict[str, Any]:
        return {"condition": self.label, "n_heads": len(self.pairs), "p_unedited": float(self.p_unedited.mean()),
                "p_edited": float(self.p_edited.mean()), "p_restored": float(self.p_restored.mean()),
                "fraction_recovered": self.fraction}


@dataclass
class RestorationRun:
    """The recorded runs one experiment needs: unedited and edited patterns and probabilities of one batch."""

    batch: PromptBatch
    edit: Edit | Sequence[Edit]
    unedited: dict[int, Tensor]
    edited: dict[int, Tensor]
    p_unedited: Float[Tensor, " prompt"]
    p_edited: Float[Tensor, " prompt"]
    results: list[Restoration] = field(default_factory=list)


def record_run(model: TransformerBridge, edit: Edit | Sequence[Edit], prompts: Sequence[str], answers: Sequence[str]
               ) -> RestorationRun:
    """Patterns of every layer and the true answers' probabilities, unedited and with ``edit`` applied."""
    batch = prompt_batch(model, list(prompts), list(answers))
    layers = list(range(model.cfg.n_layers))
    p0, unedited = answer_run(model, batch, layers)
    with applied_edit(model, edit):
        p1, edited = answer_run(model, batch, layers)
    return RestorationRun(batch=batch, edit=edit, unedited=unedited, edited=edited, p_unedited=p0.cpu(),
                          p_edited=p1.cpu())


def restore(model: TransformerBridge, run: RestorationRun, pairs: Sequence[Pair], label: str = "") -> Restoration:
    """The edited model with the unedited patterns of ``pairs`` put back: the true answers' probabilities."""
    return restore_many(model, run, [(label, pairs)])[0]


def restore_many(model: TransformerBridge, run: RestorationRun, conditions: Sequence[tuple[str, Sequence[Pair]]]
                 ) -> list[Restoration]:
    """:func:`restore` for several ``(label, pairs)`` conditions in one forward pass: the run's prompts once per
    condition, each copy with its own heads put back (a short batch's matrix products are small; stacked, the
    conditions cost little more than one)."""
    n, n_heads = run.batch.n, model.cfg.n_heads
    b = run.batch
    big = PromptBatch(tokens=b.tokens.repeat(len(conditions), 1), last=b.last.repeat(len(conditions)),
                      lengths=b.lengths.repeat(len(conditions)), answers=b.answers * len(conditions))
    masks: dict[int, Tensor] = {}  # layer -> [condition, head]: the heads put back
    for c, (_, pairs) in enumerate(conditions):
        for layer, heads in as_heads(pairs).items():
            masks.setdefault(layer, torch.zeros(len(conditions), n_heads, dtype=torch.bool))[c, heads] = True

    def put_back(layer: int):
        def hook(act: Float[Tensor, "batch head query key"], hook: Any) -> Tensor:
            keep = masks[layer].to(act.device).repeat_interleave(n, 0)[:, :, None, None]
            recorded = run.unedited[layer].to(act.device, act.dtype).repeat(len(conditions), 1, 1, 1)
            return torch.where(keep, recorded, act)
        return hook

    with applied_edit(model, run.edit):
        p, _ = answer_run(model, big, fwd_hooks=[(pattern_hook(layer), put_back(layer)) for layer in masks])
    out = []
    for c, (label, pairs) in enumerate(conditions):
        res = Restoration(label=label, pairs=list(pairs), p_unedited=run.p_unedited, p_edited=run.p_edited,
                          p_restored=p[c * n:(c + 1) * n].cpu())
        run.results.append(res)
        out.append(res)
    return out


def drift_of_run(model: TransformerBridge, run: RestorationRun, prompts: Sequence[str], subject: str) -> Drift:
    """Attention from the last prompt token to the subject's last token, before and after, from the recorded
    patterns of a run ([prompt, layer, head])."""
    keys = subject_positions(model, prompts, subject).to(run.batch.tokens.device)
    rows = torch.arange(run.batch.n, device=keys.device)

    def at(pats: dict[int, Tensor]) -> Tensor:
        return torch.stack([pats[layer][rows, :, run.batch.last, keys] for layer in sorted(pats)], 1).float().cpu()

    return Drift(before=at(run.unedited), after=at(run.edited), prompts=list(prompts))


def restoration_experiment(model: TransformerBridge, edit: Edit, prompts: Sequence[str], answers: Sequence[str],
                           subject: str, *,
                           top_k: Sequence[int] = (5, 10, 20), seed: int = 0,
                           layers: Sequence[int] | None = None) -> tuple[pd.DataFrame, RestorationRun]:
    """The authors' causal test and its controls, on ``prompts`` (distracted prompts) whose true answers are
    ``answers``; ``edit`` is a computed (not applied) edit. ``layers``: where patterns are restored (default: the
    layers above the edit layer). Conditions, one row each: every head of ``layers``; the same number of random
    pairs of the whole model; for each k in ``top_k``, the k most drifted heads of ``layers`` and k random pairs of
    ``layers``. Returns ``(table, run)``."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    edits = [edit] if isinstance(edit, Edit) else list(edit)
    layers = list(range(max(e.layer for e in edits) + 1, n_layers)) if layers is None else list(layers)
    run = record_run(model, edit, prompts, answers)
    drift = drift_of_run(model, run, prompts, subject)
    upper = all_pairs(layers, n_heads)
    conditions = [(f"all heads of layers {layers[0]}-{layers[-1]}", upper),
                  (f"{len(upper)} random heads (any layer)",
                   random_pairs(all_pairs(range(n_layers), n_heads), len(upper), seed))]
    for k in top_k:
        if k > len(upper):
            continue
        conditions.append((f"top-{k} drifted heads", drift.top_heads(k, layers)))
        conditions.append((f"{k} random heads (layers {layers[0]}-{layers[-1]})", random_pairs(upper, k, seed)))
    restore_many(model, run, conditions)
    return pd.DataFrame([r.row() for r in run.results]), run
