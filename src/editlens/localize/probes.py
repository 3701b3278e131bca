"""Method (a), the paper's: one linear probe per head predicting whether a pair is consistent.

Taught in: Chapter 1, step 2 of arXiv 2501.11041 (following ITI, Li et al. 2023).

For every head (l, h) we take x = hook_z[l, :, h] at the last prompt token of both prompts of a
pair, turn the pair into one feature vector, fit a seeded logistic regression on the training
*subjects* and score it on held-out subjects. The same probes fitted on permuted labels give the
chance level of this exact pipeline (the shuffled baseline), so "above chance" is visible per head.

Pair features (the paper leaves this open), ``features=``:

- ``"concat"`` (default): [x_p; x_q], 2·d_head numbers. The most expressive linear choice: a probe
  on [x_p; x_q] can represent a probe on x_q alone (zero weights on x_p) and one on x_p − x_q
  (weights w and −w), so choosing it does not prejudge which one the heads support. 128 features
  per head is small next to thousands of pairs; the logistic regression is L2-regularised.
- ``"q"``: x_q only, the second prompt's activation: the probe's weight vector lives in the head's
  own space, handy as a steering direction (Chapter 2), but it must guess agreement from one side.
- ``"diff"``: x_p − x_q. Note that a linear function of x_p − x_q is *antisymmetric* under
  swapping p and q while the label is symmetric; pairs are ordered by template index, so it can
  still work, but ``"absdiff"`` is its symmetric version.
- ``"absdiff"``: |x_p − x_q| elementwise: "how differently did this head see the two prompts".
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from jaxtyping import Float
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from editlens.localize.pairs import subject_split

FEATURES = ("concat", "q", "diff", "absdiff")


def pair_features(
    x_p: Float[np.ndarray, "pair d_head"], x_q: Float[np.ndarray, "pair d_head"], kind: str = "concat",
) -> Float[np.ndarray, "pair feature"]:
    """Turn the two prompts' activations of one head into one feature vector per pair."""
    if kind == "concat":
        return np.concatenate([x_p, x_q], axis=-1)
    if kind == "q":
        return x_q
    if kind == "diff":
        return x_p - x_q
    if kind == "absdiff":
        return np.abs(x_p - x_q)
    raise ValueError(f"features must be one of {FEATURES}, got {kind!r}")


@dataclass
class ProbeResult:
    """Held-out scores of one probe per head. Arrays are ``[n_layers, n_heads]``."""

    accuracy: np.ndarray
    balanced_accuracy: np.ndarray
    shuffled_accuracy: np.ndarray
    shuffled_balanced_accuracy: np.ndarray
    majority_baseline: float  # accuracy of always predicting the training majority class
    n_train: int
    n_test: int
    test_subjects: list[str] = field(default_factory=list)
    features: str = "concat"
    seconds: float = 0.0

    def table(self) -> pd.DataFrame:
        """Long table, one row per head, sorted by held-out accuracy."""
        L, H = self.accuracy.shape
        df = pd.DataFrame(dict(layer=np.repeat(np.arange(L), H), head=np.tile(np.arange(H), L),
                               accuracy=self.accuracy.ravel(), balanced_accuracy=self.balanced_accuracy.ravel(),
                               shuffled_accuracy=self.shuffled_accuracy.ravel(),
                               shuffled_balanced_accuracy=self.shuffled_balanced_accuracy.ravel()))
        # ties (accuracies are fractions of the same held-out set) keep (layer, head) order
        return df.sort_values(["accuracy", "balanced_accuracy"], ascending=False, kind="stable").reset_index(drop=True)


