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

How a step runs (the same numbers as a plain forward, up to float noise; ``hparams.v_fast_forward`` and
``hparams.v_reuse_prefix``): the layers below the edit layer do not depend on ``delta``, and neither do the
positions before the delta position (the subject's last token) at any layer. One pass at ``delta = 0`` (no
gradients) records the residual stream entering block ``layer``, the arguments every later block is called
with, the keys and values every layer computed, and every hooked activation (``ctx.initial``). Each step then
runs blocks ``layer..n_layers-1`` and the final norm on the positions from the delta position on only, packed
into one row per fact (their queries attend to the recorded keys/values of the earlier positions), and
unembeds only the positions that are scored (the unembedding, 49,152 x 576 for SmolLM2, is the largest matrix
of the model), in one call for all facts and terms. Activations are handed to the terms at full shape
``[batch, pos, ...]``, the positions that did not run taken from the ``delta = 0`` pass (so are a row's padding
positions: read only the real ones, ``ctx.batch.attention_mask``). Hooks inside the blocks
that run still fire; a hook below the edit layer did not run, and ``ctx.acts`` holds its (unchanged)
``delta = 0`` value. Measured on SmolLM2 (one CPU thread, ``benchmarks/bench_rome.py --compare``): a step costs
about 0.55 s instead of 1.3 s from the edit layer on every position. :func:`compute_vs` optimises several facts
in one pass per step (each with its own delta, Adam state and early stop); on a CPU this is compute-bound and
saves only about 10%, but on a GPU a batch of facts costs about what one does.

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
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from editlens.block_runner import supports_block_runs
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
        return _index_query(self.initial[name] if initial else self.acts[name], name, rows, pos)

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
        if self._logits is None and self._resid() is not None:
            self._logits = self.unembed(self.resid_final)
        return self._logits


def _query_dim(name: str) -> int:
    """The query-position dimension of a hook's activation: 2 for attention scores and patterns
    ``[batch, head, query, key]``, else 1 (``[batch, pos, ...]``)."""
    return 2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 1


def _index_query(act: Tensor, name: str, rows: Tensor, pos: Tensor) -> Tensor:
    """``act`` at query positions ``(rows, pos)``: ``[*rows.shape, ...]`` without the position dimension."""
    return act.movedim(_query_dim(name), 1)[rows, pos]


def _lookup(scored: tuple[Tensor, Tensor] | None, rows: Tensor | slice, pos: Tensor) -> Tensor | None:
    """Logits at ``(rows, pos)`` from a precomputed table, or None if any of them is not in it."""
    if scored is None:
        return None
    table, logits = scored
    idx = table[rows, pos]
    return logits[idx] if bool((idx >= 0).all()) else None


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
    """The blocks can be driven one by one (:func:`editlens.block_runner.supports_block_runs`) from ``layer``."""
    return supports_block_runs(model) and 0 <= layer < len(model.blocks)


