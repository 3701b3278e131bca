"""The v* optimisation loop (:func:`editlens.rome.values.compute_vs`): Adam on one ``delta`` per fact.

Taught in: Chapter 3 (ROME, "the value" and "making it fast"); Chapters 4-5 add terms through
:class:`editlens.rome.values.LossTerm`, Chapter 5 reads shorter runs out of a long one (``also_steps``).

Several facts are optimised in one forward and one backward pass per step, each with its own ``delta``, Adam
state, loss, early stop (the rule: :mod:`editlens.rome.values`) and history: the facts' rows are padded to one
width and stacked (:func:`stack_batches`), the forward engine (:mod:`editlens.rome.v_forward`) runs them, the scored
positions of all facts are unembedded in one call (:func:`_unembed_scored`), the positions the terms declared are
gathered in one call per hook (:func:`_read_declared`), and each fact's terms see their own rows
(:func:`_fact_step`). After each step a fact's ``delta`` is projected back into the ball of radius
``clamp_norm_factor * ||v0||``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, cast

import torch
from jaxtyping import Float
from torch import Tensor

from editlens.data import RewriteRequest
from editlens.rome.hparams import ROMEHyperParams
from editlens.rome.keys import mlp_value_hook
from editlens.rome.v_forward import VForward
from editlens.rome.values import (
    FINAL_HOOK,
    KLTerm,
    LossTerm,
    VBatch,
    VContext,
    VResult,
    build_v_batch,
    check_terms,
    index_query,
    target_nll,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _scored_positions(batch: VBatch) -> tuple[Tensor, Tensor]:
    """(rows, positions) whose logits the built-in terms read: the target positions of the rewrite rows and the
    delta position of the KL rows."""
    dev = batch.tokens.device
    tp = batch.target_positions()
    rows = torch.arange(batch.n_rewrite, device=dev)[:, None].expand_as(tp).reshape(-1)
    kl = torch.arange(batch.n_rows, device=dev)[batch.kl_rows]
    return torch.cat([rows, kl]), torch.cat([tp.reshape(-1), batch.subject_idx[batch.kl_rows]])


def _unembed_scored(facts: Sequence[Any], resid_at: Callable[[Tensor, Tensor], Tensor],
                    unembed: Callable[[Tensor], Tensor]) -> list[tuple[Tensor, Tensor]]:
    """One unembedding for the scored positions of several facts (the unembedding's weights are the largest
    matrix of the model: read them once per step, not once per term and fact); a lookup table per fact.
    ``resid_at(rows, pos)``: the final residual stream at those positions of the stacked batch. The logits are
    split per fact (one backward node; each fact's lookups then index its own rows, not the whole batch's)."""
    for f in facts:
        if f.scored is None:  # the same every step: found once
            r, p = _scored_positions(f.ctx.batch)
            table = torch.full(tuple(f.ctx.batch.tokens.shape), -1, dtype=torch.long, device=r.device)
            table[r, p] = torch.arange(int(r.shape[0]), device=r.device)
            f.scored = (r + f.rows.start, p, table)
    rows = torch.cat([f.scored[0] for f in facts])
    pos = torch.cat([f.scored[1] for f in facts])
    logits = unembed(resid_at(rows, pos)).split([int(f.scored[0].shape[0]) for f in facts])
    return [(f.scored[2], chunk) for f, chunk in zip(facts, logits)]


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients inside (faster backward; only ``delta`` learns); restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


@dataclass
class _Fact:
    """One request's share of a batched v* optimisation."""

    ctx: VContext
    rows: slice  # its rows in the stacked batch
    active: list[LossTerm]
    skipped: list[str]
    builtin: list[LossTerm]
    v0: Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    done: bool = False
    earlier: dict[int, VResult] = field(default_factory=dict)  # also_steps' results, taken during the run
    scored: tuple[Tensor, Tensor, Tensor] | None = None  # scored (rows in the stack, positions), lookup table


def padded_batch(batch: VBatch, width: int) -> VBatch:
    """The same rows, right-padded to ``width`` positions by repeating each row's last token (padding is never
    attended to by a real position), with explicit lengths and delta rows."""
    t = batch.tokens
    if t.shape[1] < width:
        t = torch.cat([t, t[:, -1:].expand(-1, width - t.shape[1])], dim=1)
    lengths = batch.lengths if batch.lengths is not None else torch.full((batch.n_rows,), batch.tokens.shape[1],
                                                                          device=t.device)
    delta_rows = batch.delta_rows if batch.delta_rows is not None else torch.ones(batch.n_rows, dtype=torch.bool,
                                                                                  device=t.device)
    return dataclasses.replace(batch, tokens=t, lengths=lengths, delta_rows=delta_rows)


