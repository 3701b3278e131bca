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
- ``"nll"``: the target NLL alone is below it (extra terms are ignored unless they set ``stop_below``; the
  SmolLM2 default, so that ROME, STEAM and SADR stop on the same quantity and a comparison of them gets the
  same budget by construction, Chapters 4-6);
- ``"nll+extra"``: NLL + the sum of the extra terms is below it, so a term that is still large keeps the
  optimisation going (with no extra term it is exactly ``"nll"``);

and, whatever the rule, every extra term with a ``stop_below`` threshold is below its own threshold.
The last step (``v_num_grad_steps``) always stops.

Where the rest lives: this module is the loss-term API (:class:`LossTerm`, :class:`VContext`, :class:`VBatch`,
:class:`VResult`) and the entry points :func:`compute_v` and :func:`compute_vs`; the optimisation loop (Adam, clamp,
early stop, several facts at once) is :mod:`editlens.rome.v_optimise`, and the forward passes, which run only the
blocks from the edit layer up and only the positions from the subject on (the same numbers as a plain forward, up
to float noise; ``hparams.v_fast_forward`` and ``hparams.v_reuse_prefix``), are :mod:`editlens.rome.v_forward`.
:func:`compute_vs` optimises several facts in one pass per step (each with its own delta, Adam state and early
stop); on a CPU this is compute-bound and saves only about 10%, but on a GPU a batch of facts costs about what one
does.

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
that returns ``0 * x`` without rows also leaves ROME's v* bit-identical. Activations reach a term at full shape
``[batch, pos, ...]``; the positions that did not run (below the edit layer, before the subject, a row's padding)
hold their ``delta = 0`` values: read only the real ones (``ctx.batch.attention_mask``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from editlens.data import RewriteRequest, as_request
from editlens.rome.hparams import ROMEHyperParams
from editlens.rome.keys import (
    context_templates,
    encode,
    fill_template,
    pad_batch,
    subject_last_index,
)
from editlens.scoring import with_leading_space

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

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

    model: TransformerBridge
    request: RewriteRequest
    layer: int
    hparams: ROMEHyperParams
    batch: VBatch
    delta: Float[Tensor, "d_model"]
    step: int = 0
    acts: Mapping[str, Tensor] = field(default_factory=dict)  # this step, with gradients
    initial: dict[str, Tensor] = field(default_factory=dict)  # at delta = 0 (unedited), detached; filled before prepare
    resid_final: Float[Tensor, "batch pos d_model"] | None = None  # this step's ln_final output (with gradients)
    _logits: Tensor | None = field(default=None, repr=False)
    _unembed: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    # logits compute_vs unembedded in one call for all facts (the positions the built-in terms read):
    # (table [batch pos] -> row of logits or -1, logits [n vocab]); this step's, and those at delta = 0
    _scored: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    _scored_initial: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    # activations at the positions terms declared (LossTerm.positions), gathered by compute_vs for all facts at once:
    # hook name -> [n, ...]; this step's, and those at delta = 0
    _read: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _read_initial: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _positions: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def at(self, name: str, rows: Tensor | None = None, pos: Tensor | None = None, *,
           initial: bool = False) -> Tensor:
        """Hook ``name``'s activation at query positions ``(rows[j], pos[j])``: ``[n, ...]``, the position
        dimension dropped (an attention pattern ``[batch, head, query, key]`` gives ``[n, head, key]``, keys at
        full length). Without ``rows``/``pos``: at the positions a term declared for this hook
        (:meth:`LossTerm.positions`), which compute_vs gathers once per step for every fact of a batch: cheaper
        than ``ctx.acts[name][rows, pos]``, which puts the whole activation together at full shape."""
        if rows is None:
            hit = (self._read_initial if initial else self._read).get(name)
            if hit is not None:
                return hit
            if name not in self._positions:
                raise KeyError(f"No positions declared for hook {name!r}. Fix: pass rows and pos, or return them "
                               "from the term's positions(ctx).")
            rows, pos = self._positions[name]
        assert pos is not None, "pass rows and pos together"
        return index_query(self.initial[name] if initial else self.acts[name], name, rows, pos)

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Logits of final-norm residual vectors (any leading shape)."""
        if self._unembed is None:
            raise RuntimeError("No unembedding attached to this context (compute_v attaches one).")
        return self._unembed(resid)

    def logits_at(self, rows: Tensor | slice, pos: Tensor, *, initial: bool = False) -> Float[Tensor, "... d_vocab"]:
        """This step's logits (or, with ``initial=True``, those at delta = 0) at ``(rows, pos)`` (advanced indexing).

        Only these positions are unembedded: cheap, unlike :attr:`logits`."""
        if initial:
            hit = _lookup(self._scored_initial, rows, pos)
            return hit if hit is not None else self.unembed(self.initial[FINAL_HOOK][rows, pos])
        if self._logits is not None:
            return self._logits[rows, pos]
        hit = _lookup(self._scored, rows, pos)
        if hit is not None:
            return hit
        resid = self._resid()
        if resid is None:
            raise RuntimeError("No forward pass has run yet: logits exist from the first step on.")
        return self.unembed(resid[rows, pos])

    def _resid(self) -> Tensor | None:
        """This step's ln_final output at full shape (``resid_final``, else put together from ``acts``)."""
        if self.resid_final is None and FINAL_HOOK in self.acts:
            self.resid_final = self.acts[FINAL_HOOK]
        return self.resid_final

    @property
    def logits(self) -> Float[Tensor, "batch pos d_vocab"] | None:
        """All of this step's logits (computed on first use: a full unembedding; prefer :meth:`logits_at`)."""
        if self._logits is None and (resid := self._resid()) is not None:
            self._logits = self.unembed(resid)
        return self._logits


def query_dim(name: str) -> int:
    """The query-position dimension of a hook's activation: 2 for attention scores and patterns
    ``[batch, head, query, key]``, else 1 (``[batch, pos, ...]``)."""
    return 2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 1


def index_query(act: Tensor, name: str, rows: Tensor, pos: Tensor) -> Tensor:
    """``act`` at query positions ``(rows, pos)``: ``[*rows.shape, ...]`` without the position dimension."""
    return act.movedim(query_dim(name), 1)[rows, pos]


def _lookup(scored: tuple[Tensor, Tensor] | None, rows: Tensor | slice, pos: Tensor) -> Tensor | None:
    """Logits at ``(rows, pos)`` from a precomputed table, or None if any of them is not in it."""
    if scored is None:
        return None
    table, logits = scored
    idx = table[rows, pos]
    return logits[idx] if bool((idx >= 0).all()) else None


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

    def positions(self, ctx: VContext) -> tuple[Tensor, Tensor] | None:
        """``(rows, positions)`` of ``ctx.batch`` where the term reads its hooks (the same every step), or None
        (it reads ``ctx.acts`` at full shape). Declared, they are gathered for all facts of a batch at once and
        read with ``ctx.at(name)`` (``[n, ...]``): much cheaper in a batch. Called once, after ``prepare``."""
        return None

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
    earlier: dict[int, "VResult"] = field(default_factory=dict)
    """``earlier[n]``: the result a run limited to ``n`` steps returns (``also_steps`` of :func:`compute_vs`)."""

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


def build_v_batch(model: TransformerBridge, request: RewriteRequest, hparams: ROMEHyperParams,
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
        for row, at in rows:
            ids = [int(t) for t in row]
            if not ids:
                raise ValueError(f"Loss term {name!r} returned an empty row from extra_rows(). Fix: give token ids "
                                 "(with BOS, e.g. editlens.rome.keys.encode(model, text)).")
            if at is not None and not 0 <= at < len(ids):
                raise ValueError(f"Loss term {name!r}: delta index {at} is outside its row of {len(ids)} tokens. "
                                 "Fix: use editlens.rome.keys.subject_last_index(model, prompt, subject) for the index, "
                                 "or None for a row without delta.")
            seqs.append(ids)
            sub.append(0 if at is None else int(at))
            last.append(len(ids) - 1)
            has_delta.append(at is not None)
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


def compute_v(
    model: TransformerBridge,
    request: Any,
    layer: int,
    hparams: ROMEHyperParams,
    extra_losses: Sequence[LossTerm] = (),
    *,
    also_steps: Sequence[int] = (),
    verbose: bool = False,
) -> VResult:
    """Optimise v* for one request at ``layer`` (Chapter 3); ``extra_losses`` are added (Chapters 4-5);
    ``also_steps``: see :func:`compute_vs`."""
    return compute_vs(model, [request], layer, hparams, [extra_losses], also_steps=also_steps, verbose=verbose)[0]


def compute_vs(
    model: TransformerBridge,
    requests: Sequence[Any],
    layer: int,
    hparams: ROMEHyperParams,
    extra_losses: Sequence[Sequence[LossTerm]] | None = None,
    *,
    also_steps: Sequence[int] = (),
    verbose: bool = False,
) -> list[VResult]:
    """Optimise v* for several requests at once (Chapter 3, "making it fast"): one forward and one backward pass
    per step for all of them, each with its own ``delta``, Adam state, loss, early stop and history, so each result
    is what :func:`compute_v` gives for that request alone (up to float noise; tested). On one CPU thread the
    steps are compute-bound, so 8 facts together took 86 s against 94 s one by one; on a GPU, where a step of a
    few dozen tokens is bound by launching kernels and reading weights, a batch costs about what one fact does.

    ``extra_losses[i]`` are request ``i``'s extra terms (Chapters 4-5).

    ``also_steps`` (Chapter 5): shorter step limits whose results come out of the same run, in each result's
    ``earlier[n]``. Nothing in a step depends on the limit (the loss, the early stop, Adam's state, the clamp), and
    a run limited to ``n`` steps evaluates its loss at step ``n - 1`` without updating delta after it, so its
    result is this run's delta and history as they stand when step ``n - 1``'s loss is computed (or the final
    ones, if the run stopped early before). So one 80-step run also gives the 20-step edit, exactly.

    The arguments are checked here; the loop is :func:`editlens.rome.v_optimise.optimise`."""
    reqs = [as_request(r) for r in requests]
    if not reqs:
        return []
    limit = hparams.v_num_grad_steps
    also_steps = sorted({int(n) for n in also_steps})
    bad = [n for n in also_steps if not 1 <= n < limit]
    if bad:
        raise ValueError(f"also_steps {bad} must lie in 1..{limit - 1} (below the run's v_num_grad_steps = {limit}). "
                         f"Fix: raise v_num_grad_steps to the longest run wanted and list only the shorter limits.")
    if hparams.v_early_stop_on not in EARLY_STOP_RULES:
        raise ValueError(f"v_early_stop_on must be one of {EARLY_STOP_RULES} ('loss' is ROME's code; see the "
                         f"editlens.rome.values docstring), got {hparams.v_early_stop_on!r}.")
    extra_losses = [list(t) for t in extra_losses] if extra_losses is not None else [[] for _ in reqs]
    if len(extra_losses) != len(reqs):
        raise ValueError(f"{len(reqs)} requests but {len(extra_losses)} lists of extra losses; give one list "
                         "(possibly empty) per request.")
    # imported here, not at the top: the optimiser is built on this module's term API (it imports this module)
    from editlens.rome.v_optimise import optimise

    return optimise(model, reqs, layer, hparams, extra_losses, also_steps, verbose)
