"""The shared editing evaluation (Chapters 3-6): scoring rule, metrics, report."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from editlens import evaluate as ev

CASE = {"case_id": 1, "requested_rewrite": {"prompt": "The capital of {} is", "subject": "France", "relation_id": "P36",
                                            "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}},
        "paraphrase_prompts": ["It rained. France's capital city is"],
        "neighborhood_prompts": ["The capital of Germany is", "The capital of Spain is"],
        "attribute_prompts": ["The capital of Italy is"],
        "generation_prompts": ["France is"],
        "relation_prompts": [{"prompt": "The official language of {} is", "target": "French"}],
        "portability_prompts": [{"prompt": "The capital of France is in the country of", "target_true": "France",
                                 "target_new": "Italy"}]}


def test_ngram_entropy_and_fluency():
    assert ev.ngram_entropy("a a a a a", 2) == 0.0
    assert ev.ngram_entropy("a b c d e", 2) == pytest.approx(2.0)  # 4 distinct bigrams
    assert ev.fluency("the cat sat on the mat") > ev.fluency("the the the the the the")
    assert ev.fluency("") == 0.0


def test_harmonic_mean_and_summary():
    assert ev.harmonic_mean([100, 50, 100]) == pytest.approx(75.0)
    assert ev.harmonic_mean([100, 0]) == 0.0
    s = ev.summarise([{"ES": 1.0, "PS": 0.5, "NS": 1.0, "GE": 5.0}, {"ES": 0.0, "PS": 0.5, "NS": float("nan")}])
    assert s["ES"] == 50 and s["PS"] == 50 and s["NS"] == 100 and s["GE"] == 5.0 and s["n"] == 2
    assert s["S"] == pytest.approx(ev.harmonic_mean([50, 50, 100]))


@pytest.mark.float32
def test_continuation_nll_matches_direct_computation(tiny_model):
    nll = ev.continuation_nll(tiny_model, [("The capital of France is", "Paris"), ("Hello", " there friend")])
    toks = torch.tensor([tiny_model.tokenizer("The capital of France is Paris", add_special_tokens=False)["input_ids"]])
    toks = torch.cat([torch.tensor([[tiny_model.tokenizer.bos_token_id]]), toks], 1)
    with torch.no_grad():
        lp = torch.log_softmax(tiny_model(toks)[0, -2], -1)
    assert nll[0].item() == pytest.approx(-lp[toks[0, -1]].item(), rel=1e-4)
    # batching and padding do not change scores
    alone = ev.continuation_nll(tiny_model, [("Hello", " there friend")])
    assert nll[1].item() == pytest.approx(alone[0].item(), rel=1e-4)


def test_probe_rows_and_scores(tiny_model):
    rows = ev.probe_rows(CASE)
    kinds = [r[0] for r in rows]
    assert kinds.count("NS") == 2 and kinds.count("DNS") == 2 and "RelS" in kinds and "Port" in kinds
    dns = [r for r in rows if r[0] == "DNS"][0]
    assert dns[1] == "The capital of France is Rome. The capital of Germany is" and dns[2:] == ("Paris", "Rome")
    s = ev.probe_scores(tiny_model, CASE)
    for k in ("ES", "PS", "NS", "RelS", "DNS", "Port"):
        assert 0.0 <= s[k] <= 1.0
    assert -1 <= s["EM"] <= 1
    # EasyEdit's exact-match portability: the new two-hop answer's top-1 token accuracy, over the Port probes
    port = [(r[1], r[2]) for r in rows if r[0] == "Port"]
    _, acc = ev.continuation_nll(tiny_model, port, top1=True)
    assert s["Port EM"] == pytest.approx(float(acc.mean())) and set(ev.STRICT_METRICS) <= set(s)
    no_port = {k: v for k, v in CASE.items() if k != "portability_prompts"}
    assert math.isnan(ev.probe_scores(tiny_model, no_port)["Port EM"])


def test_reference_texts_fallback():
    refs, src = ev.reference_texts(CASE, {})
    assert src == "attribute_prompts" and refs == ["The capital of Italy is Rome"]
    refs, src = ev.reference_texts(CASE, {"Rome": ["Rome is the capital of Italy."]})
    assert src == "descriptions"
    assert ev.tfidf_similarity(["Rome is old"], ["Rome is the capital of Italy"]) > \
        ev.tfidf_similarity(["Paris is old"], ["Rome is the capital of Italy"])


def test_evaluate_edits_with_a_fake_editor(tiny_model):
    calls = []

    @contextlib.contextmanager
    def editor(model, case):
        calls.append(case.case_id)
        W = model.blocks[0].mlp.W_out
        saved = W.detach().clone()
        with torch.no_grad():
            W.add_(0.5)
        try:
            yield None
        finally:
            with torch.no_grad():
                W.copy_(saved)

    rep = ev.evaluate_edits(tiny_model, [CASE, {**CASE, "case_id": 2}], editor,
                            generation=ev.GenerationSettings(n_prompts=1, max_new_tokens=5), progress=False)
    assert calls == [1, 2] and len(rep.records) == 2
    r = rep.records[0]
    assert {"unedited", "edited"} <= set(r) and "GE" in r["edited"] and len(r["edited"]["generations"]) == 1
    assert r["edited"]["ES"] != r["unedited"]["ES"] or r["edited"]["EM"] != r["unedited"]["EM"]
    table = rep.table()
    assert "unedited" in table and "edited" in table and "ES" in table


@pytest.mark.slow
def test_unedited_model_knows_the_fact(model):
    s = ev.probe_scores(model, CASE)
    assert s["ES"] == 0.0 and s["RelS"] == 1.0  # Paris beats Rome; French beats Rome


def test_report_round_trips_through_json(tmp_path):
    import json

    from editlens.evaluate import EvalReport

    rec = {"case_id": 1, "edited": {"ES": 1.0, "PS": 0.5, "NS": 1.0}, "unedited": {"ES": 0.0, "PS": 0.0, "NS": 1.0}}
    report = EvalReport(records=[rec], settings={"method": "rome"})
    report.to_json(tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["records"] == [rec] and back["settings"] == {"method": "rome"}
    assert back["summary"]["edited"]["ES"] == 100.0 and back["summary"]["unedited"]["NS"] == 100.0
