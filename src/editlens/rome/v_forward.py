"""The forward passes of the v* optimisation (:mod:`editlens.rome.values`), run only where delta changes anything.

Taught in: Chapter 3 (ROME, "making it fast").

How a step runs (the same numbers as a plain forward, up to float noise; ``hparams.v_fast_forward`` and
``hparams.v_reuse_prefix``): the layers below the edit layer do not depend on ``delta``, and neither do the
positions before the delta position (the subject's last token) at any layer. One pass at ``delta = 0`` (no
gradients) records the residual stream entering block ``layer``, the arguments every later block is called
with (:func:`editlens.block_runner.recording_block_calls`), the keys and values every layer computed, and every
hooked activation (``ctx.initial``). Each step then runs blocks ``layer..n_layers-1``
(:func:`editlens.block_runner.run_blocks`) and the final norm on the positions from the delta position on only,
packed into rows (their queries attend to the recorded keys/values of the earlier positions), and the optimiser
(:mod:`editlens.rome.v_optimise`) unembeds only the positions that are scored (the unembedding, 49,152 x 576 for
SmolLM2, is the largest matrix of the model), in one call for all facts and terms. Activations are handed to the
terms at full shape ``[batch, pos, ...]``, the positions that did not run taken from the ``delta = 0`` pass (so are
a row's padding positions: read only the real ones, ``ctx.batch.attention_mask``). Hooks inside the blocks that run
still fire; a hook below the edit layer did not run, and ``ctx.acts`` holds its (unchanged) ``delta = 0`` value.
Measured on SmolLM2 (one CPU thread, ``benchmarks/bench_rome.py --compare``): a step costs about 0.55 s instead of
1.3 s from the edit layer on every position.

:class:`VForward` is the engine (three modes: "prefix", "fast", "plain"); :class:`_Suffix` is a packed suffix run's
plan, :class:`_PrefixKV` hands the recorded keys/values to the attention, and :func:`_merge_suffix` /
:func:`_suffix_at` read a packed activation back at full shape or at some positions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from editlens.block_runner import recording_block_calls, run_blocks, supports_block_runs
from editlens.rome.values import FINAL_HOOK, VBatch, index_query, query_dim
from editlens.scoring import HookList

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (nothing after it is needed)."""


def _fast_forward_supported(model: TransformerBridge, layer: int) -> bool:
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


def _gqa_modules(model: TransformerBridge, layers: Sequence[int]) -> tuple[list[Any], int]:
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
    if keys is not None and values is not None and layer < len(keys):
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
    rows; a row's are block ``blocks[i]``) and its own packed positions up to themselves. A v* step then costs about
    what its real tokens cost: the positions before the cut, which do not depend on delta, are never recomputed. Rows
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

    @property
    def calls(self) -> dict[int, tuple[tuple, dict[str, Any]]]:
        """The blocks' arguments as :func:`editlens.block_runner.run_blocks` takes them (no positional ones)."""
        return {i: ((), kw) for i, kw in self.kwargs.items()}
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


def _slot_tables(F: int, N: int, R: int, T: int, rows: Sequence[int], packs: Sequence[int], blocks: Sequence[int],
                 cuts: Sequence[int], lens: Sequence[int], offsets: Sequence[int]
                 ) -> tuple[Int[Tensor, "pack n_tokens"], Int[Tensor, "pack n_tokens"],
                            Bool[Tensor, "pack 1 n_tokens keys"]]:
    """Where each of the ``F`` packs' ``N`` slots comes from (row and position of the full batch; padding slots copy
    their pack's first slot, their outputs are never read) and what each slot's query sees (``keys`` = ``R * T``
    recorded keys, ``T`` per row's block, then the ``N`` packed ones): its own row's recorded keys before its cut and
    its own row's packed slots up to itself; a padding slot only itself. On the CPU (the caller moves them)."""
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
    return grows, gpos, torch.cat([sees_recorded, sees_packed], dim=-1)[:, None]  # mask [F, 1, N, R*T + N]


