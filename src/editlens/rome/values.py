"""v*: the MLP output that makes the model say the new object, found by gradient descent.

Taught in: Chapter 3 (ROME, "the value"). Chapter 4 (STEAM) and Chapter 5 (SADR) add loss terms
to the same optimisation through :class:`LossTerm`, without copying this code.

One vector ``delta`` is added to the MLP output of the edit layer at the subject's last token
of every rewrite prompt (the prompt inside each context template). The loss is

    mean NLL of target_new (teacher-forced over its tokens)                 "nll"
    + kl_factor * KL(p_edited || p_unedited) of the next token after "{subject} is a"   "kl"
    + v_weight_decay * ||delta|| / ||v0||^2                                "weight_decay"
    + sum of the extra terms                                               (each under its ``name``)

minimised with Adam; ``delta`` is projected back into the ball of radius clamp_norm_factor * ||v0||.
Then v* = v0 + delta, v0 being the unedited MLP output on the bare prompt.

Early stopping (``hparams.v_early_stop_on``, threshold ``hparams.v_loss_early_stop``) stops when

- ``"loss"``: the whole loss is below the threshold (ROME's code);
- ``"nll"``: the target NLL alone is below it (extra terms are ignored unless they set ``stop_below``);
- ``"nll+extra"``: NLL + the sum of the extra terms is below it, so a term that is still large keeps the
  optimisation going (the SmolLM2 default: with no extra term it is exactly ``"nll"``);

and, whatever the rule, every extra term with a ``stop_below`` threshold is below its own threshold.
The last step (``v_num_grad_steps``) always stops.

How a step runs (the same numbers as a plain forward, up to float noise; ``hparams.v_fast_forward``):
the layers below the edit layer do not depend on ``delta``, so one pass at ``delta = 0`` (no gradients)
records the residual stream entering block ``layer``, the arguments every later block is called with,
and every hooked activation (``ctx.initial``). Each step then runs blocks ``layer..n_layers-1`` and the
final norm only, and unembeds only the positions that are scored (the unembedding, 49,152 x 576 for
SmolLM2, is a fifth of a forward pass). Hooks inside the blocks that run still fire; a hook below the
edit layer did not run, and ``ctx.acts`` holds its (unchanged) ``delta = 0`` value.

Writing a loss term (Chapters 4-5)::

    class AttentionKL(LossTerm):
        name = "attn_kl"
        def __init__(self, layers, weight):
            self.hook_names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
            self.weight = weight
        def __call__(self, ctx):
            ...  # ctx.acts[name]: this step's activations WITH gradients;
                 # ctx.initial[name]: the same at delta = 0, detached; ctx.batch: rows, lengths, positions;
                 # ctx.logits_at(rows, pos): logits where you need them (ctx.logits: all, slow)
            return self.weight * loss  # a scalar tensor, already weighted

The term declares the hooks it needs; every step it receives their activations of the edited
run with gradients flowing to ``delta``. Its rows of its own (``extra_rows``) run in the same
forward pass after the KL rows; ``ctx.batch.rows_of(term.name)`` is their slice. A term whose
``weight`` is 0 is skipped entirely (no hooks, no rows), so ROME is reproduced bit for bit; a term
that returns ``0 * x`` without rows also leaves ROME's v* bit-identical.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from editlens.rome.hparams import ROMEHyperParams
from editlens.rome.keys import context_templates, encode, fill_template, pad_batch, subject_last_index
from editlens.rome.requests import RewriteRequest, as_request, with_leading_space

FINAL_HOOK = "ln_final.hook_out"
"""The final residual stream after the last norm (what the unembedding reads)."""

EARLY_STOP_RULES = ("loss", "nll", "nll+extra")
RESERVED_NAMES = frozenset({"nll", "kl", "weight_decay", "loss", "p_target", "step", "delta_norm"})
"""Names built-in terms and the history already use; an extra term may not take them."""


@dataclass
class VBatch:
    """The rows of one v* forward pass: the rewrite prompts (each + target tokens but the last), then the KL
    prompts, then the rows extra terms add (``term_rows``). Right-padded: row ``i`` is real up to ``lengths[i]``."""

    tokens: Int[Tensor, "batch pos"]
    subject_idx: Int[Tensor, "batch"]  # subject's last token, where delta is added (if delta_rows[i])
    last_prompt_idx: Int[Tensor, "batch"]  # last prompt token (predicts the first target token)
    target_ids: Int[Tensor, "n_target"]
    n_rewrite: int
    n_kl: int
    lengths: Int[Tensor, "batch"] | None = None  # real tokens per row (None: no padding anywhere)
    delta_rows: Bool[Tensor, "batch"] | None = None  # rows that get delta (None: all)
    term_rows: dict[str, slice] = field(default_factory=dict)  # extra term name -> its rows

    @property
    def rewrite_rows(self) -> slice:
        return slice(0, self.n_rewrite)

    @property
    def kl_rows(self) -> slice:
        return slice(self.n_rewrite, self.n_rewrite + self.n_kl)

    @property
    def n_rows(self) -> int:
        return int(self.tokens.shape[0])

    def rows_of(self, name: str) -> slice:
        """The rows a term added with :meth:`LossTerm.extra_rows` (an empty slice if it added none)."""
        if name not in self.term_rows:
            end = self.n_rows
            return slice(end, end)
        return self.term_rows[name]

    @property
    def attention_mask(self) -> Bool[Tensor, "batch pos"]:
        """True at the real (not padding) positions of each row."""
        lengths = self.lengths if self.lengths is not None else torch.full((self.n_rows,), self.tokens.shape[1])
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return pos[None, :] < lengths.to(self.tokens.device)[:, None]

    def target_positions(self) -> Int[Tensor, "n_rewrite n_target"]:
        """Positions whose logits predict the target tokens in each rewrite row."""
        n_t = self.target_ids.shape[0]
        return self.last_prompt_idx[: self.n_rewrite, None] + torch.arange(n_t, device=self.tokens.device)[None]


@dataclass
class VContext:
    """What a :class:`LossTerm` sees at each step (and in ``prepare``/``extra_rows``)."""

    model: Any
    request: RewriteRequest
    layer: int
    hparams: ROMEHyperParams
    batch: VBatch
    delta: Float[Tensor, "d_model"]
    step: int = 0
    acts: dict[str, Tensor] = field(default_factory=dict)  # this step, with gradients
    initial: dict[str, Tensor] = field(default_factory=dict)  # at delta = 0 (unedited), detached; filled before prepare
    resid_final: Float[Tensor, "batch pos d_model"] | None = None  # this step's ln_final output (with gradients)
    _logits: Tensor | None = field(default=None, repr=False)
    _unembed: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Logits of final-norm residual vectors (any leading shape)."""
        if self._unembed is None:
            raise RuntimeError("No unembedding attached to this context (compute_v attaches one).")
        return self._unembed(resid)

    def logits_at(self, rows: Tensor | slice, pos: Tensor, *, initial: bool = False) -> Float[Tensor, "... d_vocab"]:
        """This step's logits (or, with ``initial=True``, those at delta = 0) at ``(rows, pos)`` (advanced indexing).

        Only these positions are unembedded: cheap, unlike :attr:`logits`."""
        if initial:
            return self.unembed(self.initial[FINAL_HOOK][rows, pos])
        if self._logits is not None:
            return self._logits[rows, pos]
        if self.resid_final is None:
            raise RuntimeError("No forward pass has run yet: logits exist from the first step on.")
        return self.unembed(self.resid_final[rows, pos])

    @property
    def logits(self) -> Float[Tensor, "batch pos d_vocab"] | None:
        """All of this step's logits (computed on first use: a full unembedding; prefer :meth:`logits_at`)."""
        if self._logits is None and self.resid_final is not None:
            self._logits = self.unembed(self.resid_final)
        return self._logits


