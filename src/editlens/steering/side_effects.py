"""What steering costs elsewhere: perplexity, known facts, and the consistency of free-form answers.

Taught in: Chapter 2 (side effects of steering, and the generation-level consistency measure).

All three read the model through ordinary forward passes or Hugging Face ``generate``, so they
see a steering that is *baked* into the weights (:func:`editlens.steering.baked`), not hooks:
``generate`` runs the wrapped Hugging Face model and never calls TransformerLens hooks. Measure a
steered model inside ``with baked(model, shifts):``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import torch

from editlens.scoring import ROWS_PER_BATCH, encode_prompt, model_device, pad_id, pad_rows, score_continuations

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _token_rows(model: TransformerBridge, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    rows = []
    for t in texts:
        ids = encode_prompt(model, t)[:max_tokens]
        if len(ids) < 2:
            raise ValueError(f"text {t[:40]!r} has fewer than one token after BOS; perplexity needs text.")
        rows.append(ids)
    return rows


@torch.no_grad()
def perplexity(model: TransformerBridge, texts: Sequence[str], *, batch_size: int = 16, max_tokens: int = 128) -> float:
    """exp(mean NLL per token) over all tokens of ``texts`` after BOS (each text cut to ``max_tokens``).

    Right-padded batches: with causal attention the real positions never see the padding."""
    if not texts:
        raise ValueError("perplexity() needs at least one text.")
    rows = _token_rows(model, texts, max_tokens)
    total, count = 0.0, 0
    pad, dev = pad_id(model), model_device(model)
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            batch = rows[s : s + batch_size]
            tokens = pad_rows(batch, pad, dev, multiple=32)  # few shapes: bf16 kernels are built per shape
            lp = torch.log_softmax(model(tokens).float(), -1)
            for j, ids in enumerate(batch):
                tgt = torch.tensor(ids[1:], device=lp.device)
                total += float(-lp[j, torch.arange(len(ids) - 1, device=lp.device), tgt].sum())
                count += len(ids) - 1
    return math.exp(total / count)


@torch.no_grad()
def known_facts(model: TransformerBridge, facts: Sequence[Any], *, batch_size: int = 32) -> dict[str, float]:
    """How often the true object still beats the counterfactual one (facts set records).

    ``rewrite``: the rewrite prompt of each record; ``neighbourhood``: its neighbourhood prompts
    (other subjects with the same true object). The facts set keeps only records where the
    unedited model passes both, so 1.0 is the unedited model's score by construction."""
    from editlens.evaluate import as_case, probe_rows

    # The evaluation's own probe rows (ES: new vs true on the rewrite prompt; NS: true vs new on
    # neighbourhood prompts), read as "does the true object still win".
    rows: list[tuple[str, str, str, str]] = []  # (kind, prompt, true object, new object)
    for f in facts:
        for kind, prompt, good, bad in probe_rows(as_case(f)):
            if kind == "ES":
                rows.append(("rewrite", prompt, bad, good))
            elif kind == "NS":
                rows.append(("neighbourhood", prompt, good, bad))
    pairs = [(r[1], r[2]) for r in rows] + [(r[1], r[3]) for r in rows]
    nll = score_continuations(model, pairs, rows_per_batch=ROWS_PER_BATCH)
    true_nll, new_nll = nll[: len(rows)], nll[len(rows):]
    out: dict[str, float] = {}
    for kind in ("rewrite", "neighbourhood"):
        wins = [bool(t < n) for r, t, n in zip(rows, true_nll, new_nll) if r[0] == kind]
        out[kind] = sum(wins) / len(wins) if wins else math.nan
    out["n_prompts"] = len(rows)
    return out


def answer_prompt(question: str) -> str:
    """How an open-ended question is put to the model: plain text, the answer follows ``Answer:``."""
    return f"Question: {question}\nAnswer:"


@torch.no_grad()
def generation_consistency(model: TransformerBridge, questions: Sequence[Any], *, max_new_tokens: int = 24,
                           return_answers: bool = False) -> dict[str, Any]:
    """Mean over questions of the sentence-embedding agreement of the model's greedy answers to the
    question's paraphrases (:func:`editlens.sentence.agreement`, all-MiniLM-L6-v2, cosine).

    Answers are cut at the first newline (the model tends to start a new question after it)."""
    from editlens.evaluate import generate
    from editlens.sentence import agreement

    if not questions:
        raise ValueError("generation_consistency() needs at least one question.")
    per_question, answers = [], []
    prompts = [answer_prompt(p) for q in questions for p in q.paraphrases]
    with torch.no_grad():
        texts = generate(model, prompts, max_new_tokens=max_new_tokens)
    i = 0
    for q in questions:
        ans = [t.strip().split("\n")[0].strip() or "(empty)" for t in texts[i : i + len(q.paraphrases)]]
        i += len(q.paraphrases)
        per_question.append(agreement(ans))
        answers.append(ans)
    out: dict[str, Any] = {"agreement": sum(per_question) / len(per_question), "per_question": per_question}
    if return_answers:
        out["answers"] = answers
    return out
