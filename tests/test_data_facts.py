"""Tests of the CounterFact-style fact set (editlens.data.counterfact / verify).

Fast tests check the shipped file's schema and dataset rules and the loaders (with small fixture
files in ROME's and SADR's formats, and malformed ones). The slow test recomputes every stored
margin on the embedded model.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from editlens.data import (
    BadRequestError,
    CounterFactRecord,
    RewriteRequest,
    as_case,
    as_request,
    check_dataset,
    load_facts,
    load_object_descriptions,
    parse_records,
)
from editlens.data.counterfact import FACTS_PATH, MIN_RECORDS, MIN_RELATIONS, MINIMUMS
from editlens.data.verify import MIN_MARGIN, TOLERANCE, disagreements, failures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def facts() -> list[CounterFactRecord]:
    return load_facts()


# ------------------------------------------------------------------------------------------
# The shipped set
# ------------------------------------------------------------------------------------------
def test_counts(facts):
    assert len(facts) >= MIN_RECORDS
    rels = {r.relation_id for r in facts}
    assert len(rels) >= MIN_RELATIONS, rels


def test_dataset_rules(facts):
    assert check_dataset(facts) == []


def test_unique_case_ids(facts):
    ids = [r.case_id for r in facts]
    assert len(ids) == len(set(ids))


def test_field_minimums(facts):
    for r in facts:
        for fld, n in MINIMUMS.items():
            assert len(getattr(r, fld)) >= n, (r.case_id, fld)


def test_prompts_and_subjects(facts):
    for r in facts:
        assert r.requested_rewrite.prompt.count("{}") == 1
        assert r.prompt == r.requested_rewrite.prompt.format(r.subject)
        assert not r.prompt.endswith(" "), r.prompt
        for p in r.paraphrase_prompts:
            assert r.subject in p
        for p in (*r.neighborhood_prompts, *r.attribute_prompts):
            assert r.subject.lower() not in p.lower()
        for g in r.generation_prompts:
            assert r.subject in g
        for rp in r.relation_prompts:
            assert r.subject in rp.prompt and rp.target != r.target_new
        for pp in r.portability_prompts:
            assert r.subject in pp.prompt and pp.target_true and pp.target_true != pp.target_new
        assert r.target_true != r.target_new
        for t in (r.target_true, r.target_new):
            assert t == t.strip() and t


def test_neighbourhood_and_attribute_prompts_are_facts_of_other_subjects(facts):
    """Neighbourhood prompts are rewrite-style prompts (no lead-in) that are not the subject's own."""
    for r in facts:
        assert len(set(r.neighborhood_prompts)) == len(r.neighborhood_prompts)
        assert len(set(r.attribute_prompts)) == len(r.attribute_prompts)
        assert not set(r.neighborhood_prompts) & set(r.attribute_prompts)


def test_stored_verification_passes(facts):
    for r in facts:
        v = r.verification
        assert v is not None
        assert len(v["paraphrase"]) == len(r.paraphrase_prompts)
        assert len(v["neighborhood"]) == len(r.neighborhood_prompts)
        assert len(v["attribute"]) == len(r.attribute_prompts)
        assert len(v["relation"]) == len(r.relation_prompts)
        assert len(v["portability"]) == len(r.portability_prompts)
        assert failures(v) == [], (r.case_id, failures(v))
        assert v["rewrite"] == pytest.approx(v["nll_new"] - v["nll_true"], abs=2e-4)


def test_object_descriptions_cover_every_target(facts):
    desc = load_object_descriptions()
    for r in facts:
        for obj in (r.target_true, r.target_new):
            assert obj in desc, obj
            assert len(desc[obj]) == 3 and all(s.strip().endswith(".") for s in desc[obj])
            assert any(obj.lower() in s.lower() for s in desc[obj]), obj


def test_round_trip(facts):
    again = parse_records([r.to_dict() for r in facts], fname="roundtrip")
    assert again == facts
    assert [a.verification for a in again] == [r.verification for r in facts]