class LossTerm:
    """An extra term of the v* loss (Chapters 4-5). Subclass it: set ``name`` (unique, not a built-in name)
    and ``hook_names``, implement ``__call__``; optionally ``prepare``, ``extra_rows``, ``stop_below``."""

    name: str = "extra"
    hook_names: Sequence[str] = ()
    weight: float = 1.0  # the term applies it itself; compute_v only reads it to skip a term whose weight is 0
    stop_below: float | None = None  # if set, early stopping also needs this term's value below it

    def extra_rows(self, ctx: VContext) -> Sequence[tuple[Sequence[int], int | None]]:
        """Rows of its own to run in the same forward pass: ``(token ids with BOS, index where delta is added or
        None)``. Called once, before the first pass (``ctx.batch`` then holds the rewrite and KL rows only)."""
        return ()

    def prepare(self, ctx: VContext) -> None:
        """Called once before the first step; ``ctx.initial`` is filled, ``ctx.acts`` still empty."""

    def __call__(self, ctx: VContext) -> Float[Tensor, ""]:
        raise NotImplementedError


class KLTerm(LossTerm):
    """ROME's essence term: kl_factor * KL(edited || unedited) of the next token at the subject's last token of the
    KL prompts. Uses ``ctx.initial`` like any other term (Chapter 3)."""

    name = "kl"
    hook_names = (FINAL_HOOK,)

    def __init__(self, kl_factor: float):
        self.weight = kl_factor

    def __call__(self, ctx: VContext) -> Float[Tensor, ""]:
        rows = ctx.batch.kl_rows
        idx = torch.arange(ctx.batch.n_rows, device=ctx.batch.tokens.device)[rows]
        pos = ctx.batch.subject_idx[rows]
        lp = torch.log_softmax(ctx.logits_at(idx, pos).float(), -1)
        lp0 = torch.log_softmax(ctx.logits_at(idx, pos, initial=True).float(), -1)
        return self.weight * F.kl_div(lp0, lp, log_target=True, reduction="batchmean")


