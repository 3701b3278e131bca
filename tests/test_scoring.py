"""editlens.scoring: one BOS rule, one answer rule, and every scoring path giving the same NLL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editlens import scoring as S

PROMPTS = ["The capital of France is", "The capital of Spain is", "The capital city of Italy is",
           "The official language of Japan is", "In Germany people speak"]
CANDIDATES = [["Paris", "Rome", "New York"], ["Madrid", "New York", "New Delhi"], ["Rome", "Paris"],
              ["Japanese", "French", "New York"], ["German", "Italian"]]


@pytest.fixture(scope="module")
def tiny():
    from editlens.localize.toy import tiny_llama

    return tiny_llama(seed=0)[0]


def direct_nll(model, prompt: str, answer: str) -> float:
    """Reference: one sequence, full forward, teacher forcing, no batching of any kind."""
    p, a = S.encode_prompt(model, prompt), S.encode_answer(model, answer)
    with torch.no_grad():
        lp = model(torch.tensor([p + a[:-1]]))[0].float().log_softmax(-1)
    return -float(np.mean([lp[len(p) - 1 + k, t].item() for k, t in enumerate(a)]))


def plan_nll(model, prompts, candidates, hooks=()) -> list[np.ndarray]:
    """The differentiable core (right-padded explicit rows) used by patching, SFT and v*."""
    enc, plan = S.TokenCache(model), S.ScoringPlan()
    items = [[plan.add(enc.prompt(p), enc.answer(c)) for c in cs] for p, cs in zip(prompts, candidates)]
    tokens = S.pad_rows(plan.rows, S.pad_id(model), S.model_device(model))
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        lp = S.item_logprobs(model(tokens), plan, list(range(len(plan.rows))), [i for row in items for i in row])
    flat = (-lp).numpy()
    out, k = [], 0
    for row in items:
        out.append(flat[k : k + len(row)]); k += len(row)
    return out


def add_to_z(z, hook=None):
    return z + 0.5  # a plain hook, active at every position (Chapter 2's all-position steering)


def every_path(model, hooks=()):
    """The NLLs of PROMPTS x CANDIDATES through every public scoring path."""
    hooks = list(hooks)
    return {
        "packed": S.score_candidates(model, PROMPTS, CANDIDATES, fwd_hooks=hooks, packed=True, row_tokens=16),
        "unpacked": S.score_candidates(model, PROMPTS, CANDIDATES, fwd_hooks=hooks, packed=False, batch_size=2),
        "plan (padded rows)": plan_nll(model, PROMPTS, CANDIDATES, hooks),
        "continuations": _regroup(S.score_continuations(
            model, [(p, c) for p, cs in zip(PROMPTS, CANDIDATES) for c in cs], fwd_hooks=hooks)),
    }


def _regroup(flat: np.ndarray) -> list[np.ndarray]:
    out, k = [], 0
    for cs in CANDIDATES:
        out.append(flat[k : k + len(cs)]); k += len(cs)
    return out


@pytest.mark.parametrize("hooked", [False, True])
def test_every_scoring_path_agrees_on_tiny_model(tiny, hooked):
    hooks = [("blocks.1.attn.hook_z", add_to_z)] if hooked else []
    paths = every_path(tiny, hooks)
    if not hooked:
        reference = [np.array([direct_nll(tiny, p, c) for c in cs]) for p, cs in zip(PROMPTS, CANDIDATES)]
        paths["direct"] = reference
    base = paths["unpacked"]
    for name, got in paths.items():
        for x, y in zip(got, base):
            np.testing.assert_allclose(x, y, atol=1e-5, err_msg=name)
    if hooked:  # the hook really acted
        assert not np.allclose(np.concatenate(every_path(tiny)["packed"]), np.concatenate(base), atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("hooked", [False, True])
@pytest.mark.parametrize("precision", ["float32", "model"])
def test_every_scoring_path_agrees_on_embedded_model(model, hooked, precision):
    """In float32 the paths differ by summation order only. Observed: at most 6e-5 over Chapter 2's
    3,759 validation pairs (logits of size ~20 over 49,152 tokens); 1e-4 leaves room. In the model's
    own precision (bfloat16 matrix products where the CPU has them) each layout rounds differently:
    observed up to 0.06 nats here; 0.15 is the bound (a tenth of a typical answer margin)."""
    import contextlib

    from editlens.precision import full_precision

    hooks = [("blocks.3.attn.hook_z", lambda z, hook=None: z * 1.5)] if hooked else []
    with full_precision(model) if precision == "float32" else contextlib.nullcontext():
        paths = every_path(model, hooks)
    base = paths["unpacked"]
    atol = 1e-4 if precision == "float32" else 0.15
    for name, got in paths.items():
        for x, y in zip(got, base):
            np.testing.assert_allclose(x, y, atol=atol, err_msg=name)
    assert S.packing_supported(model)


def test_prefix_tree_rows_respect_the_budget_and_ancestry():
    seqs = [[0, 5, 6, 7, 8], [0, 5, 6, 9], [0, 5, 6, 9, 10, 11], [0, 3], [0, 5, 6, 7, 12]]
    tree = S.PrefixTree(seqs, row_tokens=6)
    assert len(tree.token) == 10  # distinct prefixes, each counted once: 0 5 6 7 8 9 10 11 3 12
    for s, seq in enumerate(seqs):
        for d, t in enumerate(seq):
            r, i = tree.home[tree.node(s, d)]
            row = tree.rows[r]
            assert row.tokens[i] == t and row.depth[i] == d
            # walking up the row's parents spells the sequence's prefix
            path, j = [], i
            while j >= 0:
                path.append(row.tokens[j]); j = row.parent[j]
            assert path[::-1] == seq[: d + 1]
    assert all(len(r.tokens) <= 6 for r in tree.rows if len(r.tokens) > 1)
    m = tree.rows[0].mask(torch.float32, "cpu")[0, 0]
    later = torch.ones_like(m, dtype=torch.bool).triu(1)
    assert (m.diagonal() == 0).all() and (m[later] < 0).all()  # no token sees a later one


def test_one_bos_rule_and_one_answer_rule(tiny):
    from editlens.rome.keys import encode

    bos = tiny.tokenizer.bos_token_id
    assert S.encode_prompt(tiny, "The capital of France is")[0] == bos
    assert S.encode_prompt(tiny, "Paris") == encode(tiny, "Paris")  # ROME's keys use the same rule
    assert S.encode_answer(tiny, "Paris") == S.encode_answer(tiny, " Paris")  # one space, never two
    assert bos not in S.encode_answer(tiny, "Paris")
    old = tiny.cfg.default_prepend_bos
    try:
        tiny.cfg.default_prepend_bos = False
        assert S.encode_prompt(tiny, "Paris")[0] != bos
    finally:
        tiny.cfg.default_prepend_bos = old
    with pytest.raises(ValueError, match="tokenises to nothing"):
        S.encode_answer(tiny, " ")


def test_mismatched_lengths_are_an_error(tiny):
    with pytest.raises(ValueError, match="one list per prompt"):
        S.score_candidates(tiny, PROMPTS, CANDIDATES[:2])


def test_top1_accuracy_is_the_teacher_forced_argmax_match(tiny_model):
    """score_continuations(top1=True): per pair, the fraction of the continuation's tokens that are the model's
    top-1 prediction; the model's own greedy continuation scores 1, a token it does not predict lowers it; packed and
    unpacked paths agree; the NLLs are those of top1=False."""
    from editlens.scoring import encode_answer, encode_prompt

    prompt = "The capital of France is"
    ids = torch.tensor([encode_prompt(tiny_model, prompt)])
    greedy = []
    with torch.no_grad():
        for _ in range(3):
            nxt = int(tiny_model(ids)[0, -1].argmax())
            greedy.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    text = tiny_model.tokenizer.decode(greedy)
    if encode_answer(tiny_model, text) != greedy:
        pytest.skip("the greedy tokens do not re-encode to themselves with this tokenizer")
    wrong = next(t for t in range(100, 200) if t != greedy[0])
    pairs = [(prompt, text), (prompt, tiny_model.tokenizer.decode([wrong] + greedy[1:]))]
    for packed in (True, False):
        nll, acc = S.score_continuations(tiny_model, pairs, packed=packed, top1=True)
        np.testing.assert_allclose(nll, S.score_continuations(tiny_model, pairs, packed=packed), rtol=0, atol=0)
        assert acc[0] == 1.0 and acc[1] < 1.0, (packed, acc)


def test_a_set_scored_again_reuses_its_layout_and_scores_the_same(tiny_model):
    """The packed layout of a (prompts, candidates) set is built once: scoring it again (another hook, another
    rows_per_batch) takes it from the cache, and the scores are those of a fresh build."""
    prompts = ["The capital of France is", "Pelé played the sport of", "The Eiffel Tower is located in"]
    cands = [["Paris", "Rome", "the city of Paris"], ["football", "tennis"], ["Paris", "Rome"]]
    S._LAYOUTS.clear()
    first = S.score_candidates(tiny_model, prompts, cands, packed=True, row_tokens=16)
    assert len(S._LAYOUTS) == 1
    layout = next(iter(S._LAYOUTS.values()))
    again = S.score_candidates(tiny_model, prompts, cands, packed=True, row_tokens=16,
                               rows_per_batch=S.ROWS_PER_BATCH)
    assert len(S._LAYOUTS) == 1 and next(iter(S._LAYOUTS.values())) is layout  # reused, not rebuilt
    for a, b in zip(first, again):
        assert a == pytest.approx(b, abs=1e-5)
    S._LAYOUTS.clear()
    rebuilt = S.score_candidates(tiny_model, prompts, cands, packed=True, row_tokens=16)
    for a, b in zip(first, rebuilt):
        assert a.tobytes() == b.tobytes()
    other = S.score_candidates(tiny_model, prompts[:2], cands[:2], packed=True, row_tokens=16)
    assert len(S._LAYOUTS) == 2 and [len(x) for x in other] == [3, 2]