def stack_batches(batches: Sequence[VBatch]) -> VBatch:
    """All facts' rows (already padded to one width) in one batch (only the fields the forward pass reads)."""
    lengths = cast(list[Tensor], [b.lengths for b in batches])  # padded_batch sets both
    delta_rows = cast(list[Tensor], [b.delta_rows for b in batches])
    return VBatch(tokens=torch.cat([b.tokens for b in batches]), subject_idx=torch.cat([b.subject_idx for b in batches]),
                  last_prompt_idx=torch.cat([b.last_prompt_idx for b in batches]), target_ids=batches[0].target_ids,
                  n_rewrite=0, n_kl=0, lengths=torch.cat(lengths), delta_rows=torch.cat(delta_rows))


def optimise(model: TransformerBridge, reqs: Sequence[RewriteRequest], layer: int, hparams: ROMEHyperParams,
             extra_losses: Sequence[Sequence[LossTerm]], also_steps: Sequence[int], verbose: bool) -> list[VResult]:
    """v* of every request, optimised together (:func:`editlens.rome.values.compute_vs`, which checks the
    arguments: ``extra_losses`` has one list per request, ``also_steps`` is sorted and below the step limit)."""
    facts = _facts(model, reqs, layer, hparams, extra_losses)
    stacked = stack_batches([f.ctx.batch for f in facts])
    hook_names = [h for f in facts for t in (*f.builtin, *f.active) for h in t.hook_names]
    fwd = VForward(model, stacked, layer, hook_names, fast=getattr(hparams, "v_fast_forward", True),
                    reuse_prefix=getattr(hparams, "v_reuse_prefix", True))
    mlp_hook = mlp_value_hook(layer)
    _start(facts, fwd, mlp_hook)
    _descend(model, facts, fwd, mlp_hook, hparams, also_steps, verbose)
    out = []
    for f in facts:
        res = _result(f)
        # limits the run never reached (it stopped early before them) end where it ended
        res.earlier = {n: f.earlier[n] if n in f.earlier else _result(f) for n in also_steps}
        out.append(res)
    return out


def _facts(model: TransformerBridge, reqs: Sequence[RewriteRequest], layer: int, hparams: ROMEHyperParams,
           extra_losses: Sequence[Sequence[LossTerm]]) -> list[_Fact]:
    """One :class:`_Fact` per request: its terms checked (a term of weight 0 is skipped), its rows (with those its
    terms add) padded to the widest fact's width, its ``delta`` at 0 (in the weights' dtype) and its place in the
    stacked batch."""
    d_model = model.cfg.d_model
    dtype = next(model.parameters()).dtype
    facts: list[_Fact] = []
    start = 0
    for req, terms in zip(reqs, extra_losses):
        check_terms(terms)
        active = [t for t in terms if getattr(t, "weight", 1.0) != 0]
        skipped = [t.name for t in terms if getattr(t, "weight", 1.0) == 0]
        base = build_v_batch(model, req, hparams)
        delta = torch.zeros(d_model, device=base.tokens.device, dtype=dtype, requires_grad=True)
        ctx = VContext(model=model, request=req, layer=layer, hparams=hparams, batch=base, delta=delta)
        extra = [(t.name, list(t.extra_rows(ctx))) for t in active]
        if any(rows for _, rows in extra):
            ctx.batch = build_v_batch(model, req, hparams, extra=extra)
        facts.append(_Fact(ctx=ctx, rows=slice(start, start + ctx.batch.n_rows), active=active, skipped=skipped,
                           builtin=[KLTerm(hparams.kl_factor)] if hparams.kl_prompt else []))
        start += ctx.batch.n_rows
    width = max(int(f.ctx.batch.tokens.shape[1]) for f in facts)
    for f in facts:
        f.ctx.batch = padded_batch(f.ctx.batch, width)
    return facts