def test_records_come_from_the_authoring_tables(facts):
    """Every shipped (subject, relation, target_true) is a fact in scripts/author_facts.py."""
    spec = importlib.util.spec_from_file_location("author_facts", REPO / "scripts" / "author_facts.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    table = {(f.subject, f.pid, f.obj) for f in mod.build_facts()}
    for r in facts:
        assert (r.subject, r.relation_id, r.target_true) in table, r.case_id
        # target_new is a true object of the same relation for some other subject (a plausible object)
        assert any(p == r.relation_id and o == r.target_new for _, p, o in table), r.case_id


# ------------------------------------------------------------------ one record, one request (issue 28)
def test_as_case_gives_the_one_record_from_every_shape(facts):
    rec = facts[0]
    assert as_case(rec) is rec  # a loaded record is already the record: nothing to convert
    again = as_case(rec.to_dict())  # the file's form, read back through the entry point
    assert again == rec and again.requested_rewrite.target_new_id == rec.requested_rewrite.target_new_id
    assert as_request(rec) is rec.requested_rewrite and isinstance(rec.requested_rewrite, RewriteRequest)
    assert rec.requested_rewrite.case_id == rec.case_id
    flat = as_case({"case_id": 3, "prompt": "{} is in", "subject": "X", "target_new": "Y",
                    "relation_prompts": [{"prompt": "X speaks", "target": "French"}]})
    assert (flat.case_id, flat.target_new, flat.target_true) == (3, "Y", None)
    assert flat.relation_prompts[0].target == "French" and flat.paraphrase_prompts == ()
    req = RewriteRequest(prompt="{} is in", subject="X", target_new="Y", case_id=4)
    assert as_case(req).requested_rewrite is req and as_case(req).case_id == 4


def test_as_case_names_what_is_wrong():
    with pytest.raises(BadRequestError, match=r"missing \['target_new'\]"):
        as_case({"prompt": "{} is in", "subject": "X"})
    with pytest.raises(ValueError, match="relation_prompts\\[0\\].target is missing"):
        as_case({"prompt": "{} is in", "subject": "X", "target_new": "Y", "relation_prompts": [{"prompt": "X is"}]})
    with pytest.raises(ValueError, match="paraphrase_prompts must be a list of strings"):
        as_case({"prompt": "{} is in", "subject": "X", "target_new": "Y", "paraphrase_prompts": "X is in"})
    with pytest.raises(BadRequestError, match="Cannot read a fact from a int"):
        as_case(7)


FACT_KEYS = ("requested_rewrite", "paraphrase_prompts", "neighborhood_prompts", "attribute_prompts",
             "generation_prompts", "relation_prompts", "portability_prompts", "target")
"""Keys only a fact has (``target_new``/``case_id`` also name the columns of result rows, which stay dicts)."""


def test_the_package_reads_facts_through_the_record():
    """Only the entry points (editlens.data.counterfact) read a fact's dict keys; everything else reads the typed
    record's fields, so no module guesses a key (``r.get("target") or r.get("target_true")``)."""
    import re

    keys = "|".join(FACT_KEYS)
    pattern = re.compile(rf"""(?<!MINIMUMS)\[["']({keys})["']\]|\.get\(["']({keys})["']""")
    found = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
             for path in sorted((REPO / "src" / "editlens").rglob("*.py")) if path.name != "counterfact.py"
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, "fact fields read through dict keys:\n" + "\n".join(found)
    assert pattern.search('tgt = r.get("target") or r.get("target_true")')  # the check can fail


def test_limit_and_default_path():
    assert len(load_facts(limit=3)) == 3
    assert len(load_facts(FACTS_PATH, format="editlens", limit=0)) == 0


# ------------------------------------------------------------------------------------------
# Loaders on fixture files
# ------------------------------------------------------------------------------------------
ROME_RECORD = {
    "case_id": 0,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
                           "An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"],
    "attribute_prompts": ["J. R. R. Tolkien is a native speaker of", "The mother tongue of Douglas Adams is"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is", "Where Danielle Darrieux is from, people speak the language of"],
}

SADR_RECORD = {
    "requested_rewrite": {
        "prompt": "Justus von Liebig specializes in",
        "target_new": "sociology",
        "target_true": "chemistry",
        "subject": "Justus von Liebig",
        "relation_id": "P101",
        "target_new_id": "Q21201",
    },
    "rewrite": {"prompts": ["Justus von Liebig specializes in"], "targets": ["sociology"]},
    "p-paraphrase": {"prompts": ["Noting the denominator. The domain of work of Justus von Liebig is"],
                     "targets": ["sociology"]},
    "l-neighbor": {"prompts": ["John Dalton's domain of activity is", "Paul Langevin specializes in"],
                   "targets": ["chemistry", "chemistry"]},
    "l-relation": {"prompts": ["The occupation of Justus von Liebig is"], "targets": ["chemist"]},
    "p-reasoning": {"prompts": ["The field of the domain of work of Justus von Liebig is"], "targets": ["social science"]},
    "generation": {"prompts": ["Justus von Liebig is known for", "Justus von Liebig is known for",
                               "Justus von Liebig works as a"]},
    "o-commonsense": {"prompts": "How to keep beads organized?", "right": "Egg carton.", "wrong": "Top."},
}


def _write(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


def test_load_official_counterfact(tmp_path):
    second = json.loads(json.dumps(ROME_RECORD))
    second["case_id"] = 1
    path = _write(tmp_path, "counterfact.json", [ROME_RECORD, second])
    recs = load_facts(path)
    assert len(recs) == 2 and recs[0].source == "counterfact"
    r = recs[0]
    assert r.subject == "Danielle Darrieux" and r.target_true == "French" and r.target_new == "English"
    assert r.requested_rewrite.target_new_id == "Q1860"
    assert r.prompt == "The mother tongue of Danielle Darrieux is"
    assert r.relation_prompts == () and r.portability_prompts == () and r.aliases == ()
    assert r.verification is None
    assert len(r.neighborhood_prompts) == 2 and len(r.attribute_prompts) == 2
    assert load_facts(path, format="counterfact") == recs
    assert len(load_facts(path, limit=1)) == 1


def test_load_sadr(tmp_path):
    path = _write(tmp_path, "merged_counterfact.json", [SADR_RECORD, SADR_RECORD])
    recs = load_facts(path)
    assert [r.case_id for r in recs] == [0, 1]
    r = recs[0]
    assert r.source == "sadr"
    assert r.requested_rewrite.prompt == "{} specializes in"
    assert r.target_new == "sociology" and r.requested_rewrite.target_new_id == "Q21201"
    assert r.requested_rewrite.target_true_id == "chemistry"
    assert r.neighborhood_prompts == ("John Dalton's domain of activity is", "Paul Langevin specializes in")
    assert r.relation_prompts[0].target == "chemist"
    assert r.portability_prompts[0].target_new == "social science" and r.portability_prompts[0].target_true is None
    assert r.generation_prompts == ("Justus von Liebig is known for", "Justus von Liebig works as a")
    assert "o-commonsense" in r.extra
    assert load_facts(path, format="sadr") == recs


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["requested_rewrite"].update(prompt="The mother tongue of Danielle Darrieux is"),
         "counterfact.json record 1 (case_id 1): requested_rewrite.prompt has no '{}' — the subject placeholder"),
        (lambda d: d["requested_rewrite"].update(prompt="{} and {} speak"), "requested_rewrite.prompt has 2"),
        (lambda d: d["requested_rewrite"].pop("subject"), "record 1 (case_id 1): requested_rewrite.subject is missing"),
        (lambda d: d["requested_rewrite"]["target_new"].pop("str"), "requested_rewrite.target_new.str is missing"),
        (lambda d: d["requested_rewrite"]["target_true"].update(str=" French"), "leading/trailing whitespace"),
        (lambda d: d["requested_rewrite"]["target_new"].update(str="French"), "equals target_true"),
        (lambda d: d.update(paraphrase_prompts="not a list"), "paraphrase_prompts must be a list"),
        (lambda d: d.update(neighborhood_prompts=["ok", 3]), "neighborhood_prompts[1] must be a string"),
        (lambda d: d.update(case_id="1"), "case_id must be an integer"),
        (lambda d: d.update(case_id=0), "case_id 0 duplicates record 0"),
        (lambda d: d.pop("requested_rewrite"), "record 1 (case_id 1): requested_rewrite is missing"),
    ],
)
def test_malformed_counterfact(tmp_path, mutate, message):
    bad = json.loads(json.dumps(ROME_RECORD))
    bad["case_id"] = 1
    mutate(bad)
    path = _write(tmp_path, "counterfact.json", [ROME_RECORD, bad])
    with pytest.raises(ValueError) as err:
        load_facts(path, format="counterfact")
    assert message in str(err.value)
    assert "counterfact.json" in str(err.value)


