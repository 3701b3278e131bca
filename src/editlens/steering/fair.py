"""A fair comparison of steering with fine-tuning, the open variants, and a diagnosis of the failure.

Taught in: Chapter 2 (issue #14: steering, SFT and LoRA on the same footing).

- :func:`evaluate_state`: one row for any model state (unedited, steered by hooks, fine-tuned or
  LoRA-adapted in place): consistency and accuracy per split, and the side effects (known facts,
  perplexity, open-ended agreement), through :mod:`editlens.consistency` and
  :mod:`editlens.steering.side_effects`.
- Choosing K and alpha: :func:`sweep_settings` (the validation sweep, several candidate directions
  at once), :func:`choose_setting` (the chapter's rule).
- Held-out tests with controls: :func:`controlled_evaluation` (a configuration and its controls on
  several splits, the unsteered model scored once), :class:`ControlledRun`.
- Intervals: :func:`steered_vs_controls` (paired per-query bootstrap of a steered state minus the
  unsteered model and minus its controls), :func:`per_query_scores`.
- Variants: :func:`probe_ranking` (heads ranked by Chapter 1's probes), :func:`control_shifts`
  (the chosen shifts with their random-head and random-direction controls); per-query centring is
  ``fit_directions(..., centre_by=answers["query_id"])``; last-token injection is ``position="last"``.
- Diagnosis: :func:`direction_stability`, :func:`answer_shift`, :func:`effect_per_relation`.
- Cost: :func:`cost_by_train_size` (steering vs SFT vs LoRA as the training set grows).

Every answer scored here runs :data:`editlens.scoring.ROWS_PER_BATCH` packed rows per forward pass
(``model_answers(..., rows_per_batch=...)``): several times faster in bfloat16 on a CPU, equal in
exact arithmetic.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from editlens import consistency as C
from editlens import sft
from editlens.scoring import ROWS_PER_BATCH
from editlens.steering import side_effects as SE
from editlens.steering.bake import baked
from editlens.steering.directions import (
    Directions,
    GroupIds,
    Head,
    check_heads,
    fit_directions,
    labels_from_answers,
    random_directions,
    random_heads,
)
from editlens.steering.inject import Position, steering_hooks

__all__ = [
    "DEFAULT_K_VALUES",
    "k_shares",
    "AnswerShift",
    "ControlledRun",
    "SideEffectData",
    "answer_shift",
    "choose_setting",
    "control_shifts",
    "controlled_evaluation",
    "cost_by_train_size",
    "direction_stability",
    "effect_per_relation",
    "evaluate_state",
    "per_query_scores",
    "probe_ranking",
    "steered_vs_controls",
    "sweep_settings",
]


# --------------------------------------------------------------------------------------------
# One evaluation for every model state
# --------------------------------------------------------------------------------------------

@dataclass
class SideEffectData:
    """What the side effects are measured on: facts records (known facts), texts (perplexity),
    open-ended questions (free-form agreement). Any of them may be empty to skip that measure.

    Taught in: Chapter 2."""

    facts: Sequence[Any] = ()
    texts: Sequence[str] = ()
    questions: Sequence[Any] = ()
    max_new_tokens: int = 24


def evaluate_state(
    model,
    splits: Mapping[str, Sequence[Any]],
    *,
    name: str = "",
    shifts: Mapping[Head, Tensor] | None = None,
    position: Position = "all",
    side: SideEffectData | None = None,
    batch_size: int = 32,
    answers_out: dict[str, pd.DataFrame] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One table row for the model *as it is now* (call it inside ``sft.finetuned(...)`` for a
    fine-tuned or LoRA state), optionally steered by ``shifts`` at ``position``.

    Columns: ``model`` (= ``name``), ``{split}_consistency`` and ``{split}_accuracy`` for every
    split (ParaRel macro averages, :func:`editlens.consistency.summary`), then, when ``side`` is
    given, ``known_rewrite``, ``known_neighbourhood``, ``perplexity``, ``generation_agreement``,
    and finally ``extra`` (e.g. ``seconds=...``). Side effects of ``position="all"`` steering are
    measured with the shift baked into o_proj biases (generation runs the HF model, which hooks do
    not reach); ``position="last"`` has no bias equivalent, so its side-effect columns are NaN.
    ``answers_out``: a dict that receives each split's answers frame (for :func:`answer_shift`).

    Taught in: Chapter 2."""
    if not splits:
        raise ValueError("splits is empty; pass e.g. {'validation': splits['validation']}.")
    if position not in ("all", "last"):
        raise ValueError(f"position must be 'all' or 'last', got {position!r}.")
    hooks = steering_hooks(shifts, position, model=model) if shifts else None
    row: dict[str, Any] = {"model": name}
    for split, queries in splits.items():
        answers = C.model_answers(model, queries, batch_size=batch_size, fwd_hooks=hooks,
                                  rows_per_batch=ROWS_PER_BATCH)
        s = C.summary(answers)
        row[f"{split}_consistency"], row[f"{split}_accuracy"] = s["consistency"], s["accuracy"]
        if answers_out is not None:
            answers_out[split] = answers
    if side is not None:
        cols = ("known_rewrite", "known_neighbourhood", "perplexity", "generation_agreement")
        if shifts and position == "last":
            row.update({c: math.nan for c in cols})
        else:
            ctx = baked(model, shifts) if shifts else contextlib.nullcontext()
            with ctx, torch.no_grad():
                known = SE.known_facts(model, side.facts) if side.facts else {}
                row["known_rewrite"] = known.get("rewrite", math.nan)
                row["known_neighbourhood"] = known.get("neighbourhood", math.nan)
                row["perplexity"] = SE.perplexity(model, side.texts) if side.texts else math.nan
                row["generation_agreement"] = (SE.generation_consistency(
                    model, side.questions, max_new_tokens=side.max_new_tokens)["agreement"]
                    if side.questions else math.nan)
    row.update(extra)
    return row


