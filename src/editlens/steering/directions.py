"""Consistency directions per attention head: labels, mass-mean or probe directions, strengths.

Taught in: Chapter 2.

Labels. The paper (arXiv 2501.11041, following ITI) labels *pairs* of paraphrased prompts: c = 1
when the model's answers agree. A pair's label is symmetric, so it does not say which of the two
activations is the "consistent" one. We label *prompts* instead: a training prompt gets 1
("agrees") when its answer equals its query's majority answer over all templates
(:func:`editlens.consistency.majority_answer`), else 0. Every activation then has exactly one
label, and the mass-mean direction mu(1) - mu(0) points from "the odd one out" towards "what the
other paraphrases say". A query whose templates all agree contributes only 1-labels.

Direction per head (l, h), from ``x = hook_z[l, h]`` at the last prompt token:
- ``"mass_mean"``: theta = (mu(1) - mu(0)) / ||mu(1) - mu(0)||.
- ``"probe"``: the weight of a logistic regression (scikit-learn, L2, ``C``) fitted on the
  standardised activations, mapped back to activation space (w_raw = w_std / scale, so that
  w_raw . x is the probe's logit up to a constant) and normalised; it points towards class 1.

Strength: sigma = standard deviation (population, ``correction=0``) of all training activations
projected on theta, as in ITI. The shift added to the head's z is ``alpha * sigma * theta``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence, TypeAlias

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from editlens.consistency import majority_answer, model_answers

Head = tuple[int, int]
Method = Literal["mass_mean", "probe", "random"]
GroupIds: TypeAlias = Sequence[Any] | np.ndarray | pd.Series
"""One group id per prompt (e.g. the query id): a list, an array or a DataFrame column."""


# --------------------------------------------------------------------------------------------
# Validation shared by the steering modules
# --------------------------------------------------------------------------------------------

def check_heads(heads: Iterable[Any], n_layers: int, n_heads: int, *, what: str = "heads") -> list[Head]:
    """Heads as a list of ``(layer, head)`` int pairs; ValueError for an empty list, a malformed
    entry, a duplicate, or an index out of range."""
    out: list[Head] = []
    for x in heads:
        try:
            l, h = x
            if int(l) != l or int(h) != h:
                raise TypeError
            l, h = int(l), int(h)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: every head must be a (layer, head) pair of ints, got {x!r}.") from None
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise ValueError(f"{what}: head {(l, h)} is out of range; this model has layers 0..{n_layers - 1} and "
                             f"heads 0..{n_heads - 1} per layer. Fix: pass heads from this model's head map.")
        if (l, h) in out:
            raise ValueError(f"{what}: head {(l, h)} appears twice. Fix: pass each head once.")
        out.append((l, h))
    if not out:
        raise ValueError(f"{what} is empty: steering needs at least one (layer, head). "
                         "Fix: pass e.g. the top-K heads of load_heads(...).")
    return out


def check_alpha(alpha: float) -> float:
    """``alpha`` as a finite float (ValueError for NaN or infinity)."""
    a = float(alpha)
    if not math.isfinite(a):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}. Fix: pass e.g. alpha=5.0.")
    return a


# --------------------------------------------------------------------------------------------
# Labels and activations
# --------------------------------------------------------------------------------------------

def labels_from_answers(answers: pd.DataFrame) -> np.ndarray:
    """Prompt-level labels aligned with the rows of ``answers`` (a :func:`model_answers` frame):
    1 when the row's answer equals its query's majority answer over the templates, else 0.

    Ties in the majority go to the gold answer, then to the earliest template's answer (as
    :func:`editlens.consistency.majority_answer`)."""
    need = {"query_id", "template", "answer", "object"}
    missing = need - set(answers.columns)
    if missing:
        raise ValueError(f"answers lacks columns {sorted(missing)}; pass the frame returned by consistency.model_answers.")
    majority: dict[Any, str] = {}
    for qid, g in answers.sort_values(["query_id", "template"]).groupby("query_id", sort=True):
        majority[qid] = majority_answer(list(g["answer"]), gold=g["object"].iat[0])
    return np.array([int(a == majority[q]) for q, a in zip(answers["query_id"], answers["answer"])], dtype=np.int64)


def collect_training_activations(
    model, queries: Sequence[Any], *, batch_size: int = 32, rows_per_batch: int = 1,
    seconds: dict[str, float] | None = None,
) -> tuple[Float[Tensor, "prompt layer head d_head"], np.ndarray, pd.DataFrame]:
    """Answers, prompt-level labels and last-token ``hook_z`` of every (query, template) prompt.

    Returns ``(z, labels, answers)``; row i of ``z`` and ``labels`` is row i of ``answers``.
    ``rows_per_batch``: as in :func:`editlens.consistency.model_answers` (Chapter 2 passes
    :data:`editlens.scoring.ROWS_PER_BATCH`). ``seconds``: a dict that receives the wall-clock of
    the two steps, ``"answers"`` and ``"activations"`` (Chapter 2's cost comparison reads them)."""
    import time

    from editlens.localize.activations import last_token_z

    t0 = time.perf_counter()
    answers = model_answers(model, queries, batch_size=batch_size, rows_per_batch=rows_per_batch)
    labels = labels_from_answers(answers)
    t1 = time.perf_counter()
    z = last_token_z(model, list(answers["prompt"]), batch_size=batch_size)
    if seconds is not None:
        seconds.update(answers=t1 - t0, activations=time.perf_counter() - t1)
    return z, labels, answers


# --------------------------------------------------------------------------------------------
# Directions
# --------------------------------------------------------------------------------------------

@dataclass
class Directions:
    """Unit direction ``theta`` and strength ``sigma`` for the fitted heads.

    ``theta`` is [layer, head, d_head] and ``sigma`` [layer, head]; entries of heads that were not
    fitted are NaN, so they cannot be used by mistake. ``n_per_class`` = (#label 0, #label 1)."""

    theta: Float[Tensor, "layer head d_head"]
    sigma: Float[Tensor, "layer head"]
    method: str
    heads: list[Head]
    n_per_class: tuple[int, int]
    seed: int = 0
    info: dict = field(default_factory=dict)

    def shift(self, heads: Sequence[Head] | None = None, alpha: float = 1.0) -> dict[Head, Float[Tensor, "d_head"]]:
        """``{(l, h): alpha * sigma[l, h] * theta[l, h]}`` for ``heads`` (default: all fitted heads)."""
        a = check_alpha(alpha)
        L, H, _ = self.theta.shape
        hs = check_heads(self.heads if heads is None else heads, L, H)
        fitted = set(self.heads)
        missing = [x for x in hs if x not in fitted]
        if missing:
            raise ValueError(f"No direction was fitted for heads {missing}. Fix: fit_directions(..., heads=...) "
                             "with these heads, or heads=None for all.")
        return {(l, h): a * self.sigma[l, h] * self.theta[l, h] for l, h in hs}


def _check_z_labels(z: Tensor, labels: Any) -> np.ndarray:
    if z.dim() != 4:
        raise ValueError(f"z must be [prompt, layer, head, d_head], got shape {tuple(z.shape)}.")
    y = np.asarray(labels).astype(np.int64).ravel()
    if len(y) != z.shape[0]:
        raise ValueError(f"{len(y)} labels for {z.shape[0]} prompts; they must be aligned row by row.")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got values {sorted(set(np.unique(y)))}.")
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("labels contain a single class; a direction needs prompts of both classes. "
                         "Fix: use more training queries (some must be answered inconsistently).")
    return y


def _sigma(x: Float[Tensor, "prompt d_head"], theta: Float[Tensor, "d_head"]) -> float:
    return float((x @ theta).std(correction=0))


def fit_directions(
    z: Float[Tensor, "prompt layer head d_head"],
    labels: Any,
    heads: Sequence[Head] | None = None,
    method: str = "mass_mean",
    seed: int = 0,
    *,
    C: float = 1.0,
    centre_by: GroupIds | None = None,
) -> Directions:
    """Per-head unit direction and strength from last-token ``hook_z`` and prompt labels.

    ``method="mass_mean"`` (mu(1) - mu(0)) or ``"probe"`` (logistic-regression weight with
    inverse regularisation ``C``, mapped back from standardised to raw activation space).
    ``centre_by``: one group id per prompt (e.g. ``answers["query_id"]``); each group's mean
    activation is subtracted before fitting (direction and sigma), so the direction cannot encode
    which query a prompt belongs to (Chapter 2's per-query-centred variant). Computed in float64,
    stored in float32."""
    if method not in ("mass_mean", "probe"):
        raise ValueError(f"method must be 'mass_mean' or 'probe', got {method!r}.")
    y = _check_z_labels(z, labels)
    N, L, H, D = z.shape
    hs = [(l, h) for l in range(L) for h in range(H)] if heads is None else check_heads(heads, L, H)
    theta = torch.full((L, H, D), float("nan"), dtype=torch.float32)
    sigma = torch.full((L, H), float("nan"), dtype=torch.float32)
    zd = z.detach().to("cpu", torch.float64)
    if centre_by is not None:
        zd = centre_per_group(zd, centre_by)
    pos, neg = torch.from_numpy(y == 1), torch.from_numpy(y == 0)
    for l, h in hs:
        x = zd[:, l, h]
        if method == "mass_mean":
            d = x[pos].mean(0) - x[neg].mean(0)
        else:
            from sklearn.linear_model import LogisticRegression

            xn = x.numpy()
            mu, sd = xn.mean(0), xn.std(0)
            sd = np.where(sd > 0, sd, 1.0)
            clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit((xn - mu) / sd, y)
            d = torch.from_numpy(clf.coef_[0] / sd)
        norm = d.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError(f"head {(l, h)}: the {method} direction is zero or not finite (identical class means?).")
        t = d / norm
        theta[l, h] = t.float()
        sigma[l, h] = _sigma(x, t)
    return Directions(theta=theta, sigma=sigma, method=method, heads=hs,
                      n_per_class=(int((y == 0).sum()), int((y == 1).sum())), seed=seed,
                      info={"centred": centre_by is not None})


def centre_per_group(
    z: Float[Tensor, "prompt layer head d_head"], groups: GroupIds,
) -> Float[Tensor, "prompt layer head d_head"]:
    """``z`` minus the mean of its group's rows (one group id per row, e.g. the query id): what
    is left is how a paraphrase differs from its query's average paraphrase.

    Taught in: Chapter 2 (per-query-centred directions)."""
    g = np.asarray(groups).ravel()
    if len(g) != z.shape[0]:
        raise ValueError(f"centre_by has {len(g)} group ids for {z.shape[0]} prompts; pass one id per row of z "
                         "(e.g. answers['query_id']).")
    _, inverse = np.unique(g, return_inverse=True)
    idx = torch.from_numpy(inverse.astype(np.int64))
    n_groups = int(idx.max()) + 1 if len(idx) else 0
    flat = z.reshape(z.shape[0], -1)
    sums = torch.zeros(n_groups, flat.shape[1], dtype=flat.dtype).index_add_(0, idx, flat)
    counts = torch.bincount(idx, minlength=n_groups).to(flat.dtype)[:, None]
    return (flat - (sums / counts)[idx]).reshape(z.shape)


def random_directions(
    z: Float[Tensor, "prompt layer head d_head"],
    heads: Sequence[Head] | None = None,
    seed: int = 0,
    labels: Any | None = None,
    *,
    centre_by: GroupIds | None = None,
) -> Directions:
    """Control: seeded random unit directions (Gaussian, normalised) with sigma = std of the
    activations projected on them, so ``shift(alpha)`` has the same recipe as a fitted direction.
    ``centre_by``: as in :func:`fit_directions`, sigma is then measured on the per-group centred
    activations (the control of a centred direction has that direction's recipe).

    The random vectors depend only on ``seed`` and (layer, head), not on which other heads are asked for."""
    if z.dim() != 4:
        raise ValueError(f"z must be [prompt, layer, head, d_head], got shape {tuple(z.shape)}.")
    N, L, H, D = z.shape
    hs = [(l, h) for l in range(L) for h in range(H)] if heads is None else check_heads(heads, L, H)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(L, H, D, generator=gen, dtype=torch.float64)
    theta = torch.full((L, H, D), float("nan"), dtype=torch.float32)
    sigma = torch.full((L, H), float("nan"), dtype=torch.float32)
    zd = z.detach().to("cpu", torch.float64)
    if centre_by is not None:
        zd = centre_per_group(zd, centre_by)
    for l, h in hs:
        t = table[l, h] / table[l, h].norm()
        theta[l, h] = t.float()
        sigma[l, h] = _sigma(zd[:, l, h], t)
    n = (0, 0) if labels is None else (int((np.asarray(labels) == 0).sum()), int((np.asarray(labels) == 1).sum()))
    return Directions(theta=theta, sigma=sigma, method="random", heads=hs, n_per_class=n, seed=seed,
                      info={"centred": centre_by is not None})


def random_heads(n_layers: int, n_heads: int, k: int, exclude: Iterable[Head] = (), seed: int = 0) -> list[Head]:
    """Control: ``k`` distinct heads drawn uniformly (seeded) from those not in ``exclude``, in draw order."""
    excl = {(int(l), int(h)) for l, h in exclude}
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excl]
    if not 0 < k <= len(pool):
        raise ValueError(f"k={k} heads requested but {len(pool)} are available after excluding {len(excl)}; "
                         "Fix: choose 1 <= k <= the number of available heads.")
    idx = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return [pool[i] for i in idx]