def _fit_score(Xtr, ytr, Xte, yte, *, C: float, seed: int) -> tuple[float, float]:
    """Fit one standardised, L2-regularised logistic regression; held-out (accuracy, balanced accuracy).

    Reproducible across machines as far as the inputs are: float64 throughout and L-BFGS (a
    deterministic solver; no data shuffling, so ``seed`` changes nothing it uses). What still moves
    between CPUs is the input itself (activations differ in their last float32 bits), which can
    move a held-out prediction near the decision boundary: Chapter 1 checks only claims that
    survive that (see its checked cells)."""
    Xtr, Xte = np.asarray(Xtr, dtype=np.float64), np.asarray(Xte, dtype=np.float64)
    if len(np.unique(ytr)) < 2:  # degenerate training set: predict the only class
        pred = np.full_like(yte, ytr[0])
    else:
        scaler = StandardScaler().fit(Xtr)
        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=500, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(scaler.transform(Xtr), ytr)
        pred = clf.predict(scaler.transform(Xte))
    acc = float((pred == yte).mean())
    bal = float(balanced_accuracy_score(yte, pred)) if len(np.unique(yte)) > 1 else acc
    return acc, bal


def probe_heads(
    z: Float[Tensor, "prompt layer head d_head"],
    pairs: pd.DataFrame,
    index: dict[str, int],
    *,
    features: str = "concat",
    test_fraction: float = 0.3,
    seed: int = 0,
    C: float = 1.0,
    shuffled: bool = True,
    test_mask: np.ndarray | None = None,
) -> ProbeResult:
    """Fit and score one probe per head.

    ``z`` comes from :func:`editlens.localize.activations.last_token_z` and ``index`` maps a prompt
    to its row. The held-out split is by subject (:func:`editlens.localize.pairs.subject_split`)
    unless ``test_mask`` is given. ``shuffled=True`` also fits every probe on permuted training
    labels (the same permutation for all heads) and scores it on the true test labels.
    """
    t0 = time.perf_counter()
    zp = z[[index[p] for p in pairs["prompt_p"]]].double().numpy()
    zq = z[[index[p] for p in pairs["prompt_q"]]].double().numpy()
    y = pairs["consistent"].to_numpy().astype(int)
    test = subject_split(pairs, test_fraction=test_fraction, seed=seed) if test_mask is None else np.asarray(test_mask)
    train = ~test
    y_shuf = np.random.default_rng(seed + 1).permutation(y[train])
    L, H = z.shape[1], z.shape[2]
    res = {k: np.full((L, H), np.nan) for k in ("acc", "bal", "sacc", "sbal")}
    for l in range(L):
        for h in range(H):
            X = pair_features(zp[:, l, h], zq[:, l, h], features)
            res["acc"][l, h], res["bal"][l, h] = _fit_score(X[train], y[train], X[test], y[test], C=C, seed=seed)
            if shuffled:
                res["sacc"][l, h], res["sbal"][l, h] = _fit_score(X[train], y_shuf, X[test], y[test], C=C, seed=seed)
    majority = int(np.mean(y[train]) >= 0.5)
    return ProbeResult(accuracy=res["acc"], balanced_accuracy=res["bal"], shuffled_accuracy=res["sacc"],
                       shuffled_balanced_accuracy=res["sbal"], majority_baseline=float(np.mean(y[test] == majority)),
                       n_train=int(train.sum()), n_test=int(test.sum()),
                       test_subjects=sorted(pairs.loc[test, "subject"].unique()), features=features,
                       seconds=time.perf_counter() - t0)


def metadata_baseline(
    pairs: pd.DataFrame,
    columns: tuple[str, ...] = ("relation_id", "template_p", "template_q"),
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    C: float = 1.0,
    test_mask: np.ndarray | None = None,
) -> dict[str, float | list[str]]:
    """Held-out accuracy of the same probe on one-hot *metadata* instead of activations.

    With the default columns it knows only which relation and which two templates a pair uses.
    Any head carries that information at the last token (even layer 0 sees the template's last
    words), so a head's probe accuracy means something about the head only where it beats this."""
    X = pd.get_dummies(pairs[list(columns)].astype(str)).to_numpy(dtype=float)
    y = pairs["consistent"].to_numpy().astype(int)
    test = subject_split(pairs, test_fraction=test_fraction, seed=seed) if test_mask is None else np.asarray(test_mask)
    acc, bal = _fit_score(X[~test], y[~test], X[test], y[test], C=C, seed=seed)
    return {"accuracy": acc, "balanced_accuracy": bal, "columns": list(columns)}