# --------------------------------------------------------------------------------------------
# Choosing K and alpha on validation
# --------------------------------------------------------------------------------------------

#: Chapter 2's default K values (its ``K_VALUES`` parameter) and the heads they are chosen among (SmolLM2-135M's 30
#: layers of 9 heads): another model's suggestion is the same shares of its heads.
DEFAULT_K_VALUES: tuple[int, ...] = (8, 16, 32, 64)
DEFAULT_MODEL_HEADS = 270


def k_shares(n_heads: int) -> list[int]:
    """:data:`DEFAULT_K_VALUES` as the same shares of a model with ``n_heads`` heads ([2, 4, 9, 17] for Gemma 3
    270M's 72). Taught in: Chapter 2 (section 6) and the "Method or model?" page."""
    return [max(1, round(k * n_heads / DEFAULT_MODEL_HEADS)) for k in DEFAULT_K_VALUES]


def sweep_settings(
    model,
    queries: Sequence[Any],
    directions: Mapping[str, Directions],
    ranking: Sequence[Head],
    k_values: Sequence[int],
    alphas: Sequence[float],
    *,
    position: Position = "all",
    answers_out: dict[tuple[str, int, float], pd.DataFrame] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The K x alpha sweep for every candidate in ``directions`` (name -> fitted
    :class:`~editlens.steering.directions.Directions`): steer the top-K heads of ``ranking`` with
    that candidate's shifts at strength alpha and score ``queries`` (validation). One row per
    (candidate, K, alpha): ``directions``, ``K``, ``alpha``, ``consistency``, ``accuracy``.
    ``answers_out`` receives each cell's answers under ``(name, K, alpha)``, so a chosen cell is
    not scored again. One progress bar for the whole sweep.

    Taught in: Chapter 2 (section 6: the uncentred and the per-query centred candidates)."""
    from tqdm import tqdm

    ks = [int(k) for k in k_values]
    if not directions or not ks or not alphas:
        raise ValueError("sweep_settings needs at least one candidate, one K and one alpha.")
    if max(ks) > len(ranking) or min(ks) < 1:
        raise ValueError(f"K values {ks} must lie in 1..{len(ranking)} (the ranking's length).")
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if max(ks) > n_heads // 2:
        # found on Gemma 3 270M (72 heads): the chapter's K = 64 failed at the controls, 13 minutes in
        raise ValueError(f"K = {max(ks)} is more than half of this model's {n_heads} heads: the random-head control "
                         f"(Chapter 2, sections 7 and 11) steers K heads outside the K chosen, so K can be at most "
                         f"{n_heads // 2}. Fix: K values of at most {n_heads // 2}, e.g. K_VALUES = {k_shares(n_heads)} "
                         f"(the default's shares of SmolLM2's {DEFAULT_MODEL_HEADS} heads).")
    rows = []
    cells = [(name, k, float(a)) for name in directions for k in ks for a in alphas]
    for name, k, alpha in tqdm(cells, disable=not progress, desc="K x alpha sweep"):
        hooks = steering_hooks(directions[name].shift(ranking[:k], alpha), position, model=model)
        answers = C.model_answers(model, queries, fwd_hooks=hooks, rows_per_batch=ROWS_PER_BATCH)
        summ = C.summary(answers)
        rows.append(dict(directions=name, K=k, alpha=alpha, consistency=summ["consistency"],
                         accuracy=summ["accuracy"]))
        if answers_out is not None:
            answers_out[(name, k, alpha)] = answers
    return pd.DataFrame(rows)


def choose_setting(sweep: pd.DataFrame, base_accuracy: float, max_accuracy_drop: float) -> pd.Series:
    """The chapter's validation rule, fixed before looking: among the sweep's rows whose accuracy is
    at most ``max_accuracy_drop`` below the unsteered model's (``base_accuracy``), the most
    consistent; ties go to the smaller K, then the smaller alpha. Returns that row.

    Taught in: Chapter 2."""
    need = {"K", "alpha", "consistency", "accuracy"}
    if not need <= set(sweep.columns) or sweep.empty:
        raise ValueError(f"sweep must be a non-empty frame with columns {sorted(need)}; pass sweep_settings' rows.")
    allowed = sweep[sweep["accuracy"] >= base_accuracy - max_accuracy_drop]
    if allowed.empty:
        raise ValueError(f"no setting keeps accuracy within {max_accuracy_drop} of the unsteered "
                         f"{base_accuracy:.3f}. Fix: smaller alphas, or a looser max_accuracy_drop.")
    return allowed.sort_values(["consistency", "K", "alpha"], ascending=[False, True, True]).iloc[0]


# --------------------------------------------------------------------------------------------
# Paired per-query intervals: a steered state against the unsteered model and its controls
# --------------------------------------------------------------------------------------------

def per_query_scores(frames: pd.DataFrame | Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-query ``consistency`` and ``accuracy`` (:func:`editlens.consistency.query_consistency`)
    of one model state, or the mean over several (a control's seeds), one row per ``query_id``."""
    if isinstance(frames, pd.DataFrame):
        frames = [frames]
    if not frames:
        raise ValueError("per_query_scores needs at least one answers frame.")
    tables = [C.query_consistency(f).set_index("query_id")[["consistency", "accuracy"]] for f in frames]
    if any(not t.index.equals(tables[0].index) for t in tables):
        raise ValueError("the answers frames cover different queries; score every state on the same queries.")
    return (sum(tables) / len(tables)).reset_index()


def steered_vs_controls(
    states: Mapping[str, pd.DataFrame | Sequence[pd.DataFrame]],
    steered: str = "steered",
    against: Sequence[str] = ("unsteered", "random heads", "random directions"),
    *,
    metrics: Sequence[str] = ("consistency", "accuracy"),
    seed: int = 0,
    n_boot: int = 2000,
) -> pd.DataFrame:
    """Paired per-query bootstrap intervals of ``steered`` minus each state in ``against``.

    ``states``: state name -> its answers frame on one split, or a list of frames (a control's
    seeds, averaged per query before differencing). Each query's score under ``steered`` minus its
    score under the other state, bootstrapped over queries (:func:`editlens.stats.paired_table`,
    ``n_boot`` seeded resamples). One row per (``against``, ``metric``): ``diff``, ``low``,
    ``high``, ``excludes_0`` and ``n`` (queries).

    Taught in: Chapter 2 (section 11: is the steered state better than nothing, and than its
    controls?)."""
    from editlens import stats

    missing = [k for k in (steered, *against) if k not in states]
    if missing:
        raise ValueError(f"states lacks {missing}; it has {list(states)}.")
    per_query = pd.concat([per_query_scores(states[k]).assign(method=k) for k in (steered, *against)])
    rows = []
    for other in against:
        t = stats.paired_table(per_query[per_query["method"].isin([other, steered])], list(metrics),
                               fact="query_id", baseline=other, n_boot=n_boot, seed=seed)
        for _, r in t[t["method"] == steered].iterrows():
            rows.append(dict(against=other, metric=r["metric"], n=int(r["n"]), diff=float(r[f"diff vs {other}"]),
                             low=float(r["diff low"]), high=float(r["diff high"]),
                             excludes_0=bool(r["CI excludes 0"])))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------

def probe_ranking(
    z: Float[Tensor, "prompt layer head d_head"],
    answers: pd.DataFrame,
    *,
    features: str = "concat",
    seed: int = 0,
    C_reg: float = 1.0,
) -> tuple[list[Head], np.ndarray]:
    """All heads ranked by the held-out accuracy of Chapter 1's pair probes
    (:func:`editlens.localize.probe_heads`) on the training pairs; ``z`` row i is ``answers`` row i
    (as returned by :func:`collect_training_activations`). Returns ``(ranking, accuracy[layer, head])``.

    Taught in: Chapter 2 (probe-ranked heads, the variant to attribution patching)."""
    from editlens import localize as LZ

    if z.dim() != 4 or len(answers) != z.shape[0]:
        raise ValueError(f"z must be [prompt, layer, head, d_head] with one row per answers row; got z "
                         f"{tuple(z.shape)} and {len(answers)} answers. Fix: pass collect_training_activations' output.")
    pairs = LZ.make_pairs(answers)
    if pairs.empty or pairs["consistent"].nunique() < 2:
        raise ValueError("the training pairs are all consistent (or all inconsistent): a probe needs both classes.")
    index = {p: i for i, p in enumerate(answers["prompt"])}
    res = LZ.probe_heads(z, pairs, index, features=features, seed=seed, C=C_reg, shuffled=False)
    L, H = res.accuracy.shape
    return LZ.select_heads(res.accuracy, L * H), res.accuracy


def control_shifts(
    z: Float[Tensor, "prompt layer head d_head"],
    labels: Any,
    heads: Sequence[Head],
    alpha: float,
    *,
    method: str = "mass_mean",
    centre_by: GroupIds | None = None,
    n_seeds: int = 2,
    seed: int = 0,
) -> list[tuple[str, int | None, dict[Head, Float[Tensor, "d_head"]]]]:
    """The shifts of one steering variant and its controls, as ``(kind, seed, shifts)``:
    ``"steered"`` (directions fitted on ``heads``), ``"random heads"`` (as many heads drawn outside
    ``heads``, directions fitted the same way, same alpha) and ``"random directions"`` (random unit
    directions on ``heads``, sigma measured the same way: on centred activations when
    ``centre_by`` is given), ``n_seeds`` of each control. The controls' seeds are ``seed``,
    ``seed + 1``, ...: with ``seed=0`` they are the controls of Chapter 2's section 7.

    Taught in: Chapter 2."""
    if z.dim() != 4:
        raise ValueError(f"z must be [prompt, layer, head, d_head], got shape {tuple(z.shape)}.")
    _, L, H, _ = z.shape
    hs = check_heads(heads, L, H)
    out: list[tuple[str, int | None, dict]] = []
    fitted = fit_directions(z, labels, heads=hs, method=method, seed=seed, centre_by=centre_by)
    out.append(("steered", None, fitted.shift(hs, alpha)))
    for s in range(seed, seed + n_seeds):
        other = random_heads(L, H, len(hs), exclude=hs, seed=s)
        d = fit_directions(z, labels, heads=other, method=method, seed=seed, centre_by=centre_by)
        out.append(("random heads", s, d.shift(other, alpha)))
        rand = random_directions(z, heads=hs, seed=s, centre_by=centre_by)
        out.append(("random directions", s, rand.shift(hs, alpha)))
    return out


@dataclass
class ControlledRun:
    """One steering configuration and its controls, scored on several splits.

    ``frames[split][kind]``: the answers frames of that state (``"unsteered"``, ``"steered"``, and a
    list over seeds for ``"random heads"`` / ``"random directions"``); ``rows``: one row per (split,
    kind, seed) with ``consistency`` and ``accuracy`` (ParaRel macro averages).

    Taught in: Chapter 2 (sections 7 and 11)."""

    frames: dict[str, dict[str, list[pd.DataFrame]]]
    rows: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Mean over the control seeds: one row per state (unsteered, steered, controls), columns
        ``(split, metric)``."""
        t = self.rows.groupby(["split", "kind"], sort=False)[["consistency", "accuracy"]].mean()
        return t.unstack("split").swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False) \
            .reindex(list(dict.fromkeys(self.rows["kind"])))

    def intervals(self, *, seed: int = 0, n_boot: int = 2000,
                  metrics: Sequence[str] = ("consistency", "accuracy")) -> pd.DataFrame:
        """:func:`steered_vs_controls` on every split: steered minus unsteered and minus each control
        (per query, the controls' seeds averaged), with a ``split`` column."""
        out = []
        for split, states in self.frames.items():
            against = [k for k in ("unsteered", "random heads", "random directions") if k in states]
            out.append(steered_vs_controls(states, "steered", against, metrics=metrics, seed=seed,
                                           n_boot=n_boot).assign(split=split))
        return pd.concat(out, ignore_index=True)


def controlled_evaluation(
    model,
    splits: Mapping[str, Sequence[Any]],
    shift_sets: Sequence[tuple[str, int | None, Mapping[Head, Tensor]]],
    *,
    position: Position = "all",
    unsteered: Mapping[str, pd.DataFrame] | None = None,
    progress: bool = True,
    desc: str = "states x splits",
) -> ControlledRun:
    """Score every state of ``shift_sets`` (:func:`control_shifts`' output) on every split, plus
    the unsteered model (taken from ``unsteered[split]`` when the caller has scored it already, so
    it is scored once for every configuration). One progress bar for the whole run.

    Taught in: Chapter 2 (sections 7 and 11)."""
    from tqdm import tqdm

    if not splits or not shift_sets:
        raise ValueError("controlled_evaluation needs at least one split and one shift set.")
    unsteered = dict(unsteered or {})
    todo: list[tuple[str, str | None, int | None, Mapping[Head, Tensor] | None]] = [
        (split, None, None, None) for split in splits if split not in unsteered]
    todo += [(split, kind, seed, shifts) for kind, seed, shifts in shift_sets for split in splits]
    frames: dict[str, dict[str, list[pd.DataFrame]]] = {s: {} for s in splits}
    for split in splits:
        if split in unsteered:
            frames[split]["unsteered"] = [unsteered[split]]
    for split, kind, seed, shifts in tqdm(todo, disable=not progress, desc=desc):
        hooks = steering_hooks(shifts, position, model=model) if shifts is not None else None
        answers = C.model_answers(model, splits[split], fwd_hooks=hooks, rows_per_batch=ROWS_PER_BATCH)
        frames[split].setdefault(kind or "unsteered", []).append(answers)
    rows: list[dict[str, Any]] = []
    seeds = {kind: [sd for k, sd, _ in shift_sets if k == kind] for kind, _, _ in shift_sets}
    for split, states in frames.items():
        for kind, fs in states.items():
            for i, f in enumerate(fs):
                summ = C.summary(f)
                seed = seeds[kind][i] if kind in seeds else None
                rows.append(dict(split=split, kind=kind, seed=seed, consistency=summ["consistency"],
                                 accuracy=summ["accuracy"]))
    order = {"unsteered": 0, "steered": 1, "random heads": 2, "random directions": 3}
    rows.sort(key=lambda r: (list(splits).index(r["split"]), order.get(r["kind"], 4)))
    return ControlledRun(frames=frames, rows=pd.DataFrame(rows))


# --------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------

def direction_stability(
    z: Float[Tensor, "prompt layer head d_head"],
    labels: Any,
    groups: GroupIds,
    heads: Sequence[Head] | None = None,
    *,
    method: str = "mass_mean",
    centre: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Cosine between the directions fitted on two random halves of the training *queries*
    (``groups``: one query id per prompt; a query's prompts stay together), one row per head:
    ``layer``, ``head``, ``cosine``, and ``chance`` (the standard deviation of the cosine of two
    random directions, 1/sqrt(d_head)). Near 1: the data fix the direction; near 0: noise.

    Taught in: Chapter 2 (is the failure a matter of unstable directions?)."""
    g = np.asarray(groups).ravel()
    y = np.asarray(labels).astype(np.int64).ravel()
    if len(g) != z.shape[0] or len(y) != z.shape[0]:
        raise ValueError(f"need one group id and one label per prompt: z has {z.shape[0]} rows, groups {len(g)}, "
                         f"labels {len(y)}. Fix: pass answers['query_id'] and labels_from_answers(answers).")
    ids = np.unique(g)
    if len(ids) < 4:
        raise ValueError(f"only {len(ids)} distinct queries; two halves need at least 4. Fix: use more training queries.")
    perm = np.random.default_rng(seed).permutation(ids)
    half = set(perm[: len(ids) // 2].tolist())
    mask = np.array([x in half for x in g.tolist()])
    fits = []
    for m in (mask, ~mask):
        if len(np.unique(y[m])) < 2:
            raise ValueError("one half of the queries has labels of a single class; Fix: another seed or more queries.")
        fits.append(fit_directions(z[torch.from_numpy(m)], y[m], heads=heads, method=method, seed=seed,
                                   centre_by=g[m] if centre else None))
    a, b = fits
    d = z.shape[-1]
    rows = [dict(layer=l, head=h, cosine=float(torch.dot(a.theta[l, h], b.theta[l, h])), chance=1 / math.sqrt(d))
            for l, h in a.heads]
    return pd.DataFrame(rows)


def _entropy_bits(answers: Sequence[str]) -> float:
    counts = np.array(list(Counter(answers).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum() + 0.0)


@dataclass
class AnswerShift:
    """What steering (or fine-tuning) changed the answers to. ``per_query``: one row per query
    (``entropy_before``/``entropy_after`` of its answer distribution over templates, in bits,
    ``n_changed`` and the three destinations); ``summary``: totals and fractions.

    Taught in: Chapter 2."""

    per_query: pd.DataFrame
    summary: dict[str, float] = field(default_factory=dict)


def answer_shift(before: pd.DataFrame, after: pd.DataFrame) -> AnswerShift:
    """Compare two :func:`editlens.consistency.model_answers` frames of the same prompts.

    Every prompt whose answer changed is counted once, in the first that applies:
    ``to_majority`` (the new answer is the query's majority answer *before*), ``to_frequent``
    (the new answer is the most frequent answer before among all prompts of the query's relation,
    ties to the first met: one frequent candidate absorbing answers), else ``elsewhere``. Answer-distribution entropy per
    query (bits) falls when paraphrases converge, rises when they scatter.

    Taught in: Chapter 2."""
    key = ["query_id", "template"]
    need = set(key) | {"answer", "relation_id", "object"}
    for nm, df in (("before", before), ("after", after)):
        if not need <= set(df.columns):
            raise ValueError(f"{nm} lacks columns {sorted(need - set(df.columns))}; pass model_answers frames.")
    m = before[list(need)].merge(after[key + ["answer"]], on=key, suffixes=("_before", "_after"), validate="1:1")
    if len(m) != len(before) or len(m) != len(after):
        raise ValueError(f"before ({len(before)} rows) and after ({len(after)} rows) do not cover the same "
                         "(query_id, template) prompts. Fix: score the same queries in the same order.")
    m = m.sort_values(key, kind="stable")
    # ties: the answer met first in (query, template) order (Counter keeps insertion order)
    frequent = {r: Counter(g["answer_before"]).most_common(1)[0][0] for r, g in m.groupby("relation_id", sort=False)}
    rows = []
    for qid, g in m.sort_values(key).groupby("query_id", sort=True):
        maj = C.majority_answer(list(g["answer_before"]), gold=g["object"].iat[0])
        freq = frequent[g["relation_id"].iat[0]]
        changed = g[g["answer_before"] != g["answer_after"]]
        to_maj = int((changed["answer_after"] == maj).sum())
        to_freq = int(((changed["answer_after"] != maj) & (changed["answer_after"] == freq)).sum())
        rows.append(dict(query_id=qid, relation_id=g["relation_id"].iat[0],
                         entropy_before=_entropy_bits(list(g["answer_before"])),
                         entropy_after=_entropy_bits(list(g["answer_after"])), n_prompts=len(g),
                         n_changed=len(changed), to_majority=to_maj, to_frequent=to_freq,
                         elsewhere=len(changed) - to_maj - to_freq))
    pq = pd.DataFrame(rows)
    n = int(pq["n_changed"].sum())
    summary = dict(n_prompts=int(pq["n_prompts"].sum()), n_changed=n,
                   entropy_before=float(pq["entropy_before"].mean()), entropy_after=float(pq["entropy_after"].mean()))
    for k in ("to_majority", "to_frequent", "elsewhere"):
        summary[k] = int(pq[k].sum())
        summary[f"frac_{k}"] = summary[k] / n if n else math.nan
    return AnswerShift(per_query=pq, summary=summary)


def effect_per_relation(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per relation (and the ``ALL`` macro row): ``consistency``/``accuracy`` before and after and
    their differences, from :func:`editlens.consistency.consistency_by_relation` of each frame.

    Taught in: Chapter 2."""
    cols = ["relation_id", "n_queries", "consistency", "accuracy"]
    b = C.consistency_by_relation(before)[cols]
    a = C.consistency_by_relation(after)[["relation_id", "consistency", "accuracy"]]
    t = b.merge(a, on="relation_id", suffixes=("_before", "_after"), how="outer")
    for k in ("consistency", "accuracy"):
        t[f"d_{k}"] = t[f"{k}_after"] - t[f"{k}_before"]
    return t


# --------------------------------------------------------------------------------------------
# Cost as the training set grows
# --------------------------------------------------------------------------------------------

def cost_by_train_size(
    model,
    train_queries: Sequence[Any],
    val_queries: Sequence[Any],
    heads: Sequence[Head],
    *,
    sizes: Sequence[int] = (25, 50),
    alpha: float = 1.0,
    methods: Sequence[str] = ("steering", "sft", "lora"),
    sft_kwargs: Mapping[str, Any] | None = None,
    lora_kwargs: Mapping[str, Any] | None = None,
    lora_spec: sft.LoraSpec | None = None,
    seed: int = 0,
    base_consistency: float | None = None,
    full_runs: Mapping[str, sft.SFTResult] | None = None,
    full_steering: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Wall-clock of each method on seeded subsets of ``sizes`` training queries (nested: each
    subset contains the smaller ones), one row per (size, method): ``seconds`` (the cost),
    ``shared_seconds`` (the unedited model's training answers, counted in every method),
    ``val_consistency`` (of the fitted/selected model, on ``val_queries``), ``val_gain`` (minus the
    unedited model's), ``best_step``,
    ``n_trainable`` and ``seconds_per_step`` for the fine-tuning methods, and ``ratio`` (cost /
    steering's cost at that size).

    Steering: training answers + last-token hook_z + mass-mean directions for the fixed ``heads``
    (ranking heads is excluded: pass a ranking made once). SFT / LoRA: training answers +
    optimisation time up to the checkpoint with the best validation consistency
    (evaluation excluded, as in :class:`editlens.sft.SFTResult`). ``sft_kwargs``/``lora_kwargs`` go
    to :func:`editlens.sft.finetune_consistency` (defaults: 20 steps, eval every 5, batch 16;
    lr 2e-5 for SFT, 1e-3 for LoRA).

    Work done once: ``base_consistency`` is the unedited model's validation consistency when the
    caller has it (also the step-0 row of every fine-tuning run). ``full_runs`` maps ``"sft"`` /
    ``"lora"`` to a run on all of ``train_queries`` with the same settings and at least as many
    steps (Chapter 2's main runs): the largest size takes its first steps
    (:meth:`editlens.sft.SFTResult.first_steps`) instead of training the same trajectory again.
    A run whose settings differ is refused with the setting named. ``full_steering``: what the
    caller measured for steering on all of ``train_queries`` (Chapter 2's sections 2-6):
    ``answers`` (their :func:`editlens.consistency.model_answers` frame), ``answers_seconds``,
    ``seconds`` (answers, activations and directions) and ``val_consistency`` (of these ``heads``
    at ``alpha``); the largest size then scores nothing again.

    Taught in: Chapter 2 (under which conditions a 23x speed ratio could arise)."""
    from editlens.localize.activations import last_token_z

    bad = [m for m in methods if m not in ("steering", "sft", "lora")]
    if bad or not methods:
        raise ValueError(f"methods must be a subset of ('steering', 'sft', 'lora'), got {list(methods)!r}.")
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 2 or max(sizes) > len(train_queries):
        raise ValueError(f"sizes must lie in 2..{len(train_queries)} (the training queries), got {sizes}.")
    if not val_queries:
        raise ValueError("val_queries is empty; checkpoints are selected on validation consistency.")
    order = np.random.default_rng(seed).permutation(len(train_queries))
    base_kw = dict(steps=20, eval_every=5, batch_size=16, seed=seed, progress=False)

    def val_consistency(m) -> dict[str, float]:
        return {"consistency": C.summary(C.model_answers(m, val_queries, rows_per_batch=ROWS_PER_BATCH))[
            "consistency"]}

    base = val_consistency(model)["consistency"] if base_consistency is None else float(base_consistency)
    full_runs = dict(full_runs or {})
    unknown = sorted(set(full_runs) - {"sft", "lora"})
    if unknown:
        raise ValueError(f"full_runs keys must be 'sft' or 'lora', got {unknown}.")
    full = dict(full_steering or {})
    if full:
        need = {"answers", "answers_seconds", "seconds", "val_consistency"}
        if not need <= set(full):
            raise ValueError(f"full_steering needs the keys {sorted(need)}, got {sorted(full)}.")
        if full["answers"]["query_id"].nunique() != len(train_queries):
            raise ValueError(f"full_steering['answers'] covers {full['answers']['query_id'].nunique()} queries, "
                             f"train_queries has {len(train_queries)}. Fix: pass the answers of all of them.")
    rows = []
    for n in sorted(sizes):
        train = [train_queries[i] for i in sorted(order[:n])]
        reuse = bool(full) and n == len(train_queries)
        t0 = time.perf_counter()
        answers = full["answers"] if reuse else C.model_answers(model, train, rows_per_batch=ROWS_PER_BATCH)
        t_answers = float(full["answers_seconds"]) if reuse else time.perf_counter() - t0
        targets = sft.majority_targets(answers)
        steer_cost = math.nan
        if "steering" in methods and reuse:
            rows.append(dict(n_train=n, method="steering", seconds=float(full["seconds"]), shared_seconds=t_answers,
                             val_consistency=float(full["val_consistency"]), best_step=math.nan,
                             n_trainable=math.nan, seconds_per_step=math.nan))
        elif "steering" in methods:
            t0 = time.perf_counter()
            z = last_token_z(model, list(answers["prompt"]))
            d = fit_directions(z, labels_from_answers(answers), heads=heads, method="mass_mean", seed=seed)
            shifts = d.shift(heads, alpha)
            steer_cost = t_answers + time.perf_counter() - t0
            val = C.summary(C.model_answers(model, val_queries, fwd_hooks=steering_hooks(shifts, "all", model=model),
                                            rows_per_batch=ROWS_PER_BATCH))["consistency"]
            rows.append(dict(n_train=n, method="steering", seconds=steer_cost, shared_seconds=t_answers,
                             val_consistency=val, best_step=math.nan, n_trainable=math.nan,
                             seconds_per_step=math.nan))
        for method in [m for m in ("sft", "lora") if m in methods]:
            kw: dict[str, Any] = dict(base_kw, lr=2e-5 if method == "sft" else 1e-3)
            kw.update((sft_kwargs if method == "sft" else lora_kwargs) or {})
            if method == "lora":
                kw["lora"] = lora_spec if lora_spec is not None else sft.LoraSpec(seed=seed)
            if method in full_runs and n == len(train_queries):
                res = _reuse_run(full_runs[method], method, kw, targets, train, base)
            else:
                res = sft.finetune_consistency(model, train, targets, eval_fn=val_consistency,
                                               initial_eval={"consistency": base}, **kw)
            best = res.best("consistency")
            rows.append(dict(n_train=n, method=method, seconds=t_answers + best["train_seconds"],
                             shared_seconds=t_answers, val_consistency=best["consistency"],
                             best_step=best["step"], n_trainable=res.n_trainable,
                             seconds_per_step=res.seconds_per_step))
    out = pd.DataFrame(rows)
    out.insert(out.columns.get_loc("val_consistency") + 1, "val_gain", out["val_consistency"] - base)
    for col in ("best_step", "n_trainable"):
        out[col] = out[col].astype("Int64")
    steer = out[out["method"] == "steering"].set_index("n_train")["seconds"]
    out["ratio"] = [r.seconds / steer[r.n_train] if r.n_train in steer.index else math.nan
                    for r in out.itertuples()]
    return out


def _reuse_run(run: sft.SFTResult, method: str, kw: Mapping[str, Any], targets: Mapping[int, str],
               train: Sequence[Any], base: float) -> sft.SFTResult:
    """``run``'s first ``kw["steps"]`` steps, after checking that a fresh run would follow the same
    trajectory (same settings, targets and training prompts) and was evaluated on the same set."""
    want = dict(lr=kw["lr"], batch_size=kw["batch_size"], seed=kw["seed"], eval_every=kw["eval_every"],
                weight_decay=kw.get("weight_decay", 0.0), lora=kw.get("lora"),
                n_examples=sum(len(q.prompts) for q in train))
    have = run.settings
    for key, value in want.items():
        if have.get(key) != value:
            raise ValueError(f"full_runs[{method!r}] was trained with {key}={have.get(key)!r}, this curve uses "
                             f"{value!r}. Fix: pass a run made with the curve's settings, or leave it out.")
    if run.method == "selected":  # the LoRA spec is compared above; a subset of parameters is neither
        raise ValueError(f"full_runs[{method!r}] trained a subset of the parameters; the curve trains all of them "
                         "(SFT) or LoRA adapters. Fix: leave it out.")
    if dict(run.targets) != {int(k): str(v) for k, v in targets.items()}:
        raise ValueError(f"full_runs[{method!r}] was trained towards other targets than the curve's (the unedited "
                         "model's majority answers). Fix: pass a run on the same training queries and targets.")
    if kw["steps"] > run.steps:
        raise ValueError(f"full_runs[{method!r}] ran {run.steps} steps, the curve needs {kw['steps']}.")
    first = run.history[0].get("consistency")
    if first is None or abs(first - base) > 1e-9:
        raise ValueError(f"full_runs[{method!r}] starts at validation consistency {first!r}, the unedited model "
                         f"has {base!r} on these validation queries. Fix: evaluate the run on the same queries.")
    return run.first_steps(kw["steps"])