@dataclass
class VResult:
    """Result of :func:`compute_v`."""

    v_star: Float[Tensor, "d_model"]
    v0: Float[Tensor, "d_model"]
    delta: Float[Tensor, "d_model"]
    history: list[dict[str, float]]

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


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


def build_v_batch(model: Any, request: RewriteRequest, hparams: ROMEHyperParams,
                  templates: Sequence[str] | None = None,
                  extra: Sequence[tuple[str, Sequence[tuple[Sequence[int], int | None]]]] = ()) -> VBatch:
    """Token rows for the v* optimisation: rewrite prompts in every context template, then ``kl_prompt``, then
    ``extra``: ``(term name, [(token ids, delta index or None), ...])`` per term."""
    if templates is None:
        templates = context_templates(model, hparams)
        if hparams.v_num_prefixes is not None:
            templates = templates[: 1 + hparams.v_num_prefixes]
    target_ids = encode(model, with_leading_space(request.target_new), bos=False)
    seqs, sub, last, has_delta = [], [], [], []
    for t in templates:
        ids, i = subject_last_index(model, fill_template(t, request.prompt), request.subject)
        seqs.append(ids + target_ids[:-1])
        sub.append(i)
        last.append(len(ids) - 1)
        has_delta.append(True)
    n_rewrite = len(seqs)
    kl_prompts = [hparams.kl_prompt] if hparams.kl_prompt else []
    for p in kl_prompts:
        ids, i = subject_last_index(model, p, request.subject)
        seqs.append(ids)
        sub.append(i)
        last.append(len(ids) - 1)
        has_delta.append(True)
    term_rows: dict[str, slice] = {}
    for name, rows in extra:
        start = len(seqs)
        for ids, i in rows:
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError(f"Loss term {name!r} returned an empty row from extra_rows(). Fix: give token ids "
                                 "(with BOS, e.g. editlens.rome.keys.encode(model, text)).")
            if i is not None and not 0 <= i < len(ids):
                raise ValueError(f"Loss term {name!r}: delta index {i} is outside its row of {len(ids)} tokens. "
                                 "Fix: use editlens.rome.keys.subject_last_index(model, prompt, subject) for the index, "
                                 "or None for a row without delta.")
            seqs.append(ids)
            sub.append(0 if i is None else int(i))
            last.append(len(ids) - 1)
            has_delta.append(i is not None)
        term_rows[name] = slice(start, len(seqs))
    tokens, lengths = pad_batch(model, seqs)
    dev = tokens.device
    return VBatch(tokens=tokens, subject_idx=torch.tensor(sub, device=dev), last_prompt_idx=torch.tensor(last, device=dev),
                  target_ids=torch.tensor(target_ids, device=dev), n_rewrite=n_rewrite, n_kl=len(kl_prompts),
                  lengths=lengths.to(dev), delta_rows=torch.tensor(has_delta, device=dev), term_rows=term_rows)


