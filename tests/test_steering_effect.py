"""Chapter 2 on the embedded model: the splits, the side-effect measures, and the held-out effect."""

from __future__ import annotations

import math

import pytest
import torch

from editlens.data.paraphrases import steering_splits

# Chosen on the validation split by Chapter 2's rule (notebooks/02_consistency_steering.ipynb, section 6);
# the test re-fits heads and directions from the training split and checks the held-out claim.
K_CHOSEN = 64
ALPHA_CHOSEN = 1.0


def test_steering_splits_share_nothing_with_training():
    s = steering_splits()
    assert {k: len(v) for k, v in s.items()} == {"train": 111, "validation": 38, "test_subjects": 36,
                                                  "test_relations": 108}
    key = lambda q: (q.relation_id, q.subject)  # noqa: E731
    train = {key(q) for q in s["train"]}
    train_subjects = {q.subject for q in s["train"]}
    train_relations = {q.relation_id for q in s["train"]}
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
    "The paper's claim does not reproduce on SmolLM2-135M: at the validation-chosen K=64, alpha=1 held-out-subject "
    "consistency is 0.617 steered vs 0.627 unsteered and 0.644 with random heads (Chapter 2, section 7). "
    "strict: this test turns into a failure the day the claim holds, so the chapter's text must then change."))
def test_steering_raises_held_out_consistency_above_unsteered_and_random_heads(model):
    """The paper's claim on held-out subjects: steered > unsteered and steered > random heads (mean of 2 seeds)."""
    from editlens import consistency as C
    from editlens import localize as LZ
    from editlens import steering

    s = steering_splits()
    z, labels, answers = steering.collect_training_activations(model, s["train"])
    attribution = LZ.attribution_patching(model, LZ.patch_set(LZ.make_pairs(answers), max_pairs=64, seed=0))
    ranking = LZ.select_heads(attribution.effect, model.cfg.n_layers * model.cfg.n_heads)
    heads = ranking[:K_CHOSEN]
    dirs = steering.fit_directions(z, labels, heads=None, method="mass_mean")

    def consistency(shifts=None) -> float:
        hooks = None if shifts is None else steering.steering_hooks(shifts, "all", model=model)
        return C.summary(C.model_answers(model, s["test_subjects"], fwd_hooks=hooks))["consistency"]

    unsteered = consistency()
    steered = consistency(dirs.shift(heads, ALPHA_CHOSEN))
    random_heads = [consistency(dirs.shift(steering.random_heads(model.cfg.n_layers, model.cfg.n_heads, K_CHOSEN,
                                                                  exclude=heads, seed=seed), ALPHA_CHOSEN))
                    for seed in range(2)]
    assert steered > unsteered, (steered, unsteered)
    assert steered > sum(random_heads) / len(random_heads), (steered, random_heads)
