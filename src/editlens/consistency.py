"""The model's answers to paraphrased prompts, and how consistent they are.

Taught in: Chapter 1 (measured before localising heads) and Chapter 2 (before/after steering).

- The model's *answer* to a prompt is the candidate of the relation's answer set with the lowest
  mean per-token negative log-likelihood of ``" " + candidate``, teacher-forced after the prompt
  (multi-token candidates are scored over all their tokens; the mean, not the sum, so long names
  are not penalised for their length).
- *Accuracy*: the answer is the gold object.
- *Pairwise consistency* (ParaRel, Elazar et al. 2021): for one query (subject, relation) with T
  paraphrase templates, the fraction of the T(T-1)/2 template pairs that give the same answer.
  Per relation: the mean over its queries; overall: the mean over relations (macro average).

Batching: every (prompt, candidate) needs the logits at the prompt's last token and at the
candidate's own tokens except the last. :func:`score_candidates` runs each prompt once and
continues multi-token candidates from its key/value cache. The patching code uses
:class:`ScoringPlan` instead: explicit rows (prompt + candidate tokens except the last),
right-padded; with causal attention the real positions never see the padding, so no attention
mask is needed and positions match an unpadded run exactly.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

HookList = list[tuple[Any, Callable]]
HookFactory = Callable[[Int[Tensor, "batch"]], HookList]
"""Called with the last-prompt-token position of every row of a batch; returns forward hooks.

Chapter 2 uses it to steer only at the last prompt token (``last_pos`` differs row by row)."""


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------

def encode_prompt(model, prompt: str) -> list[int]:
    """Token ids of a prompt, BOS prepended (as ``model.to_tokens`` does)."""
    return model.to_tokens(prompt, prepend_bos=True, move_to_device=False)[0].tolist()


def encode_answer(model, answer: str) -> list[int]:
    """Token ids of ``" " + answer`` (no BOS): how an answer continues a prompt."""
    ids = model.to_tokens(" " + answer, prepend_bos=False, move_to_device=False)[0].tolist()
    if not ids:
        raise ValueError(f"answer {answer!r} tokenises to nothing")
    return ids


class _Encoder:
    """Caches tokenisations (prompts repeat across pairs and candidates across queries)."""

    def __init__(self, model):
        self.model = model
        self._p: dict[str, list[int]] = {}
        self._a: dict[str, list[int]] = {}

    def prompt(self, s: str) -> list[int]:
        if s not in self._p:
            self._p[s] = encode_prompt(self.model, s)
        return self._p[s]

    def answer(self, s: str) -> list[int]:
        if s not in self._a:
            self._a[s] = encode_answer(self.model, s)
        return self._a[s]


# --------------------------------------------------------------------------------------------
# Teacher-forced scoring
# --------------------------------------------------------------------------------------------

@dataclass
class ScoringPlan:
    """Deduplicated token rows plus, for every scored item, where its target tokens are read.

    ``rows[r]`` is a token list; ``last_pos[r]`` its last prompt token. Item ``i`` is scored on row
    ``item_row[i]`` at positions ``item_pos[i]`` (one per target token) with targets ``item_tok[i]``.
    """

    rows: list[list[int]] = field(default_factory=list)
    last_pos: list[int] = field(default_factory=list)
    item_row: list[int] = field(default_factory=list)
    item_pos: list[list[int]] = field(default_factory=list)
    item_tok: list[list[int]] = field(default_factory=list)
    _index: dict[tuple, int] = field(default_factory=dict, repr=False)

    def add(self, prompt_ids: list[int], answer_ids: list[int], *, tag: Any = None) -> int:
        """Register ``answer_ids`` continuing ``prompt_ids``; returns the item index.

        Items share a row when their rows are identical and their ``tag`` is equal (patching tags
        rows by pair, since two pairs may patch the same tokens from different sources)."""
        row = prompt_ids + answer_ids[:-1]
        key = (tag, tuple(row))
        if key not in self._index:
            self._index[key] = len(self.rows)
            self.rows.append(row)
            self.last_pos.append(len(prompt_ids) - 1)
        self.item_row.append(self._index[key])
        start = len(prompt_ids) - 1
        self.item_pos.append(list(range(start, start + len(answer_ids))))
        self.item_tok.append(list(answer_ids))
        return len(self.item_row) - 1


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device) -> Int[Tensor, "batch pos"]:
    """Right-pad token lists into one tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)


