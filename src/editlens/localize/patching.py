"""Methods (b) activation patching and (c) attribution patching, per head, on inconsistent pairs.

Taught in: Chapter 1 (a causal check of the probe map, and its cheap gradient approximation).

For an inconsistent pair the *source* is the paraphrase whose answer is the query's reference
answer (its majority answer over all templates by default, or the gold object), the *target* the
other one. ``good`` is the source's answer, ``bad`` the target's. The metric on a run of the target
prompt is the logit-difference analogue for possibly multi-token answers,

    LD = mean log p(" " + good) - mean log p(" " + bad)       (teacher-forced, per token)

i.e. exactly the comparison that decides the answer (:mod:`editlens.consistency`). Unpatched,
LD <= 0 (the target chose ``bad``); on the source prompt LD_clean >= 0.

(b) Activation patching: for each head (l, h), replace the target run's hook_z[l, last, h] by the
    source run's and re-run: effect = LD_patched - LD_corrupt, averaged over pairs, and the flip
    rate, the fraction of pairs whose ``good`` now beats ``bad`` (a two-answer proxy for
    agreement: re-ranking all candidates for every head would cost n_candidates times more).
    One forward pass per head: 270 on SmolLM2.
(c) Attribution patching (Nanda 2023; Syed et al. 2023): the first-order Taylor estimate
    effect ~= (z_source - z_target) . dLD/dz at the last token, for all heads from one forward and
    one backward pass of the target run (plus the source run both methods need).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from editlens.block_runner import BlockCalls, record_block_calls, run_from_layer, supports_block_runs
from editlens.localize.activations import z_hook_name
from editlens.scoring import ScoringPlan, TokenCache, item_logprobs, model_device, pad_id, pad_rows


@dataclass
class PatchSet:
    """Inconsistent pairs oriented source -> target (lists aligned)."""

    source_prompt: list[str]
    target_prompt: list[str]
    good: list[str]  # the source's (reference) answer
    bad: list[str]   # the target's answer
    pair_row: list[int]  # row of the pairs DataFrame it came from

    def __len__(self) -> int:
        return len(self.good)

    def subset(self, idx: Sequence[int]) -> "PatchSet":
        return PatchSet(*[[getattr(self, f)[i] for i in idx] for f in ("source_prompt", "target_prompt", "good", "bad", "pair_row")])


def patch_set(pairs: pd.DataFrame, *, reference: str = "majority", max_pairs: int | None = None, seed: int = 0) -> PatchSet:
    """Orient the inconsistent pairs of ``pairs`` (from :func:`make_pairs`).

    ``reference="majority"``: the source is the prompt that gave the query's majority answer;
    ``"gold"``: the one that gave the gold object. Pairs where neither prompt gave the reference
    are skipped. ``max_pairs`` keeps a seeded random subset (order preserved)."""
    if reference not in ("majority", "gold"):
        raise ValueError("reference must be 'majority' or 'gold'")
    out = PatchSet([], [], [], [], [])
    for i, r in enumerate(pairs.itertuples(index=False)):
        if r.consistent:
            continue
        ref = r.majority if reference == "majority" else r.object
        if r.answer_p == ref:
            src, tgt, bad = r.prompt_p, r.prompt_q, r.answer_q
        elif r.answer_q == ref:
            src, tgt, bad = r.prompt_q, r.prompt_p, r.answer_p
        else:
            continue
        out.source_prompt.append(src); out.target_prompt.append(tgt); out.good.append(ref); out.bad.append(bad)
        out.pair_row.append(i)
    if max_pairs is not None and len(out) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(out), max_pairs, replace=False))
        out = out.subset(keep.tolist())
    return out


@dataclass
class PatchingResult:
    """Per-head maps ``[n_layers, n_heads]`` averaged over pairs, plus the unpatched baselines."""

    effect: np.ndarray        # mean change of LD (b: measured; c: first-order estimate)
    flip_rate: np.ndarray     # fraction of pairs with LD > 0 after patching (c: estimated)
    ld_clean: float           # mean LD on the source prompts
    ld_corrupt: float         # mean LD on the target prompts, unpatched
    n_pairs: int
    method: str
    seconds: float

    @property
    def normalised_effect(self) -> np.ndarray:
        """``effect / (ld_clean - ld_corrupt)``: 1 would mean one head restores the whole gap."""
        return self.effect / (self.ld_clean - self.ld_corrupt)


class _Batch:
    """Token rows of a chunk of pairs: source rows (clean) and target rows (corrupt), tagged by pair."""

    def __init__(self, model, enc: TokenCache, ps: PatchSet):
        self.n = len(ps)
        self.clean, self.corrupt = ScoringPlan(), ScoringPlan()
        self.clean_items, self.corrupt_items = [], []  # per pair: (good item, bad item)
        for k in range(self.n):
            g, b = enc.answer(ps.good[k]), enc.answer(ps.bad[k])
            s, t = enc.prompt(ps.source_prompt[k]), enc.prompt(ps.target_prompt[k])
            self.clean_items.append((self.clean.add(s, g, tag=k), self.clean.add(s, b, tag=k)))
            self.corrupt_items.append((self.corrupt.add(t, g, tag=k), self.corrupt.add(t, b, tag=k)))
        dev, pad = model_device(model), pad_id(model)
        self.dev = dev
        self.clean_tokens = pad_rows(self.clean.rows, pad, dev)
        self.corrupt_tokens = pad_rows(self.corrupt.rows, pad, dev)
        self.clean_last = torch.tensor(self.clean.last_pos, device=dev)
        self.corrupt_last = torch.tensor(self.corrupt.last_pos, device=dev)
        # pair owning each corrupt row, and the clean row holding each pair's source activation
        self.corrupt_row_pair = torch.empty(len(self.corrupt.rows), dtype=torch.long, device=dev)
        for k, (ig, ib) in enumerate(self.corrupt_items):
            self.corrupt_row_pair[self.corrupt.item_row[ig]] = k
            self.corrupt_row_pair[self.corrupt.item_row[ib]] = k
        self.clean_row_of_pair = torch.tensor([self.clean.item_row[ig] for ig, _ in self.clean_items], device=dev)

    def ld(self, logits: Tensor, which: str) -> Float[Tensor, "pair"]:
        plan, items = (self.clean, self.clean_items) if which == "clean" else (self.corrupt, self.corrupt_items)
        flat = [i for pair in items for i in pair]
        lp = item_logprobs(logits, plan, list(range(len(plan.rows))), flat).view(self.n, 2)
        return lp[:, 0] - lp[:, 1]


def _clean_pass(model, batch: _Batch) -> tuple[Float[Tensor, "pair layer head d_head"], Tensor]:
    L = model.cfg.n_layers
    names = {z_hook_name(l) for l in range(L)}
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch.clean_tokens, names_filter=lambda n: n in names)
        rows = batch.clean_row_of_pair
        z = torch.stack([cache[z_hook_name(l)][rows, batch.clean_last[rows]] for l in range(L)], dim=1)
        return z, batch.ld(logits, "clean")


def _check_nonempty(ps: PatchSet) -> None:
    if len(ps) == 0:
        raise ValueError("no inconsistent pairs to patch: every pair agrees (or none has the reference answer); "
                         "use more queries, or reference='gold'/'majority' accordingly")


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield list(range(s, min(n, s + size)))


def activation_patching(
    model, ps: PatchSet, *, batch_size: int = 16, heads: Sequence[tuple[int, int]] | None = None, progress: bool = False,
) -> PatchingResult:
    """Method (b): patch each head's last-token hook_z from source into target, one head at a time.

    ``heads`` restricts the sweep (others stay NaN). Cost: (number of heads + 2) forward passes per
    chunk of ``batch_size`` pairs."""
    _check_nonempty(ps)
    t0 = time.perf_counter()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = [(l, h) for l in range(L) for h in range(H)] if heads is None else list(heads)
    enc = TokenCache(model)
    eff_sum, flip_sum = np.zeros((L, H)), np.zeros((L, H))
    ld_clean, ld_corrupt = [], []
    it = heads
    if progress:
        from tqdm import tqdm
        it = tqdm(heads, desc="heads")
    chunks = [_Batch(model, enc, ps.subset(idx)) for idx in _chunks(len(ps), batch_size)]
    # The blocks below the patched layer compute what the unpatched corrupted run computed, so each patched run
    # starts at the patched layer from that run's residual stream (editlens.block_runner; same numbers, about
    # half the work).
    from_layer = supports_block_runs(model)
    srcs: list[Tensor] = []
    bases: list[Tensor] = []
    resids: list[dict[str, Tensor] | None] = []  # with calls: None where blocks are not run one by one
    calls: list[BlockCalls | None] = []
    with torch.no_grad():
        for b in chunks:
            z_src, ldc = _clean_pass(model, b)
            if from_layer:
                logits, c, resid = record_block_calls(model, b.corrupt_tokens,
                                                      keep=[f"blocks.{layer}.hook_resid_pre" for layer in range(L)])
                resids.append(resid); calls.append(c)
            else:
                logits = model(b.corrupt_tokens)
                resids.append(None); calls.append(None)
            base = b.ld(logits, "corrupt")
            srcs.append(z_src); bases.append(base)
            ld_clean.append(ldc.cpu()); ld_corrupt.append(base.cpu())
        for (l, h) in it:
            for b, z_src, base, resid_b, c_b in zip(chunks, srcs, bases, resids, calls):
                rows = torch.arange(len(b.corrupt.rows), device=b.dev)

                def hook(z, hook=None, l=l, h=h, b=b, z_src=z_src, rows=rows):
                    z = z.clone()
                    z[rows, b.corrupt_last, h] = z_src[b.corrupt_row_pair, l, h].to(z.dtype)
                    return z

                if c_b is not None and resid_b is not None:
                    ld = b.ld(run_from_layer(model, resid_b[f"blocks.{l}.hook_resid_pre"], l, c_b,
                                             fwd_hooks=[(z_hook_name(l), hook)]), "corrupt")
                else:
                    with model.hooks(fwd_hooks=[(z_hook_name(l), hook)]):
                        ld = b.ld(model(b.corrupt_tokens), "corrupt")
                eff_sum[l, h] += float((ld - base).sum())
                flip_sum[l, h] += float((ld > 0).sum())
    n = len(ps)
    eff, flip = np.full((L, H), np.nan), np.full((L, H), np.nan)
    for (l, h) in heads:
        eff[l, h], flip[l, h] = eff_sum[l, h] / n, flip_sum[l, h] / n
    return PatchingResult(effect=eff, flip_rate=flip, ld_clean=float(torch.cat(ld_clean).mean()),
                          ld_corrupt=float(torch.cat(ld_corrupt).mean()), n_pairs=n, method="activation",
                          seconds=time.perf_counter() - t0)


def attribution_patching(model, ps: PatchSet, *, batch_size: int = 16) -> PatchingResult:
    """Method (c): (z_source - z_target) . dLD/dz_target at the last token, all heads at once.

    Per chunk: one forward without gradients on the source prompts (for z_source and LD_clean) and
    one forward + backward on the target prompts. Gradients are taken w.r.t. a zero tensor added to
    each layer's hook_z, so every path (including through later layers' attention) is counted and
    no parameter gradients are accumulated."""
    _check_nonempty(ps)
    t0 = time.perf_counter()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    enc = TokenCache(model)
    per_pair_attr, ld_clean, ld_corrupt = [], [], []
    for idx in _chunks(len(ps), batch_size):
        b = _Batch(model, enc, ps.subset(idx))
        z_src, ldc = _clean_pass(model, b)
        deltas: dict[int, Tensor] = {}
        zs: dict[int, Tensor] = {}

        def make_hook(layer: int):
            def hook(z, hook=None):
                d = torch.zeros_like(z, requires_grad=True)
                deltas[layer], zs[layer] = d, z.detach()
                return z + d
            return hook

        hooks = [(z_hook_name(l), make_hook(l)) for l in range(L)]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            ld = b.ld(model(b.corrupt_tokens), "corrupt")
            grads = torch.autograd.grad(ld.sum(), [deltas[l] for l in range(L)])
        rows = torch.arange(len(b.corrupt.rows), device=b.dev)
        attr_rows = []
        for l in range(L):
            g = grads[l][rows, b.corrupt_last]                     # [row, H, d]
            dz = z_src[b.corrupt_row_pair, l] - zs[l][rows, b.corrupt_last]
            attr_rows.append((g * dz).sum(-1))                     # [row, H]
        a = torch.stack(attr_rows, dim=1)                          # [row, L, H]
        per_pair = torch.zeros(b.n, L, H, device=b.dev).index_add(0, b.corrupt_row_pair, a)
        per_pair_attr.append(per_pair.detach().cpu()); ld_clean.append(ldc.cpu()); ld_corrupt.append(ld.detach().cpu())
    A = torch.cat(per_pair_attr)                                   # [pair, L, H]
    base = torch.cat(ld_corrupt)
    return PatchingResult(effect=A.mean(0).numpy(), flip_rate=((base[:, None, None] + A) > 0).float().mean(0).numpy(),
                          ld_clean=float(torch.cat(ld_clean).mean()), ld_corrupt=float(base.mean()), n_pairs=len(ps),
                          method="attribution", seconds=time.perf_counter() - t0)