class _PrefixKV:
    """Keys and values of the positions before a cut, per layer, for a suffix-only run (a read-only stand-in for a
    key/value cache: ``update`` prepends the recorded prefix and stores nothing, so it serves every step).

    ``n_rep`` > 1 (grouped-query attention, run inside :func:`_kv_repeated`): the recorded keys/values are already
    repeated for every query head (done once per plan, not at every step and layer) and ``update`` repeats the new
    ones, as the attention's own ``repeat_kv`` would (the same values, so the same result)."""

    def __init__(self, kv: dict[int, tuple[Tensor, Tensor]], n_rep: int = 1):
        self.kv, self.n_rep = kv, n_rep

    def update(self, keys: Tensor, values: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        pk, pv = self.kv[layer_idx]
        if self.n_rep > 1:
            keys, values = keys.repeat_interleave(self.n_rep, 1), values.repeat_interleave(self.n_rep, 1)
        return torch.cat([pk, keys], dim=-2), torch.cat([pv, values], dim=-2)


def _gqa_modules(model: Any, layers: Sequence[int]) -> tuple[list[Any], int]:
    """The attention modules of ``layers`` that repeat keys/values for grouped-query attention, and how many times
    (``([], 1)`` when there is nothing to repeat or the modules do not all say it the same way)."""
    mods = [m for i in layers for m in model.blocks[i].modules() if "num_key_value_groups" in vars(m)]
    reps = {int(getattr(m, "num_key_value_groups")) for m in mods}
    if len(mods) != len(layers) or len(reps) != 1 or min(reps) <= 1:
        return [], 1
    return mods, reps.pop()


@contextlib.contextmanager
def _kv_repeated(mods: Sequence[Any]) -> Iterator[None]:
    """Inside: the attention modules take keys/values already repeated per query head (``_PrefixKV`` with
    ``n_rep`` > 1 hands them over so), so they do not repeat them again."""
    saved = [m.num_key_value_groups for m in mods]
    try:
        for m in mods:
            m.num_key_value_groups = 1
        yield
    finally:
        for m, n in zip(mods, saved):
            m.num_key_value_groups = n


def _cache_kv(cache: Any, layer: int) -> tuple[Tensor, Tensor] | None:
    """Keys and values [batch, kv_heads, pos, d_head] a Hugging Face cache holds for one layer (None if unreadable)."""
    layers = getattr(cache, "layers", None)
    if layers is not None and layer < len(layers) and getattr(layers[layer], "keys", None) is not None:
        return layers[layer].keys, layers[layer].values
    keys, values = getattr(cache, "key_cache", None), getattr(cache, "value_cache", None)
    if keys is not None and layer < len(keys):
        return keys[layer], values[layer]
    return None


_SLICED_KWARGS = {"attention_mask", "position_embeddings", "position_ids", "cache_position", "past_key_values",
                  "use_cache", "output_attentions"}
"""Block arguments a suffix-only run knows how to cut; any other tensor argument turns prefix reuse off."""


@dataclass
class _Suffix:
    """Delta rows cut at their delta positions and packed into rows of ``n_tokens`` slots (Chapter 3, "making it
    fast").

    Row ``rows[i]`` contributes its positions ``cuts[i] .. cuts[i] + lens[i] - 1`` at ``offsets[i]`` of packed row
    ``packs[i]`` (the slots left over are padding). Its queries see the recorded keys/values of its own positions
    before the cut (the recorded positions of a pack's rows lie side by side, ``block_len`` per row, ``n_blocks``
    rows; a row's are block ``blocks[i]``) and its own packed positions up to themselves. A v* step then costs about what
    its real tokens cost: the positions before the cut, which do not depend on delta, are never recomputed. Rows
    are packed by length, first fit (:func:`_pack_rows`), whatever fact they belong to: little padding, and each
    query attends to a few rows' recorded keys, not to a whole fact's."""

    rows: list[int]
    packs: list[int]
    blocks: list[int]  # each row's block among its pack's recorded keys
    cuts: list[int]
    lens: list[int]
    offsets: list[int]
    n_tokens: int
    n_blocks: int
    block_len: int  # recorded positions per row's block of keys: the longest cut (later positions are never seen)
    gather_rows: Int[Tensor, "pack n_tokens"]  # (row, position) of each packed slot in the full batch
    gather_pos: Int[Tensor, "pack n_tokens"]
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)  # block index -> its arguments
    # per row of the full batch (-1 / 0 for a row that is not in the plan): pack, block, cut, length, offset
    of_row: dict[str, Tensor] = field(default_factory=dict)


def _pack_rows(rows: Sequence[int], lens: dict[int, int]) -> list[list[int]]:
    """Rows into packs of at most the longest row's length, longest first, each into the first pack with room."""
    cap = max(lens[r] for r in rows)
    packs: list[list[int]] = []
    room: list[int] = []
    for r in sorted(rows, key=lambda r: (-lens[r], r)):
        for i, free in enumerate(room):
            if lens[r] <= free:
                packs[i].append(r)
                room[i] -= lens[r]
                break
        else:
            packs.append([r])
            room.append(cap - lens[r])
    return packs


