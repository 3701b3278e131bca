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

Parameter-efficient variant: ``lora=LoraSpec(...)`` trains LoRA adapters (``peft``) on the
attention projections instead, with the same loop, targets and checkpoint selection. The bridge
wraps every HF ``nn.Linear`` in a ``LinearBridge`` (``q_proj._original_component``); the adapters
replace that inner Linear, so the bridge's forward (and its hooks) runs through them.
:func:`lora_adapters` removes them on exit and puts the original Linear objects back.
``restore_best=metric`` ends training at the checkpoint with the best ``eval_fn`` metric
(validation), so the yielded model is the selected one, not the last step.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import pandas as pd
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
    n_trainable: int = 0
    method: str = "full"
    restored_step: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # what decides the trajectory (see ``first_steps``)

    def first_steps(self, steps: int) -> "SFTResult":
        """This run as it stood after ``steps`` steps: its history rows up to that step.

        Training is deterministic and the evaluations do not touch it, so a run of ``steps`` steps
        with the same :attr:`settings` would have produced exactly these rows (the time included).
        The step must be one the run evaluated (a multiple of ``eval_every``, or its last step).

        Taught in: Chapter 2 (the cost curve's full-size point reuses the main fine-tuning run)."""
        evaluated = [r["step"] for r in self.history]
        if steps not in evaluated:
            raise ValueError(f"this run evaluated steps {evaluated}, not {steps}. Fix: ask for one of them, or "
                             "train a run that evaluates at that step.")
        rows = [dict(r) for r in self.history if r["step"] <= steps]
        out = SFTResult(history=rows, steps=steps, train_seconds=rows[-1]["train_seconds"], stopped="steps",
                        targets=dict(self.targets), trainable=list(self.trainable), n_trainable=self.n_trainable,
                        method=self.method, settings=dict(self.settings, steps=steps))
        return out

    @property
    def seconds_per_step(self) -> float:
        """Optimisation seconds per step (evaluation excluded)."""
        return self.train_seconds / self.steps if self.steps else float("nan")

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


def majority_targets(answers: pd.DataFrame) -> dict[int, str]:
    """Query index -> the query's majority answer, from :func:`editlens.consistency.model_answers`'
    frame: the ``"majority"`` targets, for a caller that already has the unedited model's answers.

    Taught in: Chapter 2 (the training answers are scored once and reused as SFT's targets)."""
    per_query = query_consistency(answers)
    return {int(q): str(m) for q, m in zip(per_query["query_id"], per_query["majority"])}