def _start(facts: Sequence[_Fact], fwd: VForward, mlp_hook: str) -> None:
    """The pass at delta = 0: each fact's v0 (the MLP output at its bare prompt's subject), ``ctx.initial``, the
    scored logits at delta = 0; then the terms' ``prepare`` and declared positions."""
    stacked = fwd.batch
    dev = stacked.tokens.device
    v0_rows: dict[str, Tensor] = {}

    def grab_v0(act: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
        v0_rows["v0"] = act[torch.arange(act.shape[0], device=dev), stacked.subject_idx].detach().clone()
        return act

    initial = fwd.initial_pass([(mlp_hook, grab_v0)])
    for f in facts:
        f.v0 = v0_rows["v0"][f.rows.start]  # the fact's row 0: the bare prompt
        f.ctx._unembed = fwd.unembed
        f.ctx.initial = {name: act[f.rows] for name, act in initial.items()}
    with torch.no_grad():
        resid0_at = lambda r, p: initial[FINAL_HOOK][r, p]  # noqa: E731
        for f, scored in zip(facts, _unembed_scored(facts, resid0_at, fwd.unembed)):
            f.ctx._scored_initial = scored
    for f in facts:
        for term in f.active:
            term.prepare(f.ctx)
        _declare_positions(f)


def _descend(model: TransformerBridge, facts: Sequence[_Fact], fwd: VForward, mlp_hook: str, hparams: ROMEHyperParams,
             also_steps: Sequence[int], verbose: bool) -> None:
    """Adam on every fact's ``delta`` until each has stopped (early, or at ``v_num_grad_steps``); a finished fact's
    ``delta`` no longer moves. After each step ``delta`` is clamped to ``clamp_norm_factor * ||v0||``."""
    dev = fwd.batch.tokens.device
    fact_of_row = torch.cat([torch.full((f.ctx.batch.n_rows,), i, device=dev) for i, f in enumerate(facts)])
    opt = torch.optim.Adam([f.ctx.delta for f in facts], lr=hparams.v_lr)
    with frozen_parameters(model):
        for step in range(hparams.v_num_grad_steps):
            live = [f for f in facts if not f.done]
            if not live:
                break
            opt.zero_grad(set_to_none=True)
            row_delta = torch.stack([f.ctx.delta for f in facts])[fact_of_row]
            to_minimise = _step(live, fwd, mlp_hook, row_delta, step, hparams, also_steps, verbose)
            if not to_minimise:
                break
            cast(Tensor, sum(to_minimise)).backward()  # a non-empty list of tensors
            for f in facts:  # the stacked row_delta gives every delta a (zero) gradient: Adam's momentum would
                if f.done:   # still move a finished one
                    f.ctx.delta.grad = None
            opt.step()
            with torch.no_grad():
                for f in live:
                    assert f.v0 is not None  # set by the delta = 0 pass
                    max_norm = hparams.clamp_norm_factor * f.v0.norm()
                    if not f.done and f.ctx.delta.norm() > max_norm:
                        f.ctx.delta.mul_(max_norm / f.ctx.delta.norm())


def _step(live: Sequence[_Fact], fwd: VForward, mlp_hook: str, row_delta: Float[Tensor, "batch d_model"], step: int,
          hparams: ROMEHyperParams, also_steps: Sequence[int], verbose: bool) -> list[Tensor]:
    """One forward pass of the facts still optimised and each one's loss (its history, its ``also_steps`` result,
    whether it stops): the losses to minimise, of the facts that go on."""
    logits = fwd.step(mlp_hook, row_delta, rows=[f.rows for f in live])
    acts = _StepActs(fwd)  # full shape, put together only for a term that reads ctx.acts
    if logits is None:
        resid_at = lambda r, p: fwd.at(FINAL_HOOK, r, p)  # noqa: E731
        for f, scored in zip(live, _unembed_scored(live, resid_at, fwd.unembed)):
            f.ctx._scored = scored
    _read_declared(live, fwd)
    to_minimise: list[Tensor] = []
    for f in live:
        loss, stop = _fact_step(f, step, acts, logits, hparams, verbose)
        if step + 1 in also_steps:  # a run limited to step + 1 steps ends here, delta not updated
            f.earlier[step + 1] = _result(f)
        if stop or step == hparams.v_num_grad_steps - 1:
            f.done = True
        else:
            to_minimise.append(loss)
    return to_minimise


class _StepActs(Mapping):
    """One step's activations by hook name, at full shape, put together on first use (:meth:`VForward.full`)."""

    def __init__(self, fwd: VForward):
        self.fwd = fwd

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.fwd.initial:
            raise KeyError(name)
        return self.fwd.full(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.fwd.initial)

    def __len__(self) -> int:
        return len(self.fwd.initial)


class _RowsOf(Mapping):
    """One fact's rows of a mapping of activations (sliced on first access)."""

    def __init__(self, acts: Mapping[str, Tensor], rows: slice):
        self.acts, self.rows = acts, rows
        self.cache: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.cache:
            self.cache[name] = self.acts[name][self.rows]
        return self.cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.acts)

    def __len__(self) -> int:
        return len(self.acts)