class _VForward:
    """Runs the forward passes of the v* optimisation (Chapter 3, "making it fast").

    ``initial_pass`` runs the whole model once at delta = 0 without gradients and records every needed hook, the
    residual stream entering block ``layer``, the arguments each later block is called with and the keys/values
    each layer computed. ``step`` then runs, in the fastest mode that applies:

    - ``"prefix"``: from block ``layer`` up, only on the positions from each row's delta position on: the earlier
      positions do not depend on delta, so their keys and values are reused (rows with the same delta position run
      together; rows without delta do not run). Activations are put back at full shape ``[batch, pos, ...]``, the
      unchanged positions taken from the delta = 0 pass;
    - ``"fast"``: from block ``layer`` up to the final norm, every position;
    - ``"plain"``: the whole model (``fast=False``, or a model whose blocks cannot be driven one by one)."""

    def __init__(self, model: Any, batch: VBatch, layer: int, hook_names: Sequence[str], fast: bool,
                 reuse_prefix: bool = True):
        self.model, self.batch, self.layer = model, batch, layer
        self.hook_names = list(dict.fromkeys([FINAL_HOOK, *hook_names]))
        self.fast = fast and _fast_forward_supported(model, layer) and not any(
            h.startswith(("unembed", "hook_unembed")) for h in hook_names)
        self.reuse_prefix = self.fast and reuse_prefix
        self.block_calls: dict[int, tuple[tuple, dict]] = {}
        self.resid_in: Tensor | None = None
        self.initial: dict[str, Tensor] = {}
        self.store: dict[str, Tensor] = {}  # the last step's activations (packed in the prefix mode)
        self.plan: _Suffix | None = None  # the last step's packing (prefix mode)
        self._full: dict[str, Tensor] = {}  # the last step's activations put together at full shape (on demand)

    @property
    def mode(self) -> str:
        return "prefix" if self.reuse_prefix else "fast" if self.fast else "plain"

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
        caches: dict[int, Any] = {}
        if self.fast:
            def capture(idx: int) -> Callable:
                def pre(module: Any, args: tuple, kwargs: dict) -> None:
                    if idx == self.layer:
                        self.resid_in = (args[0] if args else kwargs["hidden_states"]).detach()
                    kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                    if "past_key_values" in kw:  # a KV cache would grow at every step: run without one
                        caches[idx] = kw["past_key_values"]
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
        self.initial = store
        self.reuse_prefix = self.fast and self.reuse_prefix and self._record_prefix(caches)
        return store

    def _record_prefix(self, caches: dict[int, Any]) -> bool:
        """Record the keys/values and block arguments a packed suffix run needs. False (use the "fast" mode)
        when they are not what we can cut."""
        b, n_layers = self.batch, len(self.model.blocks)
        T = int(b.tokens.shape[1])
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}
        for i in range(self.layer, n_layers):
            got = _cache_kv(caches.get(i), i) if i in caches else None
            if got is None or got[0].shape[0] != b.n_rows or got[0].shape[-2] != T:
                return False
            self.kv[i] = (got[0].detach(), got[1].detach())
            args, kw = self.block_calls[i]
            if args or any(isinstance(v, (Tensor, tuple)) and k not in _SLICED_KWARGS for k, v in kw.items()):
                return False
        lengths = b.lengths if b.lengths is not None else torch.full((b.n_rows,), T)
        has_delta = b.delta_rows if b.delta_rows is not None else torch.ones(b.n_rows, dtype=torch.bool)
        self.delta_rows = [r for r in range(b.n_rows) if bool(has_delta[r])]
        self._cuts = {r: int(b.subject_idx[r]) for r in self.delta_rows}
        self._lens = {r: int(lengths[r]) - self._cuts[r] for r in self.delta_rows}
        self._plans: dict[tuple[int, ...], _Suffix] = {}
        self.gqa, self.n_rep = _gqa_modules(self.model, range(self.layer, n_layers))
        return bool(self.delta_rows) and min(self._cuts.values()) > 0 and min(self._lens.values()) > 0

    def _plan(self, facts: Sequence[Sequence[int]]) -> _Suffix:
        """The packed suffix run of these packs of delta rows (cached: they change only when a fact stops)."""
        key = tuple(tuple(f) for f in facts)
        if key in self._plans:
            return self._plans[key]
        dev = self.batch.tokens.device
        rows, packs, blocks, cuts, lens, offsets = [], [], [], [], [], []
        for g, frows in enumerate(facts):
            o = 0
            for k, r in enumerate(frows):
                rows.append(r), packs.append(g), blocks.append(k), cuts.append(self._cuts[r])
                lens.append(self._lens[r]), offsets.append(o)
                o += self._lens[r]
        F = len(facts)
        N = max(sum(self._lens[r] for r in f) for f in facts)
        R = max(len(f) for f in facts)
        T = max(cuts)  # recorded keys per row: a row's queries see only its positions before its cut
        # slot tables [F, N]: source (row, position), owner block (-1: padding), index within the row's suffix
        grows = torch.zeros(F, N, dtype=torch.long)
        gpos = torch.zeros(F, N, dtype=torch.long)
        owner = torch.full((F, N), -1, dtype=torch.long)
        within = torch.zeros(F, N, dtype=torch.long)
        cut_of = torch.zeros(F, N, dtype=torch.long)
        for r, g, k, c, n, o in zip(rows, packs, blocks, cuts, lens, offsets):
            grows[g, o : o + n], gpos[g, o : o + n] = r, torch.arange(c, c + n)
            owner[g, o : o + n], within[g, o : o + n], cut_of[g, o : o + n] = k, torch.arange(n), c
        for g in range(F):  # padding slots copy the fact's first slot (their outputs are never read)
            pad = owner[g] < 0
            grows[g, pad], gpos[g, pad] = grows[g, 0], gpos[g, 0]
        key_block = torch.arange(R).repeat_interleave(T)  # [R*T]
        key_pos = torch.arange(T).repeat(R)
        sees_recorded = (key_block[None, None, :] == owner[:, :, None]) & (key_pos[None, None, :] < cut_of[:, :, None])
        same_row = (owner[:, None, :] == owner[:, :, None]) & (owner[:, :, None] >= 0)
        sees_packed = same_row & (within[:, None, :] <= within[:, :, None])
        sees_packed |= torch.eye(N, dtype=torch.bool)[None] & (owner < 0)[:, :, None]  # padding sees itself only
        mask = torch.cat([sees_recorded, sees_packed], dim=-1)[:, None].to(dev)  # [F, 1, N, R*T + N]
        grows, gpos = grows.to(dev), gpos.to(dev)
        plan = _Suffix(rows=rows, packs=packs, blocks=blocks, cuts=cuts, lens=lens, offsets=offsets, n_tokens=N,
                       n_blocks=R, block_len=T, gather_rows=grows, gather_pos=gpos)
        at = torch.tensor(rows, dtype=torch.long)
        for name, values, missing in [("pack", packs, -1), ("block", blocks, 0), ("cut", cuts, 0), ("len", lens, 0),
                                      ("offset", offsets, 0)]:
            t = torch.full((self.batch.n_rows,), missing, dtype=torch.long)
            t[at] = torch.tensor(values, dtype=torch.long)
            plan.of_row[name] = t.to(dev)
        for i in range(self.layer, len(self.model.blocks)):
            kw = dict(self.block_calls[i][1])

            def packed(x: Tensor) -> Tensor:  # [1 or batch, T, ...] -> [F, N, ...]
                return x[0][gpos] if x.shape[0] == 1 else x[grows, gpos]

            kw["attention_mask"] = mask
            if isinstance(kw.get("position_embeddings"), tuple):
                kw["position_embeddings"] = tuple(packed(x) for x in kw["position_embeddings"])
            if isinstance(kw.get("position_ids"), Tensor):
                kw["position_ids"] = packed(kw["position_ids"])
            kw.pop("cache_position", None)
            kv = []
            for t in self.kv[i]:  # [batch, kv_heads, T, d] -> [F, kv_heads (* n_rep), R*T, d]
                per_fact = []
                for frows in facts:
                    x = t[torch.tensor(list(frows), device=dev), :, :T]
                    if len(frows) < R:
                        x = torch.cat([x, x.new_zeros(R - len(frows), *x.shape[1:])])
                    per_fact.append(x.permute(1, 0, 2, 3).reshape(x.shape[1], R * T, x.shape[-1]))
                kv.append(torch.stack(per_fact).repeat_interleave(self.n_rep, 1))
            kw["past_key_values"] = _PrefixKV({i: (kv[0], kv[1])}, self.n_rep)
            plan.kwargs[i] = kw
        self._plans[key] = plan
        return plan

    def step(self, mlp_hook: str, row_delta: Float[Tensor, "batch d_model"], acts: dict[str, Tensor] | None = None,
             rows: Sequence[slice] | None = None) -> Tensor | None:
        """One forward with ``row_delta[r]`` added at ``mlp_hook`` (the edit layer's MLP output) at the delta
        position of each delta row ``r``, with gradients; returns the full logits (plain mode) or None. The
        activations are read with :meth:`full` (full shape) or :meth:`at` (some positions); ``acts``, if given, is
        filled with every hook's at full shape. ``rows``: the row ranges still optimised (the prefix mode runs only
        those)."""
        self.store, self._full = {}, {}
        if self.reuse_prefix:
            self._step_prefix(mlp_hook, row_delta, self.store, rows)
            out = None
        else:
            out = self._step_full(mlp_hook, row_delta)
        if acts is not None:
            acts.update({name: self.full(name) for name in self.hook_names if name in self.initial})
        return out

    def full(self, name: str) -> Tensor:
        """The last step's activation of hook ``name`` at full shape (a hook that did not run: its delta = 0
        value). In the prefix mode it is put together on first use, each row's unchanged positions taken from
        the delta = 0 pass."""
        if name not in self._full:
            if name not in self.store:
                return self.initial[name]
            part = self.store[name]
            self._full[name] = part if not self.reuse_prefix else \
                _merge_suffix(self.initial[name], part, self.plan, int(self.batch.tokens.shape[1]), name)
        return self._full[name]

    def at(self, name: str, rows: Tensor, pos: Tensor) -> Tensor:
        """The last step's activation of hook ``name`` at query positions ``(rows[j], pos[j])`` of the batch
        (:func:`_index_query`), without putting it together at full shape."""
        if name not in self.store or not self.reuse_prefix:
            return _index_query(self.full(name), name, rows, pos)
        return _suffix_at(self.initial[name], self.store[name], self.plan, rows, pos,
                          int(self.batch.tokens.shape[1]), name)

    def _step_full(self, mlp_hook: str, row_delta: Float[Tensor, "batch d_model"]) -> Tensor | None:
        b = self.batch
        all_rows = torch.arange(b.n_rows, device=b.tokens.device)
        d_rows = all_rows if b.delta_rows is None or bool(b.delta_rows.all()) else all_rows[b.delta_rows]
        d_pos = b.subject_idx[d_rows]

        def add_delta(act: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
            act = act.to(dtype=row_delta.dtype, copy=True)  # float32 delta: the sum stays float32 under bf16
            act[d_rows, d_pos] = act[d_rows, d_pos] + row_delta[d_rows]
            return act

        hooks = [(mlp_hook, add_delta), *self._recorders(self.store, detach=False)]
        if not self.fast:
            return self.model.run_with_hooks(b.tokens, fwd_hooks=hooks)
        with self.model.hooks(fwd_hooks=hooks):
            h = self.resid_in
            for i in range(self.layer, len(self.model.blocks)):
                args, kwargs = self.block_calls[i]
                out = self.model.blocks[i](h, *args, **kwargs)
                h = out[0] if isinstance(out, (tuple, list)) else out
            self.model.ln_final(h)  # recorded by the FINAL_HOOK recorder
        return None

    def _step_prefix(self, mlp_hook: str, row_delta: Float[Tensor, "batch d_model"], store: dict[str, Tensor],
                     rows: Sequence[slice] | None) -> None:
        ranges = rows if rows is not None else [slice(0, self.batch.n_rows)]
        live = [r for r in self.delta_rows if any(s.start <= r < s.stop for s in ranges)]
        plan = self.plan = self._plan(_pack_rows(live, self._lens))
        dev = row_delta.device
        at_pack, at_slot = torch.tensor(plan.packs, device=dev), torch.tensor(plan.offsets, device=dev)
        d = row_delta[torch.tensor(plan.rows, device=dev)]

        def add_delta(act: Float[Tensor, "pack n_tokens d_model"], hook: Any) -> Tensor:
            act = act.to(dtype=d.dtype, copy=True)  # float32 delta: the sum stays float32 under bf16
            act[at_pack, at_slot] = act[at_pack, at_slot] + d  # each row's first packed slot is its delta position
            return act

        with self.model.hooks(fwd_hooks=[(mlp_hook, add_delta), *self._recorders(store, detach=False)]), \
                _kv_repeated(self.gqa):
            h = self.resid_in[plan.gather_rows, plan.gather_pos]
            for i in range(self.layer, len(self.model.blocks)):
                out = self.model.blocks[i](h, **plan.kwargs[i])
                h = out[0] if isinstance(out, (tuple, list)) else out
            self.model.ln_final(h)

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        lead = resid.shape[:-1]
        out = self.model.unembed(resid.reshape(1, -1, resid.shape[-1]))
        return out.reshape(*lead, out.shape[-1])


def _key_dim(name: str) -> int | None:
    """The key-position dimension of a hook's activation (attention scores and patterns: 3), else None."""
    return 3 if _query_dim(name) == 2 else None


def _check_packed(full: Tensor, part: Tensor, plan: _Suffix, T: int, name: str) -> None:
    """``part`` must be ``full``'s activation packed: the query dimension ``n_tokens`` long, the key dimension (if
    any) ``n_blocks * block_len + n_tokens`` (recorded keys, then the packed ones), every other one the same."""
    qd, kd = _query_dim(name), _key_dim(name)
    want = list(full.shape)
    want[0], want[qd] = part.shape[0], plan.n_tokens
    if kd is not None and kd < len(want):
        want[kd] = plan.n_blocks * plan.block_len + plan.n_tokens
    if list(part.shape) != want or full.shape[qd] != T:
        raise RuntimeError(f"Hook {name!r}: cannot place a packed activation of shape {tuple(part.shape)} into "
                           f"{tuple(full.shape)}. Fix: run compute_v with hparams.replace(v_reuse_prefix=False).")


def _merge_suffix(full: Tensor, part: Tensor, plan: _Suffix, T: int, name: str) -> Tensor:
    """Put a packed-suffix activation back at full shape: ``full`` (delta = 0, every position) with each delta
    row's positions ``cut..cut+len-1`` replaced. In ``part`` the query dimension (:func:`_query_dim`) holds packed
    positions, the key dimension of an attention hook (:func:`_key_dim`) ``n_blocks * block_len`` recorded keys,
    then the packed ones."""
    _check_packed(full, part, plan, T, name)
    qd, kd = _query_dim(name) - 1, _key_dim(name)  # dimensions of one row (batch dimension dropped)
    RT = plan.n_blocks * plan.block_len
    out = full.clone()
    for r, g, k, c, n, o in zip(plan.rows, plan.packs, plan.blocks, plan.cuts, plan.lens, plan.offsets):
        src = part[g].narrow(qd, o, n)
        idx: list[Any] = [slice(None)] * (full.ndim - 1)
        idx[qd] = slice(c, c + n)
        if kd is None:
            out[r][tuple(idx)] = src
            continue
        pre, new = list(idx), list(idx)
        pre[kd - 1], new[kd - 1] = slice(0, c), slice(c, c + n)
        out[r][tuple(pre)] = src.narrow(kd - 1, k * plan.block_len, c)
        out[r][tuple(new)] = src.narrow(kd - 1, RT + o, n)
    return out


def _suffix_at(full: Tensor, part: Tensor, plan: _Suffix, rows: Tensor, pos: Tensor, T: int, name: str) -> Tensor:
    """What ``_index_query(_merge_suffix(full, part, ...), name, rows, pos)`` gives, gathered from the packed
    activation directly: the positions a row ran take their values from ``part`` (its keys before the cut from its
    block of recorded keys, then its packed keys), every other position from ``full`` (delta = 0)."""
    _check_packed(full, part, plan, T, name)
    dev = part.device
    rows, pos = torch.broadcast_tensors(torch.as_tensor(rows, device=dev), torch.as_tensor(pos, device=dev))
    shape = rows.shape
    r, p = rows.reshape(-1), pos.reshape(-1)
    of = {k: v[r] for k, v in plan.of_row.items()}
    c, n, o = of["cut"], of["len"], of["offset"]
    inside = (of["pack"] >= 0) & (p >= c) & (p < c + n)
    base = _index_query(full, name, r, p)
    got = _index_query(part, name, torch.where(inside, of["pack"], 0), torch.where(inside, o + p - c, 0))
    if _key_dim(name) is not None:  # [m, head, key]: recorded keys of n_blocks rows, then the packed ones
        RT = plan.n_blocks * plan.block_len
        j = torch.arange(T, device=dev)[None]
        rec = j < c[:, None]
        new = ~rec & (j < (c + n)[:, None])
        idx = torch.where(rec, of["block"][:, None] * plan.block_len + j, RT + o[:, None] + j - c[:, None])
        idx = torch.where(rec | new, idx, 0)
        got = got.gather(-1, idx[:, None, :].expand(*got.shape[:-1], T))
        got = torch.where((rec | new)[:, None, :], got, base.to(got.dtype))
    out = torch.where(inside.view(-1, *[1] * (got.ndim - 1)), got, base.to(got.dtype))
    return out.reshape(*shape, *out.shape[1:])


def compute_v(
    model: Any,
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


def _padded(batch: VBatch, width: int) -> VBatch:
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


def _stack(batches: Sequence[VBatch]) -> VBatch:
    """All facts' rows (already padded to one width) in one batch (only the fields the forward pass reads)."""
    return VBatch(tokens=torch.cat([b.tokens for b in batches]), subject_idx=torch.cat([b.subject_idx for b in batches]),
                  last_prompt_idx=torch.cat([b.last_prompt_idx for b in batches]), target_ids=batches[0].target_ids,
                  n_rewrite=0, n_kl=0, lengths=torch.cat([b.lengths for b in batches]),
                  delta_rows=torch.cat([b.delta_rows for b in batches]))


def compute_vs(
    model: Any,
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
    ones, if the run stopped early before). So one 80-step run also gives the 20-step edit, exactly."""
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
    d_model = model.cfg.d_model
    dtype = next(model.parameters()).dtype
    facts: list[_Fact] = []
    batches: list[VBatch] = []
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
        batches.append(ctx.batch)
        start += ctx.batch.n_rows
    width = max(int(b.tokens.shape[1]) for b in batches)
    for f in facts:
        f.ctx.batch = _padded(f.ctx.batch, width)
    stacked = _stack([f.ctx.batch for f in facts])
    dev = stacked.tokens.device
    fact_of_row = torch.cat([torch.full((f.ctx.batch.n_rows,), i, device=dev) for i, f in enumerate(facts)])

    hook_names = [h for f in facts for t in (*f.builtin, *f.active) for h in t.hook_names]
    fwd = _VForward(model, stacked, layer, hook_names, fast=getattr(hparams, "v_fast_forward", True),
                    reuse_prefix=getattr(hparams, "v_reuse_prefix", True))
    mlp_hook = f"blocks.{layer}.hook_mlp_out"
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

    opt = torch.optim.Adam([f.ctx.delta for f in facts], lr=hparams.v_lr)
    with frozen_parameters(model):
        for step in range(hparams.v_num_grad_steps):
            live = [f for f in facts if not f.done]
            if not live:
                break
            opt.zero_grad(set_to_none=True)
            row_delta = torch.stack([f.ctx.delta for f in facts])[fact_of_row]
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
            if not to_minimise:
                break
            sum(to_minimise).backward()
            for f in facts:  # the stacked row_delta gives every delta a (zero) gradient: Adam's momentum would
                if f.done:   # still move a finished one
                    f.ctx.delta.grad = None
            opt.step()
            with torch.no_grad():
                for f in live:
                    max_norm = hparams.clamp_norm_factor * f.v0.norm()
                    if not f.done and f.ctx.delta.norm() > max_norm:
                        f.ctx.delta.mul_(max_norm / f.ctx.delta.norm())
    out = []
    for f in facts:
        res = _result(f)
        # limits the run never reached (it stopped early before them) end where it ended
        res.earlier = {n: f.earlier[n] if n in f.earlier else _result(f) for n in also_steps}
        out.append(res)
    return out


class _StepActs(Mapping):
    """One step's activations by hook name, at full shape, put together on first use (:meth:`_VForward.full`)."""

    def __init__(self, fwd: _VForward):
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
        self.acts, self.rows, self.cache = acts, rows, {}

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
            f.ctx._read_initial[name] = _index_query(f.ctx.initial[name], name, rows, pos)


def _read_declared(facts: Sequence[_Fact], fwd: _VForward) -> None:
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
    return VResult(v_star=f.v0 + d, v0=f.v0, delta=d, history=[dict(h) for h in f.history])


def _fact_step(f: _Fact, step: int, acts: Mapping[str, Tensor], logits: Tensor | None, hparams: ROMEHyperParams,
               verbose: bool) -> tuple[Tensor, bool]:
    """One fact's loss at this step, recorded in its history; and whether it stops here."""
    ctx, batch, delta = f.ctx, f.ctx.batch, f.ctx.delta
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
    loss = sum(terms.values())
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
