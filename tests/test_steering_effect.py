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


def chosen_k_alpha() -> tuple[int, float]:
    """K and alpha the chapter chose on validation (section 6), from that cell's stored (nbval-checked) output."""
    for cell in _cells():
        if cell["cell_type"] == "code" and "K_BEST, ALPHA_BEST =" in "".join(cell["source"]):
            text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
            m = re.search(r"chosen on validation: K = (\d+), alpha = ([0-9.eE+-]+)", text)
            assert m, f"{CHAPTER.name}: the K/alpha choice cell has no stored output; execute the chapter"
            return int(m.group(1)), float(m.group(2))
    raise AssertionError(f"{CHAPTER.name}: no cell assigns K_BEST, ALPHA_BEST")


def test_chosen_k_and_alpha_come_from_the_chapter_sweep():
    params = chapter_parameters()
    k, alpha = chosen_k_alpha()
    assert k in params["K_VALUES"] and alpha in params["ALPHAS"], (k, alpha, params["K_VALUES"], params["ALPHAS"])
    assert 0 < params["MAX_ACCURACY_DROP"] < 1


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

    texts = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog again and again."]
    nll, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = model.to_tokens(t, prepend_bos=True)
            lp = torch.log_softmax(model(ids)[0, :-1].float(), -1)
            nll -= lp.gather(-1, ids[0, 1:, None]).sum().item()
            n += ids.shape[1] - 1
    assert math.isclose(perplexity(model, texts), math.exp(nll / n), rel_tol=1e-4)
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
@pytest.mark.xfail(strict=True, reason=(
    "The paper's claim does not reproduce on SmolLM2-135M: at the validation-chosen K and alpha held-out-subject "
    "consistency is 0.617 steered vs 0.627 unsteered and 0.644 with random heads (Chapter 2, section 7). "
    "strict: this test turns into a failure the day the claim holds, so the chapter's text must then change."))
def test_steering_raises_held_out_consistency_above_unsteered_and_random_heads(model):
    """The paper's claim on held-out subjects: steered > unsteered and steered > random heads (mean of 2 seeds)."""
    from editlens import consistency as C
    from editlens import localize as LZ
    from editlens import steering

    k_chosen, alpha_chosen = chosen_k_alpha()  # the chapter's choice on validation, not a copied literal
    s = steering_splits()
    z, labels, answers = steering.collect_training_activations(model, s["train"])
    attribution = LZ.attribution_patching(model, LZ.patch_set(LZ.make_pairs(answers), max_pairs=64, seed=0))
    ranking = LZ.select_heads(attribution.effect, model.cfg.n_layers * model.cfg.n_heads)
    heads = ranking[:k_chosen]
    dirs = steering.fit_directions(z, labels, heads=None, method="mass_mean")

    def consistency(shifts=None) -> float:
        hooks = None if shifts is None else steering.steering_hooks(shifts, "all", model=model)
        return C.summary(C.model_answers(model, s["test_subjects"], fwd_hooks=hooks))["consistency"]

    unsteered = consistency()
    steered = consistency(dirs.shift(heads, alpha_chosen))
    random_heads = [consistency(dirs.shift(steering.random_heads(model.cfg.n_layers, model.cfg.n_heads, k_chosen,
                                                                  exclude=heads, seed=seed), alpha_chosen))
                    for seed in range(2)]
    assert steered > unsteered, (steered, unsteered)
    assert steered > sum(random_heads) / len(random_heads), (steered, random_heads)