def test_malformed_project_records(tmp_path):
    good = load_facts(limit=2)
    d = [r.to_dict() for r in good]
    d[1]["relation_prompts"] = [{"prompt": "x"}]
    path = _write(tmp_path, "facts.json", d)
    with pytest.raises(ValueError, match=r"facts.json record 1 \(case_id \d+\): relation_prompts\[0\].target is missing"):
        load_facts(path)
    d[1]["relation_prompts"] = []
    d[1]["portability_prompts"] = [{"prompt": "x", "target_true": "a"}]
    _write(tmp_path, "facts.json", d)
    with pytest.raises(ValueError, match=r"portability_prompts\[0\].target_new is missing"):
        load_facts(path)
    d[1]["portability_prompts"] = []
    d[1]["verification"] = [1, 2]
    _write(tmp_path, "facts.json", d)
    with pytest.raises(ValueError, match="verification must be an object"):
        load_facts(path)


def test_malformed_sadr(tmp_path):
    bad = json.loads(json.dumps(SADR_RECORD))
    bad["requested_rewrite"]["prompt"] = "Somebody specializes in"
    path = _write(tmp_path, "merged_counterfact.json", [SADR_RECORD, bad])
    with pytest.raises(ValueError, match=r"merged_counterfact.json record 1 \(case_id 1\): requested_rewrite.prompt has no"):
        load_facts(path)
    bad = json.loads(json.dumps(SADR_RECORD))
    bad["l-neighbor"]["targets"] = ["chemistry"]
    _write(tmp_path, "merged_counterfact.json", [SADR_RECORD, bad])
    with pytest.raises(ValueError, match=r"l-neighbor.targets has 1 entries for 2 prompts"):
        load_facts(path)


