"""The model's answers to paraphrased prompts, and how consistent they are.

Taught in: Chapter 1 (measured before localising heads) and Chapter 2 (before/after steering).

- The model's *answer* to a prompt is the candidate of the relation's answer set with the lowest
  mean per-token negative log-likelihood of ``" " + candidate``, teacher-forced after the prompt
  (multi-token candidates are scored over all their tokens; the mean, not the sum, so long names
  are not penalised for their length). Scores come from :func:`editlens.scoring.score_candidates`.
- *Accuracy*: the answer is the gold object.
- *Pairwise consistency* (ParaRel, Elazar et al. 2021): for one query (subject, relation) with T
  paraphrase templates, the fraction of the T(T-1)/2 template pairs that give the same answer.
  Per relation: the mean over its queries; overall: the mean over relations (macro average).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, Sequence

import numpy as np
import pandas as pd

from editlens.scoring import HookFactory, HookList, score_candidates

__all__ = ["model_answers", "pairwise_consistency", "query_consistency", "majority_answer",
           "consistency_by_relation", "summary", "score_candidates"]


# --------------------------------------------------------------------------------------------
# Answers and consistency
# --------------------------------------------------------------------------------------------

def model_answers(
    model,
    queries: Sequence[Any],
    *,
    batch_size: int = 32,
    fwd_hooks: HookList | HookFactory | None = None,
    rows_per_batch: int = 1,
) -> pd.DataFrame:
    """The model's answer to every prompt of every query (a ``ParaphraseQuery``-like object).

    One row per (query, template): ``query_id`` (index in ``queries``), ``relation_id``,
    ``subject``, ``object``, ``split``, ``template``, ``prompt``, ``answer``, ``correct``,
    ``answer_nll``, ``gold_nll``, ``margin`` (NLL of the runner-up minus NLL of the answer).
    ``fwd_hooks`` (a hook list or a :data:`HookFactory`) is active during scoring, e.g. steering.
    ``rows_per_batch``: packed rows per forward pass (:func:`editlens.scoring.score_candidates`;
    Chapter 2 runs :data:`editlens.scoring.ROWS_PER_BATCH`, in bfloat16 the scores round differently).
    """
    prompts, cands, meta = [], [], []
    for qi, q in enumerate(queries):
        cset = list(q.candidates)
        if q.object not in cset:
            cset.append(q.object)
        for t, p in enumerate(q.prompts):
            prompts.append(p); cands.append(cset); meta.append((qi, q, t))
    nlls = score_candidates(model, prompts, cands, batch_size=batch_size, fwd_hooks=fwd_hooks,
                            rows_per_batch=rows_per_batch)
    records = []
    for (qi, q, t), p, cset, nll in zip(meta, prompts, cands, nlls):
        order = np.argsort(nll, kind="stable")
        best = int(order[0])
        margin = float(nll[order[1]] - nll[best]) if len(order) > 1 else float("inf")
        records.append(dict(query_id=qi, relation_id=q.relation_id, subject=q.subject, object=q.object,
                            split=getattr(q, "split", ""), template=t, prompt=p, answer=cset[best],
                            correct=cset[best] == q.object, answer_nll=float(nll[best]),
                            gold_nll=float(nll[cset.index(q.object)]), margin=margin))
    return pd.DataFrame.from_records(records)


def pairwise_consistency(answers: Sequence[str]) -> float:
    """Fraction of unordered pairs of ``answers`` that are equal (NaN for fewer than 2 answers)."""
    pairs = list(itertools.combinations(answers, 2))
    if not pairs:
        return float("nan")
    return sum(a == b for a, b in pairs) / len(pairs)


def query_consistency(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per query: ``accuracy`` over its templates, pairwise ``consistency``, ``majority`` answer."""
    rows = []
    for qid, g in answers.sort_values(["query_id", "template"]).groupby("query_id", sort=True):
        counts = Counter(g["answer"])
        rows.append(dict(query_id=qid, relation_id=g["relation_id"].iat[0], subject=g["subject"].iat[0],
                         object=g["object"].iat[0], n_templates=len(g), accuracy=g["correct"].mean(),
                         consistency=pairwise_consistency(list(g["answer"])),
                         majority=majority_answer(list(g["answer"]), gold=g["object"].iat[0]),
                         n_distinct_answers=len(counts)))
    return pd.DataFrame(rows)


def majority_answer(answers: Sequence[str], *, gold: str | None = None) -> str:
    """Most frequent answer; ties go to ``gold`` if it is tied, else to the earliest template's answer."""
    counts = Counter(answers)
    top = max(counts.values())
    tied = [a for a in answers if counts[a] == top]
    return gold if gold in tied else tied[0]


def consistency_by_relation(answers: pd.DataFrame) -> pd.DataFrame:
    """Per relation: ``n_queries``, ``accuracy``, ``consistency`` (ParaRel pairwise), and
    ``consistency_correct`` (pairs that agree on the gold answer); a last row ``ALL`` holds the
    macro average over relations (each relation weighs the same, as in ParaRel)."""
    per_q = query_consistency(answers)
    pair_rows = []
    for qid, g in answers.groupby("query_id"):
        a, gold = list(g.sort_values("template")["answer"]), g["object"].iat[0]
        pairs = list(itertools.combinations(a, 2))
        pair_rows.append(dict(query_id=qid, both_correct=np.mean([x == y == gold for x, y in pairs]) if pairs else np.nan))
    per_q = per_q.merge(pd.DataFrame(pair_rows), on="query_id")
    table = per_q.groupby("relation_id").agg(
        n_queries=("query_id", "size"), n_templates=("n_templates", "max"),
        accuracy=("accuracy", "mean"), consistency=("consistency", "mean"),
        consistency_correct=("both_correct", "mean"),
    ).reset_index()
    overall = dict(relation_id="ALL", n_queries=int(table["n_queries"].sum()), n_templates=int(table["n_templates"].max()),
                   accuracy=table["accuracy"].mean(), consistency=table["consistency"].mean(),
                   consistency_correct=table["consistency_correct"].mean())
    return pd.concat([table, pd.DataFrame([overall])], ignore_index=True)


def summary(answers: pd.DataFrame) -> dict[str, float]:
    """Overall macro ``accuracy`` and ``consistency`` (the ``ALL`` row of :func:`consistency_by_relation`)."""
    row = consistency_by_relation(answers).iloc[-1]
    return {"accuracy": float(row["accuracy"]), "consistency": float(row["consistency"]),
            "consistency_correct": float(row["consistency_correct"]), "n_queries": int(row["n_queries"])}
