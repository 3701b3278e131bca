"""Causal tracing (Meng et al., 2022): where does the model recall a fact?

Taught in: Chapter 3 (locating facts before editing them).

Recipe: run the prompt clean; corrupt the subject tokens' input embeddings with Gaussian noise
(``noise`` times the embedding standard deviation, seeded, ``n_samples`` noisy runs); then put
back one clean activation at one (token, layer) and see how much of the correct answer's
probability comes back. Indirect effect = p(corrupted + restored) - p(corrupted).

Three kinds of restoration: ``"hidden"`` (the residual stream after block l), ``"mlp"`` and
``"attn"`` (the MLP / attention outputs of a *window* of layers around l, as ROME does; the
window is a parameter, ROME used 10 of 48 layers in GPT-2 XL).

Speed: layers before the restoration are identical to the corrupted run, so each restored run
starts from the cached corrupted residual stream and runs only the blocks from there up
(:mod:`editlens.block_runner`; the bridge's ``start_at_layer`` still runs the blocks below), the
logits only at the last position; all restored tokens of one layer go in one batch.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from editlens.anatomy import embedding_scale
from editlens.block_runner import (
    BlockCalls,
    record_block_calls,
    run_from_layer,
    supports_block_runs,
)
from editlens.data import FactLike, as_request
from editlens.precision import full_precision
from editlens.rome.keys import encode, subject_last_index
from editlens.scoring import HookList, with_leading_space

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

KINDS = ("hidden", "mlp", "attn")
_HOOK = {"hidden": "blocks.{}.hook_resid_post", "mlp": "blocks.{}.hook_mlp_out", "attn": "blocks.{}.hook_attn_out"}


@dataclass
class TraceResult:
    """Restored probabilities for one fact and one kind: ``scores[t, l]`` = p(answer | corrupted, restored at t, l)."""

    scores: Float[Tensor, "pos layer"]
    p_clean: float
    p_corrupted: float
    token_strs: list[str]
    subject_range: tuple[int, int]  # [start, end) token indices of the subject, counting BOS
    kind: str
    window: int
    answer: str
    positions: list[int] = field(default_factory=list)  # which tokens were traced (rows of scores)

    @property
    def indirect_effect(self) -> Float[Tensor, "pos layer"]:
        """p(corrupted + restored) - p(corrupted)."""
        return self.scores - self.p_corrupted

    @property
    def subject_last(self) -> int:
        return self.subject_range[1] - 1


def subject_token_range(model: TransformerBridge, prompt_template: str, subject: str) -> tuple[list[int],
                        tuple[int, int]]:
    """Token ids of the prompt and the [start, end) range of the subject's tokens (BOS counted)."""
    ids, last = subject_last_index(model, prompt_template, subject)
    before = prompt_template.split("{}")[0].rstrip()  # " France" carries its own leading space
    start = min(len(encode(model, before)), last)
    return ids, (start, last + 1)


@torch.no_grad()
def embedding_std(model: TransformerBridge, subjects: Sequence[str] | None = None) -> float:
    """Std of input embeddings: over the given subjects' tokens (as ROME), or over the whole W_E.

    Measured as the residual stream receives them (``hook_embed``, where the noise is added): a model that
    scales its embeddings (Gemma multiplies them by sqrt(d_model)) is measured after the scale."""
    W_E = model.W_E.detach()
    if not subjects:
        scale, std = embedding_scale(model), float(W_E.float().std())
        return std if scale == 1.0 else std * scale
    ids = sorted({i for s in subjects for i in encode(model, " " + s, bos=False)})
    return float(model.embed(torch.tensor([ids], device=W_E.device)).float().std())


def _noise(n_samples: int, n_subj: int, d_model: int, scale: float, seed: int, device: Any) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_samples, n_subj, d_model, generator=g) * scale).to(device)


