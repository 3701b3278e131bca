"""Supervised fine-tuning baseline for consistency: teach every paraphrase the same answer.

Taught in: Chapter 2 (the baseline that consistency steering is compared with, including its
wall-clock time, so the paper's speed claim is measured rather than quoted).

Objective: for every template prompt of every training query, teacher-forced cross-entropy of
``" " + target`` (mean over the target's tokens, then over the batch). The target is the query's
*majority* answer by default, so the paraphrases are taught to agree with each other (what
consistency measures); ``target="gold"`` teaches the gold object instead (consistency through
accuracy). AdamW, seeded shuffling.

The model stays in eval mode: SmolLM2 has no dropout (attention_dropout 0), so train and eval
mode compute the same function, and eval mode keeps any model with dropout deterministic.
Gradients flow through the TransformerBridge into ``model.original_model``'s parameters.

Every run restores the original weights bit-exactly on exit (also after an exception):
:func:`finetune_consistency` returns only the history; :func:`finetuned` yields the trained model
inside a ``with`` block.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
from torch import nn

from editlens.consistency import model_answers, query_consistency
from editlens.scoring import ScoringPlan, TokenCache, item_logprobs, model_device, pad_id, pad_rows

_WRAPPER = re.compile(r"\.?_original_component(?=\.|$)")


@dataclass
class SFTResult:
    """Training history. Each ``history`` row: ``step``, ``train_seconds`` (optimisation time only,
    evaluation excluded), ``elapsed_seconds`` (wall-clock including evaluation), ``loss`` (mean
    training loss since the previous row; NaN at step 0) and the metrics returned by ``eval_fn``."""

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    stopped: str = ""
    targets: dict[int, str] = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)

    def best(self, metric: str = "consistency", *, mode: str = "max") -> dict:
        """The history row with the best ``metric`` (earliest on ties)."""
        rows = [r for r in self.history if metric in r]
        if not rows:
            raise ValueError(f"No history row has metric {metric!r}; pass an eval_fn that returns it.")
        sign = 1 if mode == "max" else -1
        return max(rows, key=lambda r: (sign * r[metric], -r["step"]))


def clean_name(name: str) -> str:
    """A bridged parameter name with the bridge's ``_original_component`` segments removed."""
    return _WRAPPER.sub("", name)


def _select(model, trainable: Callable[[str], bool] | Sequence[str] | None) -> dict[str, nn.Parameter]:
    params = dict((clean_name(n), p) for n, p in model.original_model.named_parameters())
    if trainable is None:
        chosen = params
    elif callable(trainable):
        chosen = {n: p for n, p in params.items() if trainable(n)}
    else:
        pats = list(trainable)
        chosen = {n: p for n, p in params.items() if any(s in n for s in pats)}
    if not chosen:
        raise ValueError(f"trainable={trainable!r} selects no parameter. Names look like "
                         f"{list(params)[:3]}. Fix: pass substrings of these names, or None for all.")
    return chosen


