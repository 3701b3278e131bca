"""Chapter 2 on the embedded model: the splits, the side-effect measures, and the held-out effect."""

from __future__ import annotations

import ast
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from editlens.data import load_paraphrases
from editlens.data.paraphrases import steering_splits

CHAPTER = Path(__file__).resolve().parents[1] / "notebooks" / "02_consistency_steering.ipynb"


def _cells() -> list[dict]:
    return json.loads(CHAPTER.read_text(encoding="utf-8"))["cells"]


def chapter_parameters() -> dict:
    """The literal assignments of the chapter's papermill ``parameters`` cell (parsed with ``ast``)."""
    cells = [c for c in _cells() if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{CHAPTER.name}: expected one cell tagged 'parameters', found {len(cells)}"
    params = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    return params


def chosen_settings() -> dict[str, tuple[int, float]]:
    """K and alpha the chapter chose on validation for each candidate direction (section 6: "mass-mean" and
    "centred"), from that cell's stored output."""
    for cell in _cells():
        if cell["cell_type"] == "code" and "K_BEST, ALPHA_BEST =" in "".join(cell["source"]):
            text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
            found = re.findall(r"(\S+) chosen on validation: K = (\d+), alpha = ([0-9.eE+-]+)", text)
            assert found, f"{CHAPTER.name}: the K/alpha choice cell has no stored output; execute the chapter"
            return {name: (int(k), float(a)) for name, k, a in found}
    raise AssertionError(f"{CHAPTER.name}: no cell assigns K_BEST, ALPHA_BEST")


def chosen_k_alpha() -> tuple[int, float]:
    """K and alpha of the uncentred mass-mean directions (the paper's recipe), chosen in section 6."""
    return chosen_settings()["mass-mean"]


def test_chosen_k_and_alpha_come_from_the_chapter_sweep():
    params = chapter_parameters()
    chosen = chosen_settings()
    assert set(chosen) == {"mass-mean", "centred"}, chosen
    for k, alpha in chosen.values():
        assert k in params["K_VALUES"] and alpha in params["ALPHAS"], (chosen, params["K_VALUES"], params["ALPHAS"])
    assert 0 < params["MAX_ACCURACY_DROP"] < 1
    # the default a refusal's suggestion scales to another model (editlens.steering.k_shares)
    from editlens.steering.fair import DEFAULT_K_VALUES

    assert tuple(params["K_VALUES"]) == DEFAULT_K_VALUES


def test_steering_splits_share_nothing_with_training():
    s = steering_splits()
    # the sizes, recomputed from the two split schemes of paraphrases.json by the rule of steering_splits:
    # relations held out whole in the "relations" scheme; subjects of its training relations by the "subjects" scheme
    rel_splits: dict[str, set[str]] = {}
    for q in load_paraphrases("all", scheme="relations"):
        rel_splits.setdefault(q.relation_id, set()).add(q.split)
    assert all(len(v) == 1 for v in rel_splits.values()), rel_splits  # a relation is never split
    train_rels = {r for r, v in rel_splits.items() if v == {"train"}}
    test_rels = {r for r, v in rel_splits.items() if v == {"test"}}
    expected: Counter = Counter()
    for q in load_paraphrases("all", scheme="subjects"):
        if q.relation_id in test_rels:
            expected["test_relations"] += 1
        elif q.relation_id in train_rels:
            expected[{"train": "train", "validation": "validation", "test": "test_subjects"}[q.split]] += 1
    assert {k: len(v) for k, v in s.items()} == dict(expected)
    assert all(len(v) > 0 for v in s.values()), {k: len(v) for k, v in s.items()}
    key = lambda q: (q.relation_id, q.subject)
    all_keys = [key(q) for qs in s.values() for q in qs]
    assert len(all_keys) == len(set(all_keys))  # every query in at most one set
    train = {key(q) for q in s["train"]}
    train_subjects = {q.subject for q in s["train"]}
    train_relations = {q.relation_id for q in s["train"]}
    assert train_relations == train_rels and {q.relation_id for q in s["test_relations"]} == test_rels
    for name in ("validation", "test_subjects"):
        assert not {q.subject for q in s[name]} & train_subjects, name
        assert {q.relation_id for q in s[name]} <= train_relations
    assert not {q.relation_id for q in s["test_relations"]} & train_relations
    assert not train & {key(q) for q in s["test_relations"]}
    assert all(q.split == name for name, qs in s.items() for q in qs)


@pytest.mark.slow
def test_perplexity_matches_a_hand_computation(model):
    from editlens.steering.side_effects import perplexity

    from editlens.precision import full_precision

    texts = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog again and again."]

    def by_hand() -> float:
        nll, n = 0.0, 0
        with torch.no_grad():
            for t in texts:
                ids = model.to_tokens(t, prepend_bos=True)
                lp = torch.log_softmax(model(ids)[0, :-1].float(), -1)
                nll -= lp.gather(-1, ids[0, 1:, None]).sum().item()
                n += ids.shape[1] - 1
        return math.exp(nll / n)

    with full_precision(model):  # exact up to float32 sums: the padded batch changes nothing
        assert math.isclose(perplexity(model, texts), by_hand(), rel_tol=1e-4)
    # in the model's own precision (bf16 products where the CPU has them) the padded batch's shapes round
    # differently: within bf16's noise (log-probabilities move by a few hundredths of a nat)
    assert math.isclose(perplexity(model, texts), by_hand(), rel_tol=0.05)
    with pytest.raises(ValueError, match="at least one text"):
        perplexity(model, [])


@pytest.mark.slow
def test_known_facts_are_known_by_the_unsteered_model_and_steering_can_break_them(model):
    from editlens.data import load_facts
    from editlens.steering import baked
    from editlens.steering.side_effects import known_facts

    facts = load_facts(limit=8)
    k = known_facts(model, facts)
    assert k["rewrite"] == 1.0 and k["neighbourhood"] == 1.0  # the facts set keeps only such records
    g = torch.Generator().manual_seed(0)
    huge = {(l, h): 200.0 * torch.randn(model.cfg.d_head, generator=g) for l in (2, 3) for h in range(9)}
    with baked(model, huge):
        broken = known_facts(model, facts)
    assert broken["rewrite"] < 1.0 or broken["neighbourhood"] < 1.0


@pytest.mark.slow
def test_generation_consistency_scores_paraphrase_answers(model):
    from editlens.data import load_openended
    from editlens.steering.side_effects import generation_consistency

    qs = load_openended()[:3]
    out = generation_consistency(model, qs, max_new_tokens=8, return_answers=True)
    assert len(out["per_question"]) == 3 and len(out["answers"][0]) == len(qs[0].paraphrases)
    assert 0.0 < out["agreement"] <= 1.0 + 1e-6
    assert math.isclose(out["agreement"], sum(out["per_question"]) / 3)


@pytest.mark.slow
def test_held_out_subjects_uncentred_steering_is_noise_and_centred_steering_helps(model):
    """Chapter 2's verdict on held-out subjects (sections 7 and 11), at the K and alpha each candidate chose on
    validation (read from the stored run), in the precision this machine computes (bfloat16 with AMX, float32
    elsewhere), with the chapter's paired per-query bootstrap intervals:

    - uncentred mass-mean steering (the paper's recipe): steered minus unsteered consistency has an interval
      that includes 0. Its point estimate is a few hundredths either way and its sign has flipped between a
      float32 and a bfloat16 run, so the chapter claims no effect, neither a gain nor a loss.
    - per-query centred steering: steered minus unsteered, and steered minus each of its controls (random heads
      and random directions, 2 seeds, the seeds averaged per query), all have intervals above 0.

    Fails if uncentred steering shows an effect either way, or if the centred gain over nothing or over either
    control is not there."""
    from editlens import localize as LZ
    from editlens import steering
    from editlens.scoring import ROWS_PER_BATCH
    from editlens.steering import fair

    chosen = chosen_settings()
    params = chapter_parameters()
    s = steering_splits()
    z, labels, answers = steering.collect_training_activations(model, s["train"], rows_per_batch=ROWS_PER_BATCH)
    pairs = LZ.patch_set(LZ.make_pairs(answers), max_pairs=params["N_ATTR_PAIRS"], seed=params["SEED"])
    attribution = LZ.attribution_patching(model, pairs)
    ranking = LZ.select_heads(attribution.effect, model.cfg.n_layers * model.cfg.n_heads)
    test = {"test_subjects": s["test_subjects"]}
    runs = {}
    for name, centre_by, n_seeds in (("mass-mean", None, 0), ("centred", answers["query_id"], 2)):
        k, alpha = chosen[name]
        sets = fair.control_shifts(z, labels, ranking[:k], alpha, centre_by=centre_by, n_seeds=n_seeds,
                                   seed=params["SEED"])
        unsteered = {"test_subjects": runs["mass-mean"].frames["test_subjects"]["unsteered"][0]} if runs else None
        runs[name] = fair.controlled_evaluation(model, test, sets, unsteered=unsteered, progress=False)
    ci = {name: run.intervals(seed=params["SEED"]) for name, run in runs.items()}
    ci = {name: t[t.metric == "consistency"].set_index("against") for name, t in ci.items()}
    uncentred = ci["mass-mean"].loc["unsteered"]
    assert uncentred["low"] < 0 < uncentred["high"], ("uncentred steering shows an effect", ci["mass-mean"])
    centred = ci["centred"]
    assert set(centred.index) == {"unsteered", "random heads", "random directions"}
    assert (centred["low"] > 0).all(), ("the centred gain is not above nothing and both controls", centred)


def test_chapter_6_steers_with_chapter_2s_choice():
    """Chapter 6 puts Chapter 2's steering on top of edits: with the K and alpha that Chapter 2 chose on
    validation for its uncentred directions (a re-executed Chapter 2 that chooses otherwise fails here)."""
    ch6 = CHAPTER.parent / "06_synthesis.ipynb"
    cells = [c for c in json.loads(ch6.read_text(encoding="utf-8"))["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    params = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    assert (params["STEER_K"], params["STEER_ALPHA"]) == chosen_k_alpha(), (params, chosen_k_alpha())
