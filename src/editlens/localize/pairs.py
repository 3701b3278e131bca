"""Labelled paraphrase pairs (p, q, c): c = 1 when the model answers p and q the same way.

Taught in: Chapter 1, step 1 of the consistency-heads recipe (arXiv 2501.11041).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from editlens.consistency import majority_answer

PAIR_COLUMNS = ["query_id", "relation_id", "subject", "object", "template_p", "template_q",
                "prompt_p", "prompt_q", "answer_p", "answer_q", "majority", "consistent"]


def make_pairs(answers: pd.DataFrame) -> pd.DataFrame:
    """All template pairs (i < j) of every query in ``answers`` (from :func:`editlens.consistency.model_answers`).

    ``consistent`` is 1 when the two answers agree. ``majority`` is the query's majority answer over
    all its templates (ties: gold, else the earliest template), used by patching to pick the source.
    """
    rows = []
    for qid, g in answers.sort_values(["query_id", "template"]).groupby("query_id", sort=True):
        recs = g.to_dict("records")
        maj = majority_answer([r["answer"] for r in recs], gold=recs[0]["object"])
        for a, b in itertools.combinations(recs, 2):
            rows.append(dict(query_id=qid, relation_id=a["relation_id"], subject=a["subject"], object=a["object"],
                             template_p=a["template"], template_q=b["template"], prompt_p=a["prompt"],
                             prompt_q=b["prompt"], answer_p=a["answer"], answer_q=b["answer"], majority=maj,
                             consistent=int(a["answer"] == b["answer"])))
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def class_balance(pairs: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Counts of consistent (c=1) and inconsistent (c=0) pairs and the fraction consistent,
    overall or per ``by`` (e.g. ``"relation_id"``); the overall row is named ``ALL``."""
    def one(g):
        n1 = int(g["consistent"].sum())
        return pd.Series(dict(n_pairs=len(g), n_consistent=n1, n_inconsistent=len(g) - n1,
                              frac_consistent=n1 / len(g) if len(g) else np.nan))
    counts = {"n_pairs": int, "n_consistent": int, "n_inconsistent": int}
    total = one(pairs).to_frame("ALL").T.astype(counts)
    if by is None:
        return total
    per = pairs.groupby(by).apply(one, include_groups=False)
    return pd.concat([per, total]).astype(counts)


def balanced_subsample(pairs: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Deterministic subsample with as many c=1 as c=0 pairs (the larger class is sampled down).

    Same ``pairs`` and ``seed`` give the same rows in the same order (original order kept)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(pairs["consistent"].to_numpy() == 1), np.flatnonzero(pairs["consistent"].to_numpy() == 0)
    n = min(len(pos), len(neg))
    keep = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    return pairs.iloc[np.sort(keep)].reset_index(drop=True)


def subject_split(pairs: pd.DataFrame, *, test_fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    """Boolean mask, True for held-out pairs: a seeded random ``test_fraction`` of the *subjects*
    (all pairs of a subject fall on the same side, so a probe never sees a test subject)."""
    subjects = np.array(sorted(pairs["subject"].unique()))
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_fraction * len(subjects))))
    test = set(rng.permutation(subjects)[:n_test])
    return pairs["subject"].isin(test).to_numpy()
