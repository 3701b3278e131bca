"""``editlens.edit_consistency`` (Chapter 6): an edited fact asked with every template of its relation.

Fast (tiny random model, a hand-made paraphrase set): relation matching and its errors, which facts.json records
qualify, fractions in [0, 1] that sum to 1, pairwise consistency equal to :mod:`editlens.consistency`'s on the same
answers, the measure on an edited model, and inside :func:`editlens.steering.steered` (zero shifts: the same result;
a non-zero shift: it runs with the hooks active).
"""

from __future__ import annotations

import math

import pytest
import torch

from editlens.consistency import model_answers, pairwise_consistency, query_consistency
from editlens.edit_consistency import (
    DEFAULT_FOR_WIKIDATA,
    NoTemplatesError,
    edit_query,
    edited_answer_consistency,
    load_template_set,
    relations_with_templates,
    template_relation,
)

PSET = {
    "capital": {"templates": ["The capital of [X] is", "[X]'s capital city is", "The capital city of [X] is",
                              "Q: What is the capital of [X]? A:"],
                "candidates": ["Paris", "Berlin", "Rome", "Madrid"], "wikidata": "P36", "subjects": {"France"}},
    "city_country": {"templates": ["[X] is a city in", "[X] is located in the country of"],
                     "candidates": ["France", "Italy"], "wikidata": "P17", "subjects": {"Lyon"}},
    "landmark_country": {"templates": ["Tourists travel to see [X] in", "The country where [X] is located is"],
                         "candidates": ["France", "Italy"], "wikidata": "P17", "subjects": {"Louvre"}},
    "one_template": {"templates": ["[X] speaks"], "candidates": ["French"], "wikidata": "P37"},
}


def record(cid, subject, prompt, rel, new, true):
    return {"case_id": cid, "requested_rewrite": {"prompt": prompt, "subject": subject, "relation_id": rel,
                                                  "target_new": {"str": new}, "target_true": {"str": true}}}


CASE = record(0, "France", "The capital city of {} is", "P36", "Tokyo", "Paris")  # Tokyo: not a candidate


def test_relation_matching_and_errors():
    assert template_relation(CASE, PSET) == "capital"
    assert template_relation(record(1, "Lyon", "{} is in", "P17", "Italy", "France"), PSET) == "city_country"
    assert template_relation(record(2, "Pisa", "{} is in", "P17", "France", "Italy"), PSET) == DEFAULT_FOR_WIKIDATA["P17"]
    assert template_relation(record(3, "x", "{} is", "capital", "Rome", "Paris"), PSET) == "capital"  # by name
    with pytest.raises(NoTemplatesError, match="P19.*Fix: select records with relations_with_templates"):
        template_relation(record(4, "Merkel", "{} was born in", "P19", "Paris", "Hamburg"), PSET)
    ambiguous = {k: v for k, v in PSET.items() if k != "landmark_country"}
    ambiguous["company_country"] = {**PSET["city_country"], "subjects": set()}
    with pytest.raises(NoTemplatesError, match="several template sets.*Fix: pass relation="):
        template_relation(record(5, "Pisa", "{} is in", "P17", "France", "Italy"), ambiguous)
    assert template_relation(record(5, "Pisa", "{} is in", "P17", "France", "Italy"), ambiguous,
                             relation="company_country") == "company_country"
    with pytest.raises(NoTemplatesError, match="at least 2"):
        edit_query(record(6, "France", "The language of {} is", "P37", "German", "French"), PSET)
    q = edit_query(CASE, PSET)
    assert q.object == "Tokyo" and q.candidates == ("Paris", "Berlin", "Rome", "Madrid", "Tokyo")
    assert q.prompts[0] == "The capital of France is" and len(q.prompts) == 4


def test_facts_json_records_that_qualify():
    from editlens.data import load_facts

    facts = load_facts()
    groups = relations_with_templates(facts, load_template_set())
    counts = {k: len(v) for k, v in groups.items()}
    assert counts["capital"] == 7 and counts["landmark_country"] == 35 and "city_country" not in counts
    assert sum(counts.values()) == 178  # of 317: P27, P103, P131, P159 have no templates
    assert all(c.relation_id == "P17" for c in groups["landmark_country"])


def test_edited_answer_consistency_on_the_tiny_model(tiny_model):
    r = edited_answer_consistency(tiny_model, CASE, PSET)
    assert r["n_templates"] == 4 and r["n_candidates"] == 5 and len(r["answers"]) == 4
    for k in ("frac_new", "frac_true", "frac_other", "consistency", "consistency_new"):
        assert 0.0 <= r[k] <= 1.0, (k, r)
    assert r["frac_new"] + r["frac_true"] + r["frac_other"] == pytest.approx(1.0)
    assert r["frac_new"] == sum(a == "Tokyo" for a in r["answers"]) / 4
    assert r["frac_true"] == sum(a == "Paris" for a in r["answers"]) / 4
    # Chapter 1's measure on the same answers, and the same answers as model_answers on the same query
    frame = model_answers(tiny_model, [edit_query(CASE, PSET)])
    assert list(frame.sort_values("template")["answer"]) == r["answers"]
    assert r["consistency"] == pairwise_consistency(r["answers"]) == query_consistency(frame)["consistency"].iat[0]
    n_new = round(r["frac_new"] * 4)
    assert r["consistency_new"] == pytest.approx(n_new * (n_new - 1) / 2 / 6)


def test_on_an_edited_model_and_under_steering(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    from editlens.rome import ROMEHyperParams, edited
    from editlens.rome import key_stats as ks
    from editlens.steering import steered
    from editlens.steering.inject import model_dims

    before = edited_answer_consistency(tiny_model, CASE, PSET)
    hp = ROMEHyperParams(layer=0, v_num_grad_steps=3, context_lengths=((3, 2),), v_lr=0.5, v_weight_decay=0.0,
                         clamp_norm_factor=1e4, mom2_n_tokens=300)
    stats = ks.get_key_stats(tiny_model, 0, n_tokens=300, seq_len=32, progress=False)
    with edited(tiny_model, [CASE], hp, stats):
        after = edited_answer_consistency(tiny_model, CASE, PSET)
    assert after["n_templates"] == 4 and 0 <= after["frac_new"] <= 1
    assert edited_answer_consistency(tiny_model, CASE, PSET) == before  # restored

    n_layers, n_heads, d_head = model_dims(tiny_model)
    zero = {(0, 0): torch.zeros(d_head), (1, 1): torch.zeros(d_head)}
    with steered(tiny_model, zero):
        same = edited_answer_consistency(tiny_model, CASE, PSET)
    assert same["answers"] == before["answers"] and same["consistency"] == before["consistency"]

    big = {(l, h): torch.full((d_head,), 50.0) for l in range(n_layers) for h in range(n_heads)}
    from editlens.consistency import model_answers as ma

    q = edit_query(CASE, PSET)
    plain = ma(tiny_model, [q])["answer_nll"].to_numpy()
    with steered(tiny_model, big):
        shifted = edited_answer_consistency(tiny_model, CASE, PSET)
        nll = ma(tiny_model, [q])["answer_nll"].to_numpy()
    assert not (abs(nll - plain) < 1e-6).all()  # the hooks were active during the scoring
    assert 0 <= shifted["frac_new"] <= 1 and not math.isnan(shifted["consistency"])
