"""Comparing head maps, selecting the top-K heads, and saving them for Chapter 2.

Taught in: Chapter 1 (do the probe, patching and attribution maps agree?).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

FORMAT = 1


def select_heads(scores: np.ndarray, k: int, *, absolute: bool = False) -> list[tuple[int, int]]:
    """The ``k`` heads with the highest score (``absolute``: highest |score|), best first.

    NaNs are never selected; ties are broken by (layer, head) order, so the result is deterministic."""
    s = np.abs(scores) if absolute else np.asarray(scores, dtype=float)
    flat = np.where(np.isnan(s), -np.inf, s).ravel()
    order = np.lexsort((np.arange(flat.size), -flat))  # by score desc, then index asc
    best = [i for i in order if np.isfinite(flat[i])][:k]
    H = s.shape[1]
    return [(int(i // H), int(i % H)) for i in best]


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int, *, absolute: tuple[bool, bool] = (False, False)) -> float:
    """Fraction of the top-``k`` heads of ``a`` that are also in the top-``k`` of ``b``."""
    return len(set(select_heads(a, k, absolute=absolute[0])) & set(select_heads(b, k, absolute=absolute[1]))) / k


def chance_overlap(k: int, n: int) -> float:
    """Expected top-k overlap of two random rankings of n heads (k/n)."""
    return k / n


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation between two head maps (NaN entries dropped)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    ok = ~(np.isnan(a) | np.isnan(b))
    return float(spearmanr(a[ok], b[ok]).statistic)


def compare_maps(maps: dict[str, np.ndarray], ks: tuple[int, ...] = (5, 10, 20), *,
                 absolute: dict[str, bool] | None = None) -> pd.DataFrame:
    """One row per pair of maps: Spearman rank correlation and top-K overlap for each K in ``ks``.

    ``absolute[name]=True`` ranks that map by |value| for the overlap (e.g. patching effects of
    either sign); the rank correlation always uses signed values."""
    absolute = absolute or {}
    names, rows = list(maps), []
    n = next(iter(maps.values())).size
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            row = dict(map_a=x, map_b=y, spearman=rank_correlation(maps[x], maps[y]))
            for k in ks:
                row[f"top{k}_overlap"] = topk_overlap(maps[x], maps[y], k, absolute=(absolute.get(x, False), absolute.get(y, False)))
                row[f"top{k}_chance"] = chance_overlap(k, n)
            rows.append(row)
    return pd.DataFrame(rows)


def save_heads(path: str | Path, heads: list[tuple[int, int]], *, model_fingerprint: str, method: str, split: str,
               k: int | None = None, scores: np.ndarray | None = None, **extra) -> Path:
    """Write the selected heads with their provenance to a small JSON file."""
    heads = [(int(l), int(h)) for l, h in heads]
    doc = dict(format=FORMAT, heads=[list(x) for x in heads], k=len(heads) if k is None else int(k), method=method,
               split=split, model_fingerprint=model_fingerprint,
               created=datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra)
    if scores is not None:
        doc["scores"] = [float(scores[l, h]) for l, h in heads]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def load_heads(path: str | Path, *, model_fingerprint: str | None = None) -> tuple[list[tuple[int, int]], dict]:
    """Read heads saved by :func:`save_heads`. With ``model_fingerprint``, refuse heads found on other weights."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown heads-file format {doc.get('format')!r}")
    if model_fingerprint is not None and doc["model_fingerprint"] != model_fingerprint:
        raise ValueError(f"{path} was computed on weights {doc['model_fingerprint']}, not {model_fingerprint}; "
                         "recompute the heads for this model (Chapter 1) instead of reusing them.")
    return [tuple(x) for x in doc["heads"]], doc


def saved_heads(path: str | Path, *, model_fingerprint: str) -> list[tuple[int, int]] | None:
    """The heads of ``path`` when it exists and was computed on these weights, else None (Chapter 2 compares its
    ranking with Chapter 1's when Chapter 1 has run on this machine with this model; a file left by other weights,
    or by a package that printed weights another way, is not an error there, only nothing to compare)."""
    path = Path(path)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT or doc.get("model_fingerprint") != model_fingerprint:
        return None
    return [tuple(x) for x in doc["heads"]]