def target_nll(log_probs_fn: Any, logits: Float[Tensor, "batch pos d_vocab"] | Callable[[Tensor, Tensor], Tensor],
               batch: VBatch) -> Float[Tensor, "n_rewrite"]:
    """Mean per-token NLL of the target in each rewrite row (teacher forcing).

    ``logits`` is the full logits tensor or a function ``(rows, pos) -> logits there`` (e.g. ``ctx.logits_at``)."""
    n_t = batch.target_ids.shape[0]
    rows = torch.arange(batch.n_rewrite, device=batch.tokens.device)
    pos = batch.target_positions()  # [n_rewrite, n_t]
    sel = logits(rows[:, None], pos) if callable(logits) else logits[rows[:, None], pos]  # [n_rewrite, n_t, d_vocab]
    lp = log_probs_fn(sel)
    return -lp.gather(-1, batch.target_ids[None, :, None].expand(batch.n_rewrite, n_t, 1)).squeeze(-1).mean(-1)


def check_terms(terms: Sequence[LossTerm]) -> None:
    """Names must be unique and not built-in: otherwise one term's value would silently replace another's."""
    seen: set[str] = set()
    for term in terms:
        name = getattr(term, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"Loss term {term!r} has no name. Fix: set a class attribute `name = \"my_term\"`.")
        if name in RESERVED_NAMES:
            raise ValueError(f"Loss term {type(term).__name__} is named {name!r}, a built-in name of the v* loss "
                             f"({', '.join(sorted(RESERVED_NAMES))}). Fix: give it another `name`.")
        if name in seen:
            raise ValueError(f"Two loss terms are named {name!r}; the second would overwrite the first in the loss and "
                             "the history. Fix: give each term its own `name` (e.g. set `term.name = ...` per instance).")
        seen.add(name)


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (nothing after it is needed)."""


def _fast_forward_supported(model: Any, layer: int) -> bool:
    """Blocks are the HF decoder layers (TransformerBridge) and the final norm and unembedding are bridge modules."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not (0 <= layer < len(blocks)):
        return False
    if not hasattr(model, "ln_final") or not hasattr(model, "unembed"):
        return False
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    if getattr(hf_cfg, "final_logit_softcapping", None):  # applied by the HF head, outside the unembedding
        return False
    return True


