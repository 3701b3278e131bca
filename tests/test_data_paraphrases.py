"""Tests of the paraphrase set, the open-ended set, the ParaRel loaders and the data card."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import load_script

from editlens.data.openended import OpenEndedQuestion, load_openended
from editlens.data.paraphrases import (
    DEFAULT_PATH,
    ParaphraseQuery,
    assign_relation_splits,
    assign_subject_splits,
    load_paraphrases,
    relations,
)
from editlens.data.pararel import load_pararel, pattern_to_template, read_pararel

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- paraphrase set


def test_size_requirements():
    rels = relations()
    queries = load_paraphrases("all")
    assert len(rels) >= 10
    per_rel = defaultdict(int)
    for q in queries:
        per_rel[q.relation_id] += 1
    for rid, rel in rels.items():
        assert len(rel["templates"]) >= 5, rid
        assert per_rel[rid] >= 20, (rid, per_rel[rid])
        assert set(rel) >= {"name", "templates", "candidates"}


def test_queries_are_well_formed():
    rels = relations()
    for q in load_paraphrases("all"):
        assert isinstance(q, ParaphraseQuery)
        rel = rels[q.relation_id]
        assert len(q.prompts) == len(rel["templates"])
        assert q.candidates == tuple(rel["candidates"])
        assert q.object in q.candidates
        assert q.object == q.object.strip() and not q.object.startswith(" ")
        assert len(set(q.prompts)) == len(q.prompts)
        for prompt in q.prompts:
            assert q.subject in prompt
            assert "[X]" not in prompt and "[Y]" not in prompt
            assert prompt == prompt.rstrip(), "prompts end where the answer goes, without a trailing space"


def test_subject_splits_are_disjoint_across_relations():
    splits = {s: load_paraphrases(s) for s in ("train", "validation", "test")}
    subjects = {s: {q.subject for q in qs} for s, qs in splits.items()}
    assert not subjects["train"] & subjects["validation"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["validation"] & subjects["test"]
    assert sum(len(v) for v in splits.values()) == len(load_paraphrases("all"))
    for name, qs in splits.items():
        assert qs and all(q.split == name for q in qs)
    # a subject shared by several relations (e.g. a country) sits in one split
    shared = defaultdict(set)
    for q in load_paraphrases("all"):
        shared[q.subject].add(q.split)
    assert all(len(v) == 1 for v in shared.values())
    # every relation is represented in every split
    for name, qs in splits.items():
        assert {q.relation_id for q in qs} == set(relations()), name


def test_relation_scheme_holds_out_whole_relations():
    train = load_paraphrases("train", scheme="relations")
    val = load_paraphrases("validation", scheme="relations")
    test = load_paraphrases("test", scheme="relations")
    r_train, r_val, r_test = ({q.relation_id for q in qs} for qs in (train, val, test))
    assert len(r_test) == 3 and len(r_val) == 2
    assert not r_train & r_test and not r_train & r_val and not r_val & r_test
    assert r_train | r_val | r_test == set(relations())
    assert all(q.split == "test" for q in test)
    doc = json.loads(DEFAULT_PATH.read_text())
    assert sorted(r_test) == doc["relation_splits"]["test"]


def test_splits_are_deterministic_and_match_the_file():
    queries = load_paraphrases("all")
    again = assign_subject_splits([(q.relation_id, q.subject) for q in queries])
    assert all(again[q.subject] == q.split for q in queries)
    rel = assign_relation_splits(list(relations()))
    assert all(rel[q.relation_id] == q.split for q in load_paraphrases("all", scheme="relations"))


def test_bad_names_raise_value_error_naming_valid_ones():
    with pytest.raises(ValueError, match="train, validation, test"):
        load_paraphrases("dev")
    with pytest.raises(ValueError, match="subjects, relations"):
        load_paraphrases("train", scheme="subject")


def test_json_is_generated_from_the_authoring_tables(tmp_path):
    """The committed json equals what scripts/author_paraphrases.py builds from its tables."""
    author = load_script("author_paraphrases")
    out = tmp_path / "paraphrases.json"
    out.write_text(DEFAULT_PATH.read_text())  # --no-model reuses the stored predictions
    assert author.main(["--no-model", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(DEFAULT_PATH.read_text())


def test_verification_numbers_are_stored():
    doc = json.loads(DEFAULT_PATH.read_text())
    per_rel = doc["verification"]["per_relation"]
    assert set(per_rel) == set(relations())
    for rid, e in per_rel.items():
        assert 0.0 <= e["accuracy"] <= 1.0 and 0.0 <= e["consistency"] <= 1.0
    # the chapters need inconsistent pairs to study
    assert doc["verification"]["overall"]["inconsistent_pairs"] > 100


# ---------------------------------------------------------------- open-ended set


def test_openended_set():
    qs = load_openended()
    assert len(qs) >= 50
    assert len({q.id for q in qs}) == len(qs)
    for q in qs:
        assert isinstance(q, OpenEndedQuestion)
        assert len(q.paraphrases) >= 3 and q.reference


def test_openended_malformed(tmp_path):
    bad = tmp_path / "oe.json"
    bad.write_text(json.dumps({"questions": [
        {"id": "a", "paraphrases": ["x?", "y?", "z?"], "reference": "r"},
        {"id": "b", "paraphrases": ["x?", "y?"], "reference": "r"},
    ]}))
    with pytest.raises(ValueError, match=r"question 1.*'paraphrases'"):
        load_openended(bad)
    bad.write_text(json.dumps({"questions": [{"id": "a", "paraphrases": ["x?", "y?", "z?"]}]}))
    with pytest.raises(ValueError, match=r"question 0: missing field 'reference'"):
        load_openended(bad)


# ---------------------------------------------------------------- ParaRel loaders


def _write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def pararel_dirs(tmp_path):
    pat, tup = tmp_path / "graphs_json", tmp_path / "trex_lms_vocab"
    meta = {"lemma": "x", "extended_lemma": "x", "tense": "present"}
    _write_jsonl(pat / "P36.jsonl", [
        {"pattern": "The capital of [X] is [Y] .", **meta},
        {"pattern": "[X]'s capital city is [Y].", **meta},
        {"pattern": "[X],  whose capital is [Y].", **meta},
        {"pattern": "[Y] is the capital of [X].", **meta},
    ])
    _write_jsonl(pat / "P37.jsonl", [
        {"pattern": "The official language of [X] is [Y] .", **meta},
        {"pattern": "In [X], [Y] is spoken.", **meta},
    ])
    _write_jsonl(pat / "P99.jsonl", [{"pattern": "[X] likes [Y].", **meta}])  # no tuples file
    _write_jsonl(tup / "P36.jsonl", [
        {"sub_label": "France", "obj_label": "Paris", "uuid": "1"},
        {"sub_label": "Germany", "obj_label": "Berlin", "uuid": "2"},
        {"sub_label": "Japan", "obj_label": "Tokyo", "uuid": "3"},
        "",
    ])
    _write_jsonl(tup / "P37.jsonl", [
        {"sub_label": "France", "obj_label": "French", "uuid": "4"},
        {"sub_label": "Italy", "obj_label": "Italian", "uuid": "5"},
    ])
    return pat, tup


def test_pattern_to_template():
    assert pattern_to_template("The capital of [X] is [Y] .") == "The capital of [X] is"
    assert pattern_to_template("[X],  a type of [Y].") == "[X], a type of"
    assert pattern_to_template("[Y] is the capital of [X].") is None
    with pytest.raises(ValueError):
        pattern_to_template("The capital of [X] is")


def test_load_pararel_converts_and_reports(pararel_dirs):
    pat, tup = pararel_dirs
    with pytest.warns(UserWarning, match=r"skipped 2 pattern.*P36: 1, P37: 1"):
        queries = load_pararel(pat, tup)
    assert all(isinstance(q, ParaphraseQuery) for q in queries)
    by_key = {(q.relation_id, q.subject): q for q in queries}
    assert set(by_key) == {("P36", "France"), ("P36", "Germany"), ("P36", "Japan"),
                           ("P37", "France"), ("P37", "Italy")}
    fr = by_key[("P36", "France")]
    assert fr.prompts == ("The capital of France is", "France's capital city is", "France, whose capital is")
    assert fr.candidates == ("Berlin", "Paris", "Tokyo") and fr.object == "Paris"
    assert by_key[("P37", "France")].split == fr.split  # same subject, same split
    loaded = read_pararel(pat, tup)
    assert len(loaded.skipped) == 2 and loaded.skipped[0].line == 4
    assert loaded.unmatched == ["P99"]


def test_load_pararel_filters_and_splits(pararel_dirs):
    pat, tup = pararel_dirs
    with pytest.warns(UserWarning):
        only = load_pararel(pat, tup, relations=["P36"])
    assert {q.relation_id for q in only} == {"P36"}
    with pytest.warns(UserWarning):
        parts = [load_pararel(pat, tup, split=s) for s in ("train", "validation", "test")]
    assert sum(map(len, parts)) == 5
    with pytest.raises(FileNotFoundError, match="P99"):
        load_pararel(pat, tup, relations=["P99"])
    with pytest.raises(ValueError, match="train, validation, test"):
        load_pararel(pat, tup, split="dev")


@pytest.mark.parametrize("row, match", [
    ('{"sub_label": "Spain", "obj_label": ', r"P36.jsonl, line 2: invalid JSON"),
    ({"sub_label": "Spain"}, r"P36.jsonl, line 2: missing field 'obj_label'"),
    ({"sub_label": "Spain", "obj_label": 3}, r"P36.jsonl, line 2: field 'obj_label' must be"),
])
def test_load_pararel_malformed_tuples(pararel_dirs, row, match):
    pat, tup = pararel_dirs
    _write_jsonl(tup / "P36.jsonl", [{"sub_label": "France", "obj_label": "Paris"}, row])
    with pytest.raises(ValueError, match=match):
        load_pararel(pat, tup)


def test_load_pararel_malformed_pattern(pararel_dirs):
    pat, tup = pararel_dirs
    _write_jsonl(pat / "P37.jsonl", [{"pattern": "The language of [X] is [Y]."}, {"pattern": "No slots here."}])
    with pytest.raises(ValueError, match=r"P37.jsonl, line 2: field 'pattern'"):
        load_pararel(pat, tup)
    _write_jsonl(pat / "P37.jsonl", [{"template": "The language of [X] is [Y]."}])
    with pytest.raises(ValueError, match=r"P37.jsonl, line 1: missing field 'pattern'"):
        load_pararel(pat, tup)


# ---------------------------------------------------------------- data card


def test_data_card_tables_are_current():
    """book/data.md contains exactly the tables scripts/data_card_tables.py generates now."""
    tables = load_script("data_card_tables")
    page = (ROOT / "book" / "data.md").read_text(encoding="utf-8")
    for name, table in tables.all_tables().items():
        assert table.strip() in page, f"book/data.md: table {name!r} is stale; run python scripts/data_card_tables.py --write"