def test_bad_files(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_facts(p)
    with pytest.raises(ValueError, match="top level must be a list"):
        load_facts(_write(tmp_path, "obj.json", {"a": 1}))
    with pytest.raises(ValueError, match="no records"):
        load_facts(_write(tmp_path, "empty.json", []))
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_facts(_write(tmp_path, "odd.json", [{"foo": 1}]))
    with pytest.raises(ValueError, match="format="):
        load_facts(_write(tmp_path, "cf.json", [ROME_RECORD]), format="rome")
    with pytest.raises(FileNotFoundError):
        load_facts(tmp_path / "missing.json")


def test_disagreements_detects_drift(facts):
    v = dict(facts[0].verification)
    assert disagreements(v, v) == []
    w = dict(v, rewrite=v["rewrite"] + 10 * TOLERANCE)
    assert disagreements(v, w)
    assert failures(dict(v, rewrite=MIN_MARGIN / 2))


# ------------------------------------------------------------------------------------------
# Against the model
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_margins_match_the_model(facts, model, tokenizer):
    """Recompute every margin of every record: they match the stored ones and pass the thresholds."""
    import torch

    from editlens.data.verify import compute_verifications

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    fresh = compute_verifications(model, facts, tokenizer=tokenizer)
    bad = {r.case_id: d for r, v in zip(facts, fresh) if (d := disagreements(r.verification, v))}
    assert not bad, list(bad.items())[:5]
    failing = {r.case_id: f for r, v in zip(facts, fresh) if (f := failures(v, min_margin=MIN_MARGIN - TOLERANCE))}
    assert not failing, list(failing.items())[:5]