def _pad_id(model) -> int:
    tok = model.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(plan: ScoringPlan, batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of similar length (less padding)."""
    order = sorted(range(len(plan.rows)), key=lambda r: (len(plan.rows[r]), r))
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def item_logprobs(
    logits: Float[Tensor, "batch pos vocab"],
    plan: ScoringPlan,
    batch_rows: Sequence[int],
    items: Sequence[int],
) -> Float[Tensor, "item"]:
    """Mean per-token log-probability of each item whose row is in this batch (differentiable)."""
    where = {r: b for b, r in enumerate(batch_rows)}
    b_idx, p_idx, t_idx, owner = [], [], [], []
    for k, i in enumerate(items):
        b = where[plan.item_row[i]]
        for pos, tok in zip(plan.item_pos[i], plan.item_tok[i]):
            b_idx.append(b); p_idx.append(pos); t_idx.append(tok); owner.append(k)
    dev = logits.device
    sel = logits[torch.tensor(b_idx, device=dev), torch.tensor(p_idx, device=dev)]  # [n_tok, vocab]
    lp = sel.float().log_softmax(-1).gather(-1, torch.tensor(t_idx, device=dev)[:, None])[:, 0]
    owner_t = torch.tensor(owner, device=dev)
    total = torch.zeros(len(items), device=dev, dtype=lp.dtype).index_add(0, owner_t, lp)
    count = torch.zeros(len(items), device=dev, dtype=lp.dtype).index_add(0, owner_t, torch.ones_like(lp))
    return total / count


def run_plan(
    model,
    plan: ScoringPlan,
    *,
    batch_size: int = 32,
    fwd_hooks: HookList | HookFactory | None = None,
) -> np.ndarray:
    """Mean per-token log-probability of every item of ``plan`` (no gradients). Returns ``[n_items]``."""
    out = np.full(len(plan.item_row), np.nan)
    items_of_row: dict[int, list[int]] = {}
    for i, r in enumerate(plan.item_row):
        items_of_row.setdefault(r, []).append(i)
    pad, dev = _pad_id(model), _device(model)
    with torch.no_grad():
        for rows in _batches(plan, batch_size):
            tokens = pad_rows([plan.rows[r] for r in rows], pad, dev)
            hooks = fwd_hooks(torch.tensor([plan.last_pos[r] for r in rows], device=dev)) if callable(fwd_hooks) else (fwd_hooks or [])
            with model.hooks(fwd_hooks=hooks):
                logits = model(tokens)
            items = [i for r in rows for i in items_of_row.get(r, [])]
            out[items] = item_logprobs(logits, plan, rows, items).cpu().numpy()
    return out


def score_candidates(
    model,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    fwd_hooks: HookList | HookFactory | None = None,
) -> list[np.ndarray]:
    """Mean per-token NLL of ``" " + c`` after each prompt, for each prompt's candidate list.

    Returns one array per prompt, aligned with ``candidates[i]``. Lower is more likely.

    Each prompt runs once (prompts of equal token length are batched, so nothing is padded); the
    first token of every candidate is read at the last prompt position, and multi-token candidates
    continue from the prompt's key/value cache (only their own tokens are run). A plain hook list
    is active in both passes; a :data:`HookFactory` only in the prompt pass (it targets prompt
    positions; the continuation pass has none).
    """
    enc = _Encoder(model)
    pids = [enc.prompt(p) for p in prompts]
    cids = [[enc.answer(c) for c in cands] for cands in candidates]
    if len(pids) != len(cids):
        raise ValueError("prompts and candidates differ in length")
    total = [np.zeros(len(c)) for c in cids]
    dev = _device(model)
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(pids):
        by_len.setdefault(len(ids), []).append(i)
    plain = [] if callable(fwd_hooks) else list(fwd_hooks or [])
    with torch.no_grad():
        for plen, members in sorted(by_len.items()):
            for s in range(0, len(members), batch_size):
                chunk = members[s : s + batch_size]
                tokens = torch.tensor([pids[i] for i in chunk], device=dev)
                hooks = fwd_hooks(torch.full((len(chunk),), plen - 1, device=dev)) if callable(fwd_hooks) else plain
                with model.hooks(fwd_hooks=hooks):
                    logits, cache = model(tokens, return_type="logits_and_cache")
                first = logits[:, -1].float().log_softmax(-1).cpu()
                conts: dict[int, list[tuple[int, int, int]]] = {}  # n tokens -> (row in chunk, prompt, candidate)
                for b, i in enumerate(chunk):
                    for j, ids in enumerate(cids[i]):
                        total[i][j] = float(first[b, ids[0]])
                        if len(ids) > 1:
                            conts.setdefault(len(ids), []).append((b, i, j))
                for n, items in sorted(conts.items()):
                    for c0 in range(0, len(items), 4 * batch_size):
                        part = items[c0 : c0 + 4 * batch_size]
                        sub = copy.deepcopy(cache)
                        sub.batch_select_indices(torch.tensor([b for b, _, _ in part], device=dev))
                        rows = torch.tensor([cids[i][j][:-1] for _, i, j in part], device=dev)
                        targets = torch.tensor([cids[i][j][1:] for _, i, j in part], device=dev)
                        with model.hooks(fwd_hooks=plain):
                            lg = model(rows, past_key_values=sub)
                        lp = lg.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0].sum(-1).cpu()
                        for (_, i, j), v in zip(part, lp.tolist()):
                            total[i][j] += v
    return [-t / np.array([len(ids) for ids in c]) for t, c in zip(total, cids)]


# --------------------------------------------------------------------------------------------
# Answers and consistency
# --------------------------------------------------------------------------------------------

def model_answers(
    model,
    queries: Sequence[Any],
    *,
    batch_size: int = 32,
    fwd_hooks: HookList | HookFactory | None = None,
) -> pd.DataFrame:
    """The model's answer to every prompt of every query (a ``ParaphraseQuery``-like object).

    One row per (query, template): ``query_id`` (index in ``queries``), ``relation_id``,
    ``subject``, ``object``, ``split``, ``template``, ``prompt``, ``answer``, ``correct``,
    ``answer_nll``, ``gold_nll``, ``margin`` (NLL of the runner-up minus NLL of the answer).
    ``fwd_hooks`` (a hook list or a :data:`HookFactory`) is active during scoring, e.g. steering.
    """
    prompts, cands, meta = [], [], []
    for qi, q in enumerate(queries):
        cset = list(q.candidates)
        if q.object not in cset:
            cset.append(q.object)
        for t, p in enumerate(q.prompts):
            prompts.append(p); cands.append(cset); meta.append((qi, q, t))
    nlls = score_candidates(model, prompts, cands, batch_size=batch_size, fwd_hooks=fwd_hooks)
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