class _VForward:
    """Runs the forward passes of the v* optimisation (Chapter 3, "making it fast").

    ``initial_pass`` runs the whole model once at delta = 0 without gradients and records every needed hook, the
    residual stream entering block ``layer`` and the arguments each later block is called with. ``step`` then runs
    either from block ``layer`` up to the final norm (fast) or the whole model (``fast=False``, the plain path)."""

    def __init__(self, model: Any, batch: VBatch, layer: int, hook_names: Sequence[str], fast: bool):
        self.model, self.batch, self.layer = model, batch, layer
        self.hook_names = list(dict.fromkeys([FINAL_HOOK, *hook_names]))
        self.fast = fast and _fast_forward_supported(model, layer) and not any(
            h.startswith(("unembed", "hook_unembed")) for h in hook_names)
        self.block_calls: dict[int, tuple[tuple, dict]] = {}
        self.resid_in: Tensor | None = None

    def _recorders(self, store: dict[str, Tensor], detach: bool) -> list[tuple[str, Callable]]:
        def make(name: str) -> Callable:
            def rec(act: Tensor, hook: Any) -> Tensor:
                store[name] = act.detach() if detach else act
                return act
            return rec
        return [(name, make(name)) for name in self.hook_names]

    @torch.no_grad()
    def initial_pass(self, extra_hooks: Sequence[tuple[str, Callable]] = ()) -> dict[str, Tensor]:
        store: dict[str, Tensor] = {}
        handles = []
        if self.fast:
            def capture(idx: int) -> Callable:
                def pre(module: Any, args: tuple, kwargs: dict) -> None:
                    if idx == self.layer:
                        self.resid_in = (args[0] if args else kwargs["hidden_states"]).detach()
                    kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                    if "past_key_values" in kw:  # a KV cache would grow at every step: run without one
                        kw["past_key_values"] = None
                    if "use_cache" in kw:
                        kw["use_cache"] = False
                    self.block_calls[idx] = (tuple(args[1:]) if args else (), kw)
                return pre
            for i in range(self.layer, len(self.model.blocks)):
                handles.append(self.model.blocks[i].register_forward_pre_hook(capture(i), with_kwargs=True))

        def stop(act: Tensor, hook: Any) -> Tensor:  # the unembedding is not needed at delta = 0
            raise _Stop

        hooks = [*extra_hooks, *self._recorders(store, detach=True)]
        if self.fast:
            hooks.append((FINAL_HOOK, stop))
        try:
            self.model.run_with_hooks(self.batch.tokens, fwd_hooks=hooks)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if self.fast and (self.resid_in is None or len(self.block_calls) != len(self.model.blocks) - self.layer):
            self.fast = False  # the blocks were not called the way we expect: fall back to the plain path
        return store

    def step(self, delta_hook: tuple[str, Callable], acts: dict[str, Tensor]) -> Tensor | None:
        """One forward with gradients; fills ``acts``; returns the full logits (plain path) or None (fast path)."""
        hooks = [delta_hook, *self._recorders(acts, detach=False)]
        if not self.fast:
            return self.model.run_with_hooks(self.batch.tokens, fwd_hooks=hooks)
        with self.model.hooks(fwd_hooks=hooks):
            h = self.resid_in
            for i in range(self.layer, len(self.model.blocks)):
                args, kwargs = self.block_calls[i]
                out = self.model.blocks[i](h, *args, **kwargs)
                h = out[0] if isinstance(out, (tuple, list)) else out
            self.model.ln_final(h)  # recorded by the FINAL_HOOK recorder
        return None

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        lead = resid.shape[:-1]
        out = self.model.unembed(resid.reshape(1, -1, resid.shape[-1]))
        return out.reshape(*lead, out.shape[-1])