def _targets(model, queries: Sequence[Any], targets: Mapping[int, str] | str, batch_size: int) -> dict[int, str]:
    if isinstance(targets, str):
        if targets == "gold":
            return {i: q.object for i, q in enumerate(queries)}
        if targets == "majority":
            per_query = query_consistency(model_answers(model, queries, batch_size=batch_size))
            return {int(q): str(m) for q, m in zip(per_query["query_id"], per_query["majority"])}
        raise ValueError(f"targets must be 'majority', 'gold' or a dict query index -> answer, got {targets!r}.")
    missing = [i for i in range(len(queries)) if i not in targets]
    if missing:
        raise ValueError(f"targets has no answer for query indices {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                         "keys are indices into train_queries.")
    return {i: str(targets[i]) for i in range(len(queries))}


def _examples(model, queries: Sequence[Any], targets: dict[int, str]) -> list[tuple[list[int], list[int]]]:
    enc = TokenCache(model)
    return [(enc.prompt(p), enc.answer(targets[i])) for i, q in enumerate(queries) for p in q.prompts]


def _train(model, train_queries, targets, *, lr, steps, epochs, batch_size, eval_fn, eval_every, seed,
           max_seconds, progress, trainable, weight_decay) -> SFTResult:
    if lr <= 0 or batch_size < 1 or eval_every < 1:
        raise ValueError(f"need lr > 0, batch_size >= 1, eval_every >= 1; got lr={lr}, batch_size={batch_size}, "
                         f"eval_every={eval_every}.")
    tg = _targets(model, train_queries, targets, batch_size=32)
    examples = _examples(model, train_queries, tg)
    if not examples:
        raise ValueError("train_queries has no prompts to train on.")
    per_epoch = -(-len(examples) // batch_size)
    total = steps if steps is not None else epochs * per_epoch
    params = _select(model, trainable)
    result = SFTResult(targets=tg, trainable=list(params))
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    pad, dev = pad_id(model), model_device(model)
    t_start, train_s, losses = time.perf_counter(), 0.0, []

    def evaluate(step: int) -> None:
        row = dict(step=step, train_seconds=train_s, elapsed_seconds=time.perf_counter() - t_start,
                   loss=float(sum(losses) / len(losses)) if losses else float("nan"))
        if eval_fn is not None:
            with torch.no_grad():
                row.update(eval_fn(model))
        result.history.append(row)
        losses.clear()
        if progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    evaluate(0)
    step, order = 0, []
    result.stopped = "steps"
    while step < total:
        if not order:
            order = torch.randperm(len(examples), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        t0 = time.perf_counter()
        plan = ScoringPlan()
        items = [plan.add(*examples[i], tag=k) for k, i in enumerate(idx)]
        rows = list(range(len(plan.rows)))
        tokens = pad_rows(plan.rows, pad, dev)
        with torch.enable_grad():
            logits = model(tokens)
            loss = -item_logprobs(logits, plan, rows, items).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_s += time.perf_counter() - t0
        losses.append(float(loss.detach()))
        step += 1
        result.steps, result.train_seconds = step, train_s
        if max_seconds is not None and train_s >= max_seconds:
            result.stopped = "max_seconds"
            break
        if step % eval_every == 0 and step < total:
            evaluate(step)
    if not result.history or result.history[-1]["step"] != step:
        evaluate(step)
    return result


@contextlib.contextmanager
def finetuned(
    model,
    train_queries: Sequence[Any],
    targets: Mapping[int, str] | Literal["majority", "gold"] = "majority",
    *,
    lr: float = 1e-5,
    steps: int | None = None,
    epochs: int = 1,
    batch_size: int = 16,
    eval_fn: Callable[[Any], dict[str, float]] | None = None,
    eval_every: int = 10,
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    trainable: Callable[[str], bool] | Sequence[str] | None = None,
    weight_decay: float = 0.0,
) -> Iterator[tuple[Any, SFTResult]]:
    """Fine-tune ``model`` in place and yield ``(model, result)``; on exit (also after an exception)
    every parameter, its ``requires_grad`` flag and its ``.grad`` are restored bit-exactly.

    ``targets``: ``"majority"`` (the unedited model's majority answer per query), ``"gold"``, or a
    dict query index -> answer. ``steps`` overrides ``epochs``. ``trainable``: None (all
    parameters), a predicate on clean parameter names (``model.layers.3.mlp.down_proj.weight``)
    or substrings of them; the others are frozen during training."""
    named = dict((clean_name(n), p) for n, p in model.original_model.named_parameters())
    saved = {n: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.detach().clone())
             for n, p in named.items()}
    chosen = set(_select(model, trainable))
    try:
        for n, p in named.items():
            p.requires_grad_(n in chosen)
        result = _train(model, train_queries, targets, lr=lr, steps=steps, epochs=epochs, batch_size=batch_size,
                        eval_fn=eval_fn, eval_every=eval_every, seed=seed, max_seconds=max_seconds,
                        progress=progress, trainable=trainable, weight_decay=weight_decay)
        yield model, result
    finally:
        with torch.no_grad():
            for n, p in named.items():
                data, flag, grad = saved[n]
                p.copy_(data)
                p.requires_grad_(flag)
                p.grad = grad


def finetune_consistency(
    model,
    train_queries: Sequence[Any],
    targets: Mapping[int, str] | Literal["majority", "gold"] = "majority",
    **kwargs: Any,
) -> SFTResult:
    """Fine-tune, record the history (see :class:`SFTResult`), and restore the original weights.

    Keyword arguments as :func:`finetuned` (``lr``, ``steps``/``epochs``, ``batch_size``,
    ``eval_fn``, ``eval_every``, ``seed``, ``max_seconds``, ``progress``, ``trainable``)."""
    with finetuned(model, train_queries, targets, **kwargs) as (_, result):
        return result