class _Prefix:
    """What a packed suffix-only run (the "prefix" mode of :class:`VForward`) reuses from the delta = 0 pass: the
    keys/values of every layer from ``layer`` up, the blocks' arguments, and each delta row's cut (its delta
    position) and suffix length; and the packed runs' plans (:class:`_Suffix`), made on demand and kept."""

    def __init__(self, model: TransformerBridge, batch: VBatch, layer: int, block_calls: dict[int, tuple[tuple, dict]],
                 kv: dict[int, tuple[Tensor, Tensor]]):
        self.model, self.batch, self.layer, self.block_calls, self.kv = model, batch, layer, block_calls, kv
        b = batch
        lengths = b.lengths if b.lengths is not None else torch.full((b.n_rows,), int(b.tokens.shape[1]))
        has_delta = b.delta_rows if b.delta_rows is not None else torch.ones(b.n_rows, dtype=torch.bool)
        self.delta_rows = [r for r in range(b.n_rows) if bool(has_delta[r])]
        self._cuts = {r: int(b.subject_idx[r]) for r in self.delta_rows}
        self._lens = {r: int(lengths[r]) - self._cuts[r] for r in self.delta_rows}
        self._plans: dict[tuple[tuple[int, ...], ...], _Suffix] = {}
        self.gqa, self.n_rep = _gqa_modules(model, range(layer, len(model.blocks)))

    @classmethod
    def record(cls, model: TransformerBridge, batch: VBatch, layer: int, block_calls: dict[int, tuple[tuple, dict]],
               caches: dict[int, Any]) -> _Prefix | None:
        """The prefix of the recorded pass (``caches``: block -> the key/value cache it was handed), or None (use
        the "fast" mode) when the keys/values or the block arguments are not what we can cut."""
        b, n_layers = batch, len(model.blocks)
        T = int(b.tokens.shape[1])
        kv: dict[int, tuple[Tensor, Tensor]] = {}
        for i in range(layer, n_layers):
            got = _cache_kv(caches.get(i), i) if i in caches else None
            if got is None or got[0].shape[0] != b.n_rows or got[0].shape[-2] != T:
                return None
            kv[i] = (got[0].detach(), got[1].detach())
            args, kw = block_calls[i]
            if args or any(isinstance(v, (Tensor, tuple)) and k not in _SLICED_KWARGS for k, v in kw.items()):
                return None
        prefix = cls(model, batch, layer, block_calls, kv)
        ok = bool(prefix.delta_rows) and min(prefix._cuts.values()) > 0 and min(prefix._lens.values()) > 0
        return prefix if ok else None

    def packs(self, rows: Sequence[slice] | None) -> list[list[int]]:
        """The delta rows inside the ranges ``rows`` (default: all), packed (:func:`_pack_rows`)."""
        ranges = rows if rows is not None else [slice(0, self.batch.n_rows)]
        live = [r for r in self.delta_rows if any(s.start <= r < s.stop for s in ranges)]
        return _pack_rows(live, self._lens)

    def plan(self, facts: Sequence[Sequence[int]]) -> _Suffix:
        """The packed suffix run of these packs of delta rows (cached: they change only when a fact stops)."""
        key = tuple(tuple(f) for f in facts)
        if key in self._plans:
            return self._plans[key]
        dev = self.batch.tokens.device
        rows, packs, blocks, cuts, lens, offsets = [], [], [], [], [], []
        for g, frows in enumerate(facts):
            o = 0
            for k, r in enumerate(frows):
                rows.append(r)
                packs.append(g)
                blocks.append(k)
                cuts.append(self._cuts[r])
                lens.append(self._lens[r])
                offsets.append(o)
                o += self._lens[r]
        N = max(sum(self._lens[r] for r in f) for f in facts)
        R = max(len(f) for f in facts)
        T = max(cuts)  # recorded keys per row: a row's queries see only its positions before its cut
        grows, gpos, mask = _slot_tables(len(facts), N, R, T, rows, packs, blocks, cuts, lens, offsets)
        grows, gpos, mask = grows.to(dev), gpos.to(dev), mask.to(dev)
        plan = _Suffix(rows=rows, packs=packs, blocks=blocks, cuts=cuts, lens=lens, offsets=offsets, n_tokens=N,
                       n_blocks=R, block_len=T, gather_rows=grows, gather_pos=gpos)
        at = torch.tensor(rows, dtype=torch.long)
        for name, values, missing in [("pack", packs, -1), ("block", blocks, 0), ("cut", cuts, 0), ("len", lens, 0),
                                      ("offset", offsets, 0)]:
            t = torch.full((self.batch.n_rows,), missing, dtype=torch.long)
            t[at] = torch.tensor(values, dtype=torch.long)
            plan.of_row[name] = t.to(dev)
        for i in range(self.layer, len(self.model.blocks)):
            plan.kwargs[i] = self._packed_kwargs(i, facts, plan, mask)
        self._plans[key] = plan
        return plan

    def _packed_kwargs(self, i: int, facts: Sequence[Sequence[int]], plan: _Suffix,
                       mask: Bool[Tensor, "pack 1 n_tokens keys"]) -> dict[str, Any]:
        """Block ``i``'s recorded arguments cut for the packed run: the packed mask, position embeddings and ids at
        the packed slots, and the recorded keys/values of each pack's rows (:class:`_PrefixKV`)."""
        dev, R, T = self.batch.tokens.device, plan.n_blocks, plan.block_len
        grows, gpos = plan.gather_rows, plan.gather_pos
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
        return kw