def _declare_positions(f: _Fact) -> None:
    """The positions the fact's terms read (:meth:`LossTerm.positions`) and the activations there at delta = 0."""
    for term in f.active:
        got = term.positions(f.ctx)
        if got is None:
            continue
        rows, pos = (torch.as_tensor(x, device=f.ctx.batch.tokens.device) for x in got)
        for name in term.hook_names:
            old = f.ctx._positions.get(name)
            if old is not None and not (torch.equal(old[0], rows) and torch.equal(old[1], pos)):
                raise ValueError(f"Two loss terms read hook {name!r} at different positions. Fix: read it through "
                                 "ctx.acts (positions() returning None) in one of them.")
            f.ctx._positions[name] = (rows, pos)
            f.ctx._read_initial[name] = index_query(f.ctx.initial[name], name, rows, pos)


def _read_declared(facts: Sequence[_Fact], fwd: VForward) -> None:
    """This step's activations at every fact's declared positions: one gather per hook for all facts, split per
    fact (ctx.at)."""
    names = dict.fromkeys(n for f in facts for n in f.ctx._positions)
    for f in facts:
        f.ctx._read = {}
    for name in names:
        owners = [f for f in facts if name in f.ctx._positions]
        rows = torch.cat([f.ctx._positions[name][0].reshape(-1) + f.rows.start for f in owners])
        pos = torch.cat([f.ctx._positions[name][1].reshape(-1) for f in owners])
        sizes = [f.ctx._positions[name][0].numel() for f in owners]
        for f, got in zip(owners, fwd.at(name, rows, pos).split(sizes)):
            f.ctx._read[name] = got.reshape(*f.ctx._positions[name][0].shape, *got.shape[1:])


def _result(f: _Fact) -> VResult:
    """The fact's result as it stands now (copies: later steps do not change it)."""
    d = f.ctx.delta.detach().clone()
    assert f.v0 is not None  # set by the delta = 0 pass
    return VResult(v_star=f.v0 + d, v0=f.v0, delta=d, history=[dict(h) for h in f.history])


def _fact_step(f: _Fact, step: int, acts: Mapping[str, Tensor], logits: Tensor | None, hparams: ROMEHyperParams,
               verbose: bool) -> tuple[Tensor, bool]:
    """One fact's loss at this step, recorded in its history; and whether it stops here."""
    ctx, batch, delta = f.ctx, f.ctx.batch, f.ctx.delta
    assert f.v0 is not None  # set by the delta = 0 pass
    ctx.step = step
    ctx.acts = _RowsOf(acts, f.rows)
    ctx._logits = logits[f.rows] if logits is not None else None
    ctx.resid_final = None  # put together from ctx.acts if a term needs it at full shape
    nll = target_nll(lambda x: torch.log_softmax(x.float(), -1), ctx.logits_at, batch)
    loss_nll = nll.mean()
    terms: dict[str, Tensor] = {"nll": loss_nll}
    for term in f.builtin:
        terms[term.name] = term(ctx)
    terms["weight_decay"] = hparams.v_weight_decay * (delta.norm() / f.v0.norm() ** 2)
    extra_values: dict[str, Tensor] = {}
    for term in f.active:
        value = term(ctx)
        if not isinstance(value, Tensor):
            value = torch.as_tensor(value, dtype=loss_nll.dtype, device=loss_nll.device)
        if value.numel() != 1:
            raise ValueError(f"Loss term {term.name!r} returned a tensor of shape {tuple(value.shape)}. "
                             "Fix: reduce it to a scalar (e.g. .mean() or .sum()).")
        extra_values[term.name] = value.reshape(())
    terms.update(extra_values)
    loss = cast(Tensor, sum(terms.values()))  # nll is always there: a tensor
    rec = {k: float(v.detach()) for k, v in terms.items()}
    rec.update({name: 0.0 for name in f.skipped})
    rec.update(loss=float(loss.detach()), p_target=float(torch.exp(-nll.detach()).mean()), step=step,
               delta_norm=float(delta.detach().norm()))
    f.history.append(rec)
    if verbose:
        print(" ".join(f"{k}={v:.4g}" for k, v in rec.items()))
    return loss, _should_stop(hparams, loss, loss_nll, extra_values, f.active)


def _should_stop(hparams: ROMEHyperParams, loss: Tensor, loss_nll: Tensor, extra: dict[str, Tensor],
                 terms: Sequence[LossTerm]) -> bool:
    """The early-stopping rule (see the module docstring)."""
    rule = hparams.v_early_stop_on
    if rule == "loss":
        watched = loss
    elif rule == "nll":
        watched = loss_nll
    else:  # "nll+extra"
        watched = loss_nll + sum(extra.values()) if extra else loss_nll
    if not watched.item() < hparams.v_loss_early_stop:
        return False
    for term in terms:
        if term.stop_below is not None and not extra[term.name].item() < term.stop_below:
            return False
    return True