def compute_v(
    model: Any,
    request: Any,
    layer: int,
    hparams: ROMEHyperParams,
    extra_losses: Sequence[LossTerm] = (),
    *,
    verbose: bool = False,
) -> VResult:
    """Optimise v* for one request at ``layer`` (Chapter 3); ``extra_losses`` are added (Chapters 4-5)."""
    request = as_request(request)
    if hparams.v_early_stop_on not in EARLY_STOP_RULES:
        raise ValueError(f"v_early_stop_on must be one of {EARLY_STOP_RULES} ('loss' is ROME's code; see the "
                         f"editlens.rome.values docstring), got {hparams.v_early_stop_on!r}.")
    check_terms(extra_losses)
    active = [t for t in extra_losses if getattr(t, "weight", 1.0) != 0]
    skipped = [t.name for t in extra_losses if getattr(t, "weight", 1.0) == 0]
    builtin: list[LossTerm] = [KLTerm(hparams.kl_factor)] if hparams.kl_prompt else []

    base = build_v_batch(model, request, hparams)
    d_model = model.cfg.d_model
    dev = base.tokens.device
    dtype = next(model.parameters()).dtype
    delta = torch.zeros(d_model, device=dev, dtype=dtype, requires_grad=True)
    ctx = VContext(model=model, request=request, layer=layer, hparams=hparams, batch=base, delta=delta)
    extra = [(t.name, list(t.extra_rows(ctx))) for t in active]
    batch = build_v_batch(model, request, hparams, extra=extra) if any(rows for _, rows in extra) else base
    ctx.batch = batch

    hook_names = [h for t in (*builtin, *active) for h in t.hook_names]
    fwd = _VForward(model, batch, layer, hook_names, fast=getattr(hparams, "v_fast_forward", True))
    ctx._unembed = fwd.unembed
    mlp_hook = f"blocks.{layer}.hook_mlp_out"
    v0_store: dict[str, Tensor] = {}

    def grab_v0(act: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
        v0_store["v0"] = act[0, batch.subject_idx[0]].detach().clone()  # row 0: the bare prompt
        return act

    ctx.initial = fwd.initial_pass([(mlp_hook, grab_v0)])
    v0 = v0_store["v0"]
    all_rows = torch.arange(batch.n_rows, device=dev)
    d_rows = all_rows if batch.delta_rows is None or bool(batch.delta_rows.all()) else all_rows[batch.delta_rows]
    d_pos = batch.subject_idx[d_rows]

    def add_delta(act: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
        act = act.clone()
        act[d_rows, d_pos] = act[d_rows, d_pos] + delta
        return act

    for term in active:
        term.prepare(ctx)

    opt = torch.optim.Adam([delta], lr=hparams.v_lr)
    history: list[dict[str, float]] = []
    with frozen_parameters(model):
        for step in range(hparams.v_num_grad_steps):
            ctx.step = step
            ctx.acts = {}
            ctx._logits = None
            opt.zero_grad()
            ctx._logits = fwd.step((mlp_hook, add_delta), ctx.acts)
            for name, act in ctx.initial.items():  # hooks below the edit layer did not run: unchanged by delta
                ctx.acts.setdefault(name, act)
            ctx.resid_final = ctx.acts[FINAL_HOOK]
            nll = target_nll(lambda x: torch.log_softmax(x.float(), -1), ctx.logits_at, batch)
            loss_nll = nll.mean()
            terms: dict[str, Tensor] = {"nll": loss_nll}
            for term in builtin:
                terms[term.name] = term(ctx)
            terms["weight_decay"] = hparams.v_weight_decay * (delta.norm() / v0.norm() ** 2)
            extra_values: dict[str, Tensor] = {}
            for term in active:
                value = term(ctx)
                if not isinstance(value, Tensor):
                    value = torch.as_tensor(value, dtype=loss_nll.dtype, device=dev)
                if value.numel() != 1:
                    raise ValueError(f"Loss term {term.name!r} returned a tensor of shape {tuple(value.shape)}. "
                                     "Fix: reduce it to a scalar (e.g. .mean() or .sum()).")
                extra_values[term.name] = value.reshape(())
            terms.update(extra_values)
            loss = sum(terms.values())
            rec = {k: float(v.detach()) for k, v in terms.items()}
            rec.update({name: 0.0 for name in skipped})
            rec.update(loss=float(loss.detach()), p_target=float(torch.exp(-nll.detach()).mean()), step=step,
                       delta_norm=float(delta.detach().norm()))
            history.append(rec)
            if verbose:
                print(" ".join(f"{k}={v:.4g}" for k, v in rec.items()))
            if _should_stop(hparams, loss, loss_nll, extra_values, active) or step == hparams.v_num_grad_steps - 1:
                break
            loss.backward()
            opt.step()
            max_norm = hparams.clamp_norm_factor * v0.norm()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    d = delta.detach().clone()
    return VResult(v_star=v0 + d, v0=v0, delta=d, history=history)


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