def _answer_id(model: TransformerBridge, answer: str | None, clean_logits: Tensor) -> tuple[int, str]:
    if answer is None:
        i = int(clean_logits.argmax())
        return i, model.tokenizer.decode([i])
    ids = encode(model, with_leading_space(answer), bos=False)
    return ids[0], model.tokenizer.decode(ids[:1])


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """Layers restored around ``layer`` (ROME's convention: window//2 below, the rest from ``layer`` up)."""
    lo = max(0, layer - window // 2)
    hi = min(n_layers, layer - (-window // 2))
    return list(range(lo, max(hi, lo + 1)))


@torch.no_grad()
def trace_fact(
    model: TransformerBridge,
    fact: FactLike,
    kind: str = "hidden",
    *,
    window: int = 6,
    n_samples: int = 10,
    noise: float = 3.0,
    noise_std: float | None = None,
    seed: int = 0,
    positions: Iterable[int] | str | None = None,
    answer: str | None = None,
    batch_layers: bool = True,
) -> TraceResult:
    """Trace one fact (anything :func:`editlens.data.as_request` reads: a record, a request, a dict).

    ``positions``: token indices to trace (default all; ``"subject_last"`` or ``"last"`` for one).
    ``answer``: defaults to the fact's ``target_true``; ``None`` there means the clean top token.
    ``batch_layers``: restore at every layer in one pass (:func:`_scores_all_layers`, the default where
    :func:`editlens.block_runner.supports_block_runs`); False: one batch per layer (same numbers up to float noise).
    Returns a :class:`TraceResult`; ``result.indirect_effect`` is the heatmap [n_tokens, n_layers].
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    req = as_request(fact)
    prompt, subject = req.prompt, req.subject
    answer = answer if answer is not None else req.target_true
    ids, (s0, s1) = subject_token_range(model, prompt, subject)
    n_tok, L = len(ids), model.cfg.n_layers
    dev = model.cfg.device
    tokens = torch.tensor([ids], device=dev)
    scale = noise * (noise_std if noise_std is not None else embedding_std(model))
    eps = _noise(n_samples, s1 - s0, model.cfg.d_model, scale, seed, dev)

    clean_logits, clean_calls, clean_cache = record_block_calls(model, tokens, keep=_names(L))
    tgt, answer_str = _answer_id(model, answer, clean_logits[0, -1])
    p_clean = float(torch.softmax(clean_logits[0, -1].float(), -1)[tgt])
    if positions is None:
        pos = list(range(n_tok))
    elif positions == "subject_last":
        pos = [s1 - 1]
    elif positions == "last":
        pos = [n_tok - 1]
    elif isinstance(positions, str):
        raise ValueError(f"positions={positions!r}: pass None, \"subject_last\", \"last\" or a list of token "
                         "positions.")
    else:
        pos = list(positions)
    if batch_layers and supports_block_runs(model):
        scores, p_corr = _scores_all_layers(model, tokens, kind, pos, eps, s0, s1, tgt, clean_cache, clean_calls,
                                            window)
    else:
        scores, p_corr = _scores_layer_by_layer(model, tokens, kind, pos, eps, s0, s1, tgt, clean_cache, window,
                                                n_samples)
    strs = [model.tokenizer.decode([i]) for i in ids]
    return TraceResult(scores=scores, p_clean=p_clean, p_corrupted=p_corr, token_strs=strs, subject_range=(s0, s1),
                       kind=kind, window=window if kind != "hidden" else 1, answer=answer_str, positions=pos)



def _scores_layer_by_layer(model: TransformerBridge, tokens: Tensor, kind: str, pos: list[int], eps: Tensor, s0: int,
                           s1: int,
                           tgt: int, clean_cache: dict[str, Tensor], window: int, n_samples: int
                           ) -> tuple[Tensor, float]:
    """Restored probabilities ``[len(pos), n_layers]`` and p(corrupted), one batch per layer (any model)."""
    n_tok, L = tokens.shape[1], model.cfg.n_layers
    # One corrupted run for every restored position at once: the rows for position j are the n_samples noisy
    # runs again, so the block arguments recorded here fit each layer's restored batch.
    tiled = eps.repeat(len(pos), 1, 1)

    def corrupt(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[:, s0:s1] = act[:, s0:s1] + tiled.to(act.dtype)
        return act

    corr_logits, calls, corr_cache = record_block_calls(model, tokens.expand(len(pos) * n_samples, -1),
                                                        [("hook_embed", corrupt)], keep=_names(L), keep_rows=n_samples)
    fast = supports_block_runs(model)
    p_corr = float(torch.softmax(corr_logits[:n_samples, -1].float(), -1)[:, tgt].mean())

    scores = torch.zeros(len(pos), L)
    for layer in range(L):
        if kind == "hidden":
            start = layer + 1
            x = corr_cache[f"blocks.{layer}.hook_resid_post"][:n_samples].repeat(len(pos), 1, 1)
            for j, t in enumerate(pos):
                x[j * n_samples:(j + 1) * n_samples, t] = clean_cache[f"blocks.{layer}.hook_resid_post"][0, t]
            hooks: HookList = []
        else:
            layers = window_layers(layer, window, L)
            start = layers[0]
            x = corr_cache[f"blocks.{start}.hook_resid_pre"][:n_samples].repeat(len(pos), 1, 1)
            hooks = []
            for l in layers:
                name = _HOOK[kind].format(l)
                clean_act = clean_cache[name][0]

                def restore(act: Tensor, hook: Any, clean_act: Tensor = clean_act) -> Tensor:
                    act = act.clone()
                    for j, t in enumerate(pos):
                        act[j * n_samples:(j + 1) * n_samples, t] = clean_act[t]
                    return act

                hooks.append((name, restore))
        if fast:  # only the blocks from `start` up, and logits only at the last position
            logits = run_from_layer(model, x, start, calls, fwd_hooks=hooks, positions=slice(n_tok - 1, n_tok))
        elif start >= L:
            logits = model.run_with_hooks(x, start_at_layer=L, fwd_hooks=hooks) if _supports_start_at_end(model, x) \
                else model.unembed(model.ln_final(x))
        else:
            logits = model.run_with_hooks(x, start_at_layer=start, fwd_hooks=hooks)
        p = torch.softmax(logits[:, -1].float(), -1)[:, tgt].view(len(pos), n_samples).mean(-1)
        scores[:, layer] = p.cpu()
    return scores, p_corr


MAX_ROWS = 4096
"""Most restored runs :func:`_scores_all_layers` pushes through the blocks at once (more are split by layer)."""


def _scores_all_layers(model: TransformerBridge, tokens: Tensor, kind: str, pos: list[int], eps: Tensor, s0: int,
                       s1: int,
                       tgt: int, clean_cache: dict[str, Tensor], calls: BlockCalls, window: int,
                       max_rows: int | None = None) -> tuple[Tensor, float]:
    """Restored probabilities ``[len(pos), n_layers]`` and p(corrupted), every layer's restorations in one pass.

    Each restored run (layer l, position t, noise sample s) starts at its own block: l + 1 for ``"hidden"`` (the
    corrupted residual stream with position t replaced by the clean one), the window's first layer otherwise
    (restoring t's MLP or attention output at each layer of the window). Below its start a run IS the corrupted
    run, so the runs join the batch block by block (a staircase) and each block runs once, on every run that has
    started, instead of once per layer: the same products in larger batches. ``calls`` are the blocks' arguments
    recorded on the clean run (batch 1, broadcast to the batch). Logits only at the last position."""
    n_tok, L = tokens.shape[1], model.cfg.n_layers
    S, P = eps.shape[0], len(pos)
    names = _names(L)

    def corrupt(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[:, s0:s1] = act[:, s0:s1] + eps.to(act.dtype)
        return act

    corr_logits, _, corr = record_block_calls(model, tokens.expand(S, -1), [("hook_embed", corrupt)], keep=names)
    p_corr = float(torch.softmax(corr_logits[:, -1].float(), -1)[:, tgt].mean())
    if kind == "hidden":
        starts = {layer: layer + 1 for layer in range(L)}
    else:
        starts = {layer: window_layers(layer, window, L)[0] for layer in range(L)}
    order = sorted(range(L), key=lambda layer: starts[layer])
    per_group = max(1, (max_rows or MAX_ROWS) // (P * S))
    scores = torch.zeros(P, L)
    t_of_row = torch.tensor(pos).repeat_interleave(S)  # one layer's rows: position j's S samples, j = 0..P-1
    for g in range(0, L, per_group):
        group = order[g:g + per_group]
        first = starts[group[0]]
        hooks = []
        if kind != "hidden":  # layer i restores, in the rows of every run whose window holds i, the run's position
            for i in range(first, L):
                rows = [k * P * S + r for k, layer in enumerate(group) if i in window_layers(layer, window, L)
                        for r in range(P * S)]
                if not rows:
                    continue
                r_idx = torch.tensor(rows)
                t_idx = t_of_row[r_idx % (P * S)]
                clean_act = clean_cache[_HOOK[kind].format(i)][0]

                def restore(act: Tensor, hook: Any, r_idx: Tensor = r_idx, t_idx: Tensor = t_idx,
                            clean_act: Tensor = clean_act) -> Tensor:
                    act = act.clone()
                    act[r_idx.to(act.device), t_idx.to(act.device)] = clean_act[t_idx.to(act.device)].to(act.dtype)
                    return act

                hooks.append((_HOOK[kind].format(i), restore))

        def entering(layer: int) -> Tensor:  # the P * S runs of `layer`, entering block starts[layer]
            if kind == "hidden":
                x = corr[f"blocks.{layer}.hook_resid_post"].repeat(P, 1, 1)
                for j, t in enumerate(pos):
                    x[j * S:(j + 1) * S, t] = clean_cache[f"blocks.{layer}.hook_resid_post"][0, t]
                return x
            return corr[f"blocks.{starts[layer]}.hook_resid_pre"].repeat(P, 1, 1)

        h = None
        with model.hooks(fwd_hooks=hooks):
            for i in range(first, L + 1):
                joining = [entering(layer) for layer in group if starts[layer] == i]
                if joining:
                    h = torch.cat([h, *joining]) if h is not None else torch.cat(joining)
                if i == L:
                    break
                args, kwargs = calls.calls[i]
                out = model.blocks[i](h, *args, **kwargs)
                h = out[0] if isinstance(out, (tuple, list)) else out
            assert h is not None  # every run enters at some block below L
            last = h[:, n_tok - 1:n_tok]
            p = torch.cat([torch.softmax(model.unembed(model.ln_final(last[c:c + 256]))[:, -1].float(), -1)[:, tgt]
                           for c in range(0, last.shape[0], 256)])
        p = p.view(len(group), P, S).mean(-1).cpu()
        for k, layer in enumerate(group):
            scores[:, layer] = p[k]
    return scores, p_corr


def _names(L: int) -> set[str]:
    names = set()
    for l in range(L):
        names |= {f"blocks.{l}.hook_resid_post", f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_mlp_out",
                  f"blocks.{l}.hook_attn_out"}
    return names


_START_AT_END: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # per model, held weakly


def _supports_start_at_end(model: TransformerBridge, x: Tensor) -> bool:
    """Can ``model`` start a forward pass after its last block? Tried once per model object."""
    if model not in _START_AT_END:
        try:
            model.run_with_hooks(x[:1], start_at_layer=model.cfg.n_layers)
            _START_AT_END[model] = True
        except Exception:
            _START_AT_END[model] = False
    return _START_AT_END[model]


def trace_all_kinds(model: TransformerBridge, fact: Any, *, kinds: Sequence[str] = KINDS, **kwargs: Any) -> dict[str,
                    TraceResult]:
    """:func:`trace_fact` for each kind (the three heatmaps of ROME's Figure 1)."""
    return {k: trace_fact(model, fact, k, **kwargs) for k in kinds}


@dataclass
class AveragedTrace:
    """Indirect effects averaged over facts, at the subject's last token and the last prompt token."""

    subject_last: dict[str, Float[Tensor, "layer"]]  # kind -> mean IE per layer
    last: dict[str, Float[Tensor, "layer"]]
    per_fact_subject_last: dict[str, Float[Tensor, "n_facts layer"]]
    p_clean: list[float]
    p_corrupted: list[float]
    n_facts: int
    n_skipped: int
    window: int
    traced: list[str] = field(default_factory=list)  # prompts of the facts averaged
    skipped: list[str] = field(default_factory=list)  # prompts of the facts left out (not known by the model)

    def best_layer(self, kind: str = "mlp") -> int:
        """Layer whose restoration at the subject's last token brings back most probability."""
        return int(self.subject_last[kind].argmax())


@torch.no_grad()
def average_indirect_effects(
    model: TransformerBridge,
    facts: Sequence[Any],
    *,
    kinds: Sequence[str] = KINDS,
    window: int = 6,
    n_samples: int = 10,
    noise: float = 3.0,
    seed: int = 0,
    only_known: bool = True,
    include_last: bool = True,
    progress: bool = True,
) -> AveragedTrace:
    """Average indirect effects over facts at (subject last token, layer): picks the edit layer (Chapter 3).

    ``only_known``: skip facts whose clean top-1 token is not the answer's first token (a model
    cannot recall what it does not know), decided in float32 whatever the model's precision; the prompts
    traced and skipped are in ``traced`` and ``skipped``. The noise std is taken over all facts' subjects (ROME).
    """
    from tqdm import tqdm

    reqs = [as_request(f) for f in facts]
    std = embedding_std(model, [r.subject for r in reqs])
    sub: dict[str, list[Tensor]] = {k: [] for k in kinds}
    last: dict[str, list[Tensor]] = {k: [] for k in kinds}
    pc, pk, traced, skipped = [], [], [], []
    for r in tqdm(reqs, disable=not progress, desc="causal tracing"):
        if only_known:
            ids = encode(model, r.text)
            with full_precision(model):  # which facts are known must not depend on the precision (near-ties)
                logits = model(torch.tensor([ids], device=model.cfg.device))[0, -1]
            ans = encode(model, with_leading_space(r.target_true or ""), bos=False)
            if not ans or int(logits.argmax()) != ans[0]:
                skipped.append(r.text)
                continue
        traced.append(r.text)
        for k in kinds:
            res = trace_fact(model, r, k, window=window, n_samples=n_samples, noise=noise, noise_std=std, seed=seed,
                             positions=traced_positions(model, r, include_last))
            sub[k].append(res.indirect_effect[0])
            if include_last:
                last[k].append(res.indirect_effect[-1])
        pc.append(res.p_clean)
        pk.append(res.p_corrupted)
    if not pc:
        raise ValueError("No fact was known by the model (clean top-1 = answer); pass only_known=False or other facts.")
    L = model.cfg.n_layers
    return AveragedTrace(
        subject_last={k: torch.stack(v).mean(0) for k, v in sub.items()},
        last={k: (torch.stack(v).mean(0) if v else torch.zeros(L)) for k, v in last.items()},
        per_fact_subject_last={k: torch.stack(v) for k, v in sub.items()},
        p_clean=pc, p_corrupted=pk, n_facts=len(pc), n_skipped=len(skipped), window=window,
        traced=traced, skipped=skipped,
    )


#: The settings a model's edit layer is chosen with (Chapter 3, ``scripts/choose_edit_layer.py``): single-layer
#: MLP restoration, 10 noisy runs per fact, noise 3 embedding stds, seed 0.
EDIT_LAYER_TRACING: dict[str, Any] = {"kinds": ("mlp",), "window": 1, "n_samples": 10, "noise": 3.0, "seed": 0}


def trace_mlps(model: TransformerBridge, facts: Sequence[Any], *, model_name: str, facts_source: str,
               progress: bool = True) -> tuple[AveragedTrace, dict[str, Any]]:
    """Causal tracing of the MLPs on ``facts`` with :data:`EDIT_LAYER_TRACING`, and the record a run stores as
    ``tracing.json``: the settings, the facts traced and skipped (with the relation of each traced one), the clean
    and corrupted probabilities, the mean indirect effect per layer and each fact's. ``facts_source`` says where
    the facts came from (an expression a reader can rerun). One writer for the edit-layer choice (Setup, "The
    second model") and the "Method or model?" page."""
    start = time.perf_counter()
    tr = average_indirect_effects(model, facts, progress=progress, **EDIT_LAYER_TRACING)
    traced = set(tr.traced)
    settings = {k: v for k, v in EDIT_LAYER_TRACING.items() if k != "kinds"}
    summary = {
        "model": model_name, "facts": facts_source, "kind": "mlp", **settings,
        "n_layers": model.cfg.n_layers, "n_traced": tr.n_facts, "n_skipped": tr.n_skipped,
        "traced": tr.traced, "skipped": tr.skipped,
        "relation_of_traced": [r.relation_id for r in map(as_request, facts) if r.text in traced],
        "p_clean": [float(p) for p in tr.p_clean], "p_corrupted": [float(p) for p in tr.p_corrupted],
        "mean_p_clean": sum(tr.p_clean) / len(tr.p_clean),
        "mean_p_corrupted": sum(tr.p_corrupted) / len(tr.p_corrupted),
        "indirect_effect_subject_last": [float(x) for x in tr.subject_last["mlp"]],
        "indirect_effect_last": [float(x) for x in tr.last["mlp"]],
        "per_fact_subject_last": tr.per_fact_subject_last["mlp"].tolist(),
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }
    return tr, summary


def traced_positions(model: TransformerBridge, r: Any, include_last: bool = True) -> list[int]:
    """The positions Chapter 3 averages: the subject's last token, and the last token when ``include_last``."""
    ids, s_last = subject_last_index(model, r.prompt, r.subject)
    return [s_last, len(ids) - 1] if include_last else [s_last]


def plot_trace(result: TraceResult, ax: Any = None, *, title: str | None = None) -> Any:
    """Heatmap of the indirect effect (tokens down, layers across), subject tokens marked with '*'."""
    import matplotlib.pyplot as plt

    from editlens.display import COLUMN_INCHES

    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 0.35 * len(result.positions) + 1.5))
    cmap = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}[result.kind]
    im = ax.imshow(result.scores.numpy(), aspect="auto", cmap=cmap, vmin=result.p_corrupted)
    ax.grid(False)  # the book's style draws a grid; across a heatmap's cells it reads as cell borders
    labels = [result.token_strs[t] + ("*" if result.subject_range[0] <= t < result.subject_range[1] else "")
              for t in result.positions]
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("layer" + (f" (window {result.window})" if result.kind != "hidden" else ""))
    ax.set_title(title or f"restoring {result.kind}: p({result.answer!r}) clean {result.p_clean:.2f}, "
                 f"corrupted {result.p_corrupted:.2f}")
    plt.colorbar(im, ax=ax)
    return ax
