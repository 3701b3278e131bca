"""Fast tests of editlens.consistency on a tiny random Llama (GQA) built in code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from editlens import consistency as C


@dataclass(frozen=True)
class ToyQuery:
    """Same fields as editlens.data.ParaphraseQuery."""

    relation_id: str
    subject: str
    object: str
    prompts: tuple[str, ...]
    candidates: tuple[str, ...]
    split: str = "train"


CAPITALS = dict(France="Paris", Germany="Berlin", Italy="Rome", Spain="Madrid", Japan="Tokyo")
TEMPLATES = ("The capital of {} is", "{} capital is", "The capital city of {} is", "{} is a country the capital is")


def toy_queries() -> list[ToyQuery]:
    cands = tuple(CAPITALS.values()) + ("New York",)  # one multi-token candidate
    qs = [ToyQuery("P36", s, o, tuple(t.format(s) for t in TEMPLATES), cands) for s, o in CAPITALS.items()]
    langs = dict(France="French", Germany="German", Italy="Italian", Spain="Spanish", Japan="Japanese")
    lt = ("The official language of {} is", "In {} people speak", "The language spoken in {} is")
    qs += [ToyQuery("P37", s, o, tuple(t.format(s) for t in lt), tuple(langs.values())) for s, o in langs.items()]
    return qs


@pytest.fixture(scope="module")
def tiny():
    from editlens.localize.toy import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def answers(tiny):
    return C.model_answers(tiny[0], toy_queries(), batch_size=8)


def test_pairwise_consistency_and_majority():
    assert C.pairwise_consistency(["a", "a", "a"]) == 1.0
    assert C.pairwise_consistency(["a", "b", "c"]) == 0.0
    assert C.pairwise_consistency(["a", "a", "b"]) == pytest.approx(1 / 3)
    assert np.isnan(C.pairwise_consistency(["a"]))
    assert C.majority_answer(["b", "a", "a"]) == "a"
    assert C.majority_answer(["b", "a"], gold="a") == "a"  # tie -> gold
    assert C.majority_answer(["b", "a"]) == "b"  # tie, no gold -> earliest


def test_scores_match_direct_teacher_forcing(tiny):
    model, _ = tiny
    prompt = "The capital of France is"
    nll = C.score_candidates(model, [prompt], [["New York", "Paris"]])[0]
    toks = model.to_tokens(prompt + " New York")
    with torch.no_grad():
        lp = model(toks).log_softmax(-1)[0]
    n = toks.shape[1]
    direct_ny = -(lp[n - 3, toks[0, n - 2]] + lp[n - 2, toks[0, n - 1]]) / 2
    paris = model.to_tokens(" Paris", prepend_bos=False)[0, 0]
    assert nll[0] == pytest.approx(direct_ny.item(), abs=1e-4)
    assert nll[1] == pytest.approx(-lp[n - 3, paris].item(), abs=1e-4)


def test_batching_does_not_change_scores(tiny):
    model, _ = tiny
    prompts = [q.prompts[0] for q in toy_queries()]
    cands = [q.candidates for q in toy_queries()]
    a = C.score_candidates(model, prompts, cands, batch_size=1)
    b = C.score_candidates(model, prompts, cands, batch_size=64)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_packed_rows_batched_equal_one_at_a_time(tiny):
    """Several packed rows per forward pass (each padded to row_tokens, its own tree attention, only the
    kept positions unembedded) give the scores of one row at a time, in float32, with hooks too."""
    from editlens.precision import full_precision

    model, _ = tiny
    qs = toy_queries()
    prompts = [p for q in qs for p in q.prompts]
    cands = [q.candidates for q in qs for _ in q.prompts]
    hooks = [("blocks.0.attn.hook_z", lambda z, hook=None: z + 0.3)]
    with full_precision(model):
        for fwd_hooks in (None, hooks):
            one = C.score_candidates(model, prompts, cands, row_tokens=24, rows_per_batch=1, fwd_hooks=fwd_hooks)
            many = C.score_candidates(model, prompts, cands, row_tokens=24, rows_per_batch=5, fwd_hooks=fwd_hooks)
            np.testing.assert_allclose(np.concatenate(one), np.concatenate(many), atol=1e-5)
        rows = C.model_answers(model, qs, rows_per_batch=4)
        assert rows["answer"].tolist() == C.model_answers(model, qs)["answer"].tolist()


def test_answers_table(answers):
    qs = toy_queries()
    assert len(answers) == sum(len(q.prompts) for q in qs)
    for q, (_, g) in zip(qs, answers.groupby("query_id", sort=True)):
        assert set(g["answer"]) <= set(q.candidates)
        assert (g["correct"] == (g["answer"] == q.object)).all()
    assert (answers["margin"] >= 0).all()
    assert (answers["answer_nll"] <= answers["gold_nll"] + 1e-9).all()


def test_consistency_by_relation(answers):
    table = C.consistency_by_relation(answers)
    assert list(table["relation_id"]) == ["P36", "P37", "ALL"]
    per_q = C.query_consistency(answers)
    p36 = per_q[per_q.relation_id == "P36"]
    assert table.loc[0, "consistency"] == pytest.approx(p36["consistency"].mean())
    assert table.loc[2, "accuracy"] == pytest.approx(table.loc[:1, "accuracy"].mean())
    assert (table["consistency_correct"] <= table["consistency"] + 1e-12).all()
    s = C.summary(answers)
    assert 0 <= s["accuracy"] <= 1 and 0 <= s["consistency"] <= 1


def test_hooks_change_answers(tiny):
    """A hook factory (Chapter 2's steering) is applied during scoring, at the last prompt token."""
    model, _ = tiny
    seen = []

    def factory(last_pos):
        seen.append(last_pos.clone())

        def hook(z, hook=None):
            z = z.clone()
            z[torch.arange(z.shape[0]), last_pos] += 5.0
            return z

        return [("blocks.1.attn.hook_z", hook)]

    q = toy_queries()[:2]
    plain = C.model_answers(model, q)
    steered = C.model_answers(model, q, fwd_hooks=factory)
    assert seen and not np.allclose(plain["answer_nll"], steered["answer_nll"])