class VForward:
    """Runs the forward passes of the v* optimisation (Chapter 3, "making it fast").

    ``initial_pass`` runs the whole model once at delta = 0 without gradients and records every needed hook, the
    residual stream entering block ``layer``, the arguments each later block is called with and the keys/values
    each layer computed. ``step`` then runs, in the fastest mode that applies:

    - ``"prefix"``: from block ``layer`` up, only on the positions from each row's delta position on: the earlier
      positions do not depend on delta, so their keys and values are reused (:class:`_Prefix`; the rows are packed
      together, :class:`_Suffix`; rows without delta do not run). Activations are put back at full shape
      ``[batch, pos, ...]``, the unchanged positions taken from the delta = 0 pass;
    - ``"fast"``: from block ``layer`` up to the final norm, every position;
    - ``"plain"``: the whole model (``fast=False``, or a model whose blocks cannot be driven one by one)."""

    def __init__(self, model: TransformerBridge, batch: VBatch, layer: int, hook_names: Sequence[str], fast: bool,
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
        self.prefix: _Prefix | None = None  # what the prefix mode reuses (recorded by initial_pass)
        self.plan: _Suffix | None = None  # the last step's packing (prefix mode)
        self._full: dict[str, Tensor] = {}  # the last step's activations put together at full shape (on demand)

    @property
    def mode(self) -> str:
        """The mode ``step`` runs in: "prefix", "fast" or "plain" (known after :meth:`initial_pass`)."""
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
        """The whole model once at delta = 0, without gradients (the unembedding skipped in the fast modes): every
        needed hook's activation (returned, and kept as ``initial``), and for the fast modes the residual stream
        entering block ``layer`` and the call arguments and keys/values of every block from it up."""
        store: dict[str, Tensor] = {}
        caches: dict[int, Any] = {}

        def observe(idx: int, args: tuple, kwargs: dict) -> None:
            if idx == self.layer:
                self.resid_in = (args[0] if args else kwargs["hidden_states"]).detach()
            if "past_key_values" in kwargs:  # the cache this run writes: its keys/values, read after the run
                caches[idx] = kwargs["past_key_values"]

        def stop(act: Tensor, hook: Any) -> Tensor:  # the unembedding is not needed at delta = 0
            raise _Stop

        hooks: HookList = [*extra_hooks, *self._recorders(store, detach=True)]
        if self.fast:
            hooks.append((FINAL_HOOK, stop))
        recording = recording_block_calls(self.model, self.layer, observe) if self.fast else contextlib.nullcontext()
        try:
            with recording as rec:
                self.model.run_with_hooks(self.batch.tokens, fwd_hooks=hooks)
        except _Stop:
            pass
        if self.fast:
            assert rec is not None  # recording_block_calls yields the calls it records
            self.block_calls = rec.calls
        if self.fast and (self.resid_in is None or len(self.block_calls) != len(self.model.blocks) - self.layer):
            self.fast = False  # the blocks were not called the way we expect: fall back to the plain path
        self.initial = store
        self.prefix = _Prefix.record(self.model, self.batch, self.layer, self.block_calls, caches) \
            if self.fast and self.reuse_prefix else None
        self.reuse_prefix = self.prefix is not None
        return store

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
            if not self.reuse_prefix:
                self._full[name] = part
            else:
                assert self.plan is not None  # set by the prefix step that stored `part`
                self._full[name] = _merge_suffix(self.initial[name], part, self.plan, int(self.batch.tokens.shape[1]),
                                                 name)
        return self._full[name]

    def at(self, name: str, rows: Tensor, pos: Tensor) -> Tensor:
        """The last step's activation of hook ``name`` at query positions ``(rows[j], pos[j])`` of the batch
        (:func:`index_query`), without putting it together at full shape."""
        if name not in self.store or not self.reuse_prefix:
            return index_query(self.full(name), name, rows, pos)
        assert self.plan is not None  # set by the prefix step that stored the activation
        return _suffix_at(self.initial[name], self.store[name], self.plan, rows, pos,
                          int(self.batch.tokens.shape[1]), name)

    def _step_full(self, mlp_hook: str, row_delta: Float[Tensor, "batch d_model"]) -> Tensor | None:
        """The "plain" step (the whole model; returns its logits) or the "fast" one (blocks ``layer ..`` and the
        final norm, every position; returns None)."""
        b = self.batch
        all_rows = torch.arange(b.n_rows, device=b.tokens.device)
        d_rows = all_rows if b.delta_rows is None or bool(b.delta_rows.all()) else all_rows[b.delta_rows]
        d_pos = b.subject_idx[d_rows]

        def add_delta(act: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
            act = act.to(dtype=row_delta.dtype, copy=True)  # float32 delta: the sum stays float32 under bf16
            act[d_rows, d_pos] = act[d_rows, d_pos] + row_delta[d_rows]
            return act

        hooks: HookList = [(mlp_hook, add_delta), *self._recorders(self.store, detach=False)]
        if not self.fast:
            return self.model.run_with_hooks(b.tokens, fwd_hooks=hooks)
        assert self.resid_in is not None  # the fast mode needs it (initial_pass falls back to plain without)
        with self.model.hooks(fwd_hooks=hooks):  # the final norm's output is recorded by the FINAL_HOOK recorder
            self.model.ln_final(run_blocks(self.model, self.resid_in, self.layer, self.block_calls))
        return None

    def _step_prefix(self, mlp_hook: str, row_delta: Float[Tensor, "batch d_model"], store: dict[str, Tensor],
                     rows: Sequence[slice] | None) -> None:
        """The "prefix" step: blocks ``layer ..`` and the final norm on the packed suffixes of the delta rows in
        ``rows`` (:class:`_Suffix`), the recorded keys/values of the positions before each cut handed over."""
        prefix, resid_in = self.prefix, self.resid_in
        assert prefix is not None and resid_in is not None  # the prefix mode runs only once both are recorded
        plan = self.plan = prefix.plan(prefix.packs(rows))
        dev = row_delta.device
        at_pack, at_slot = torch.tensor(plan.packs, device=dev), torch.tensor(plan.offsets, device=dev)
        d = row_delta[torch.tensor(plan.rows, device=dev)]

        def add_delta(act: Float[Tensor, "pack n_tokens d_model"], hook: Any) -> Tensor:
            act = act.to(dtype=d.dtype, copy=True)  # float32 delta: the sum stays float32 under bf16
            act[at_pack, at_slot] = act[at_pack, at_slot] + d  # each row's first packed slot is its delta position
            return act

        with self.model.hooks(fwd_hooks=[(mlp_hook, add_delta), *self._recorders(store, detach=False)]), \
                _kv_repeated(prefix.gqa):
            h = resid_in[plan.gather_rows, plan.gather_pos]
            self.model.ln_final(run_blocks(self.model, h, self.layer, plan.calls))

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        lead = resid.shape[:-1]
        out = self.model.unembed(resid.reshape(1, -1, resid.shape[-1]))
        return out.reshape(*lead, out.shape[-1])


def _key_dim(name: str) -> int | None:
    """The key-position dimension of a hook's activation (attention scores and patterns: 3), else None."""
    return 3 if query_dim(name) == 2 else None


def _check_packed(full: Tensor, part: Tensor, plan: _Suffix, T: int, name: str) -> None:
    """``part`` must be ``full``'s activation packed: the query dimension ``n_tokens`` long, the key dimension (if
    any) ``n_blocks * block_len + n_tokens`` (recorded keys, then the packed ones), every other one the same."""
    qd, kd = query_dim(name), _key_dim(name)
    want = list(full.shape)
    want[0], want[qd] = part.shape[0], plan.n_tokens
    if kd is not None and kd < len(want):
        want[kd] = plan.n_blocks * plan.block_len + plan.n_tokens
    if list(part.shape) != want or full.shape[qd] != T:
        raise RuntimeError(f"Hook {name!r}: cannot place a packed activation of shape {tuple(part.shape)} into "
                           f"{tuple(full.shape)}. Fix: run compute_v with hparams.replace(v_reuse_prefix=False).")


def _merge_suffix(full: Tensor, part: Tensor, plan: _Suffix, T: int, name: str) -> Tensor:
    """Put a packed-suffix activation back at full shape: ``full`` (delta = 0, every position) with each delta
    row's positions ``cut..cut+len-1`` replaced. In ``part`` the query dimension (:func:`query_dim`) holds packed
    positions, the key dimension of an attention hook (:func:`_key_dim`) ``n_blocks * block_len`` recorded keys,
    then the packed ones."""
    _check_packed(full, part, plan, T, name)
    qd, kd = query_dim(name) - 1, _key_dim(name)  # dimensions of one row (batch dimension dropped)
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
    """What ``index_query(_merge_suffix(full, part, ...), name, rows, pos)`` gives, gathered from the packed
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
    base = index_query(full, name, r, p)
    got = index_query(part, name, torch.where(inside, of["pack"], 0), torch.where(inside, o + p - c, 0))
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