def _targets(model, queries: Sequence[Any], targets: Mapping[int, str] | str, batch_size: int) -> dict[int, str]:
    if isinstance(targets, str):
        if targets == "gold":
            return {i: q.object for i, q in enumerate(queries)}
        if targets == "majority":
            return majority_targets(model_answers(model, queries, batch_size=batch_size))
        raise ValueError(f"targets must be 'majority', 'gold' or a dict query index -> answer, got {targets!r}.")
    missing = [i for i in range(len(queries)) if i not in targets]
    if missing:
        raise ValueError(f"targets has no answer for query indices {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                         "keys are indices into train_queries.")
    return {i: str(targets[i]) for i in range(len(queries))}


def _examples(model, queries: Sequence[Any], targets: dict[int, str]) -> list[tuple[list[int], list[int]]]:
    enc = TokenCache(model)
    return [(enc.prompt(p), enc.answer(targets[i])) for i, q in enumerate(queries) for p in q.prompts]


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters for :func:`finetuned`: rank ``r``, scale ``alpha / r``, on the HF Linear layers
    whose name ends with one of ``target`` (inside the bridge's wrappers). ``seed`` draws the A
    matrices (B starts at zero, so the adapted model starts equal to the base model).

    Taught in: Chapter 2 (the parameter-efficient baseline)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target: tuple[str, ...] = ("q_proj", "v_proj", "o_proj")
    seed: int = 0

    def __post_init__(self) -> None:
        if self.r < 1 or not self.target or self.dropout < 0 or self.dropout >= 1:
            raise ValueError(f"LoraSpec needs r >= 1, a non-empty target and 0 <= dropout < 1; got r={self.r}, "
                             f"target={self.target!r}, dropout={self.dropout}. Fix: e.g. LoraSpec(r=8).")


def _lora_base_linears(hf: nn.Module, target: Sequence[str]) -> list[str]:
    """Module names (in ``hf``) of the ``nn.Linear`` layers LoRA should wrap: the inner Linear of a
    bridge wrapper named ``...{target}._original_component``, or a bare ``...{target}`` Linear."""
    names = []
    for name, mod in hf.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        owner = name.removesuffix("._original_component")
        if owner.rsplit(".", 1)[-1] in target:
            names.append(name)
    return names


@contextlib.contextmanager
def lora_adapters(model, spec: LoraSpec = LoraSpec()) -> Iterator[dict[str, nn.Parameter]]:
    """Insert LoRA adapters (``peft.inject_adapter_in_model``) into ``model.original_model`` and
    yield ``{clean name: parameter}`` of the adapters; on exit (also after an exception) the
    adapters are removed, the original Linear modules put back, and every base parameter's value
    and ``requires_grad`` flag restored.

    Taught in: Chapter 2."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    hf = model.original_model
    names = _lora_base_linears(hf, spec.target)
    if not names:
        linears = [n for n, m in hf.named_modules() if isinstance(m, nn.Linear)][:3]
        raise ValueError(f"LoraSpec.target={spec.target!r} matches no Linear layer; names look like {linears}. "
                         "Fix: pass the last part of such names, e.g. ('q_proj', 'v_proj').")
    if any(isinstance(m, LoraLayer) for m in hf.modules()):
        raise ValueError("the model already carries LoRA adapters; leave the enclosing lora_adapters/finetuned block first.")
    flags = {n: p.requires_grad for n, p in hf.named_parameters()}
    attrs = set(vars(hf))
    # full module names: peft matches a list entry by equality (or dotted suffix)
    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft says int; it uses alpha / r
                     lora_dropout=spec.dropout, target_modules=names)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            inject_adapter_in_model(cfg, hf)
        adapters = {clean_name(n): p for n, p in hf.named_parameters() if "lora_" in n}
        yield adapters
    finally:
        for name, mod in list(hf.named_modules()):
            if isinstance(mod, LoraLayer):
                parent, _, child = name.rpartition(".")
                setattr(hf.get_submodule(parent) if parent else hf, child, mod.get_base_layer())
        for extra in set(vars(hf)) - attrs:
            delattr(hf, extra)
        for n, p in hf.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])


def _train(model, train_queries, targets, *, lr, steps, epochs, batch_size, eval_fn, eval_every, seed,
           max_seconds, progress, trainable, weight_decay, restore_best=None,
           initial_eval: Mapping[str, float] | None = None) -> SFTResult:
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
    result = SFTResult(targets=tg, trainable=list(params), n_trainable=sum(p.numel() for p in params.values()),
                       settings=dict(lr=lr, batch_size=batch_size, seed=seed, weight_decay=weight_decay,
                                     eval_every=eval_every, steps=total, max_seconds=max_seconds,
                                     n_examples=len(examples)))
    if restore_best is not None and eval_fn is None:
        raise ValueError(f"restore_best={restore_best!r} needs an eval_fn that returns that metric (on validation).")
    if initial_eval is not None and eval_fn is None:
        raise ValueError("initial_eval stands in for eval_fn at step 0, but no eval_fn was given. Fix: pass eval_fn "
                         "too, or drop initial_eval.")
    best: dict[str, Any] = {}
    # fused: one kernel per step over all tensors (on a CPU a third of the per-tensor loop's time: 0.17 s
    # against 0.55 s per step for the embedded model's 135M float32 weights; benchmarks/bench_kernels.py)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                for p in params.values())
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay, fused=fused)
    gen = torch.Generator().manual_seed(seed)
    pad, dev = pad_id(model), model_device(model)
    t_start, train_s = time.perf_counter(), 0.0
    losses: list[float] = []

    def evaluate(step: int) -> None:
        row = dict(step=step, train_seconds=train_s, elapsed_seconds=time.perf_counter() - t_start,
                   loss=float(sum(losses) / len(losses)) if losses else float("nan"))
        if step == 0 and initial_eval is not None:
            row.update(initial_eval)
        elif eval_fn is not None:
            with torch.no_grad():
                row.update(eval_fn(model))
        result.history.append(row)
        losses.clear()
        if restore_best is not None:
            if restore_best not in row:
                raise ValueError(f"restore_best={restore_best!r} but eval_fn returned {sorted(row)}; "
                                 "Fix: return that metric from eval_fn.")
            if not best or row[restore_best] > best["value"]:  # earliest on ties, as SFTResult.best
                best.update(value=row[restore_best], step=step,
                            params={n: p.detach().clone() for n, p in params.items()})
        if progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    evaluate(0)
    step = 0
    order: list[int] = []
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
            if fused:  # the fused kernel writes the weights without bumping their version counters, which
                for p in params.values():  # tell editlens.precision's bf16 weight copies to be made again
                    torch.autograd.graph.increment_version(p)
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
    if restore_best is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(best["params"][n])
        result.restored_step = int(best["step"])
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
    lora: LoraSpec | None = None,
    restore_best: str | None = None,
    initial_eval: Mapping[str, float] | None = None,
) -> Iterator[tuple[Any, SFTResult]]:
    """Fine-tune ``model`` in place and yield ``(model, result)``; on exit (also after an exception)
    every parameter, its ``requires_grad`` flag and its ``.grad`` are restored bit-exactly.

    ``targets``: ``"majority"`` (the unedited model's majority answer per query), ``"gold"``, or a
    dict query index -> answer. ``steps`` overrides ``epochs``. ``trainable``: None (all
    parameters), a predicate on clean parameter names (``model.layers.3.mlp.down_proj.weight``)
    or substrings of them; the others are frozen during training.

    ``lora``: train LoRA adapters (:class:`LoraSpec`) instead of the model's own parameters
    (``trainable`` must then be None); the adapters are removed on exit. ``restore_best``: a metric
    of ``eval_fn`` (higher is better); the yielded model is the checkpoint with its best value
    (``result.restored_step``), not the last step. ``initial_eval``: ``eval_fn``'s metrics for the
    model before training when the caller has already measured them (for example the unsteered
    validation scores); the step-0 row takes them instead of evaluating the same model again.
    Training starts from the unchanged model (LoRA's B matrices start at zero), so they are the
    step-0 values."""
    if lora is not None and trainable is not None:
        raise ValueError("pass either lora=LoraSpec(...) (adapters are trained) or trainable=... (model parameters "
                         "are trained), not both.")
    named = dict((clean_name(n), p) for n, p in model.original_model.named_parameters())
    saved = {n: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.detach().clone())
             for n, p in named.items()}
    adapters: contextlib.AbstractContextManager[dict[str, nn.Parameter]] = (
        lora_adapters(model, lora) if lora is not None else contextlib.nullcontext({}))
    try:
        with adapters as lora_params:
            select = (lambda n: n in lora_params) if lora is not None else trainable
            chosen = set(_select(model, select))
            for n, p in model.original_model.named_parameters():
                p.requires_grad_(clean_name(n) in chosen)
            result = _train(model, train_queries, targets, lr=lr, steps=steps, epochs=epochs, batch_size=batch_size,
                            eval_fn=eval_fn, eval_every=eval_every, seed=seed, max_seconds=max_seconds,
                            progress=progress, trainable=select, weight_decay=weight_decay,
                            restore_best=restore_best, initial_eval=initial_eval)
            result.settings["lora"] = lora
            if lora is not None:
                result.method = f"lora(r={lora.r})"
            elif trainable is not None:
                result.method = "selected"
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
    ``eval_fn``, ``eval_every``, ``seed``, ``max_seconds``, ``progress``, ``trainable``, ``lora``,
    ``restore_best``, ``initial_eval``)."""
    with finetuned(model, train_queries, targets, **kwargs) as (_, result):
        return result
