"""The fused attention path (editlens.fused_attention) computes what the bridge's step-by-step path
computes, runs only where the package asks for it (the scorer, the generator), and steps aside whenever a
hook looks at the scores or the pattern."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from editlens import fused_attention, scoring
from editlens.evaluate import generate

PROMPTS = ["The capital of France is", "Pelé played the sport of", "The Eiffel Tower is located in"]


def both_paths(model, fn):
    with fused_attention.enabled(model, False):
        slow = fn()
    with fused_attention.enabled(model, True):
        fast = fn()
    return slow, fast


def test_every_layer_is_wrapped_and_computes_step_by_step_outside_the_scorer(tiny_model):
    assert not fused_attention.is_fused(tiny_model)
    assert fused_attention.install(tiny_model) == 0  # installed once, by tiny_llama (and load_model)
    tokens = tiny_model.to_tokens(PROMPTS, prepend_bos=True)
    with torch.no_grad(), mock.patch.object(fused_attention, "_fused_forward",
                                            wraps=fused_attention._fused_forward) as spy:
        plain = tiny_model(tokens)
        _, cache = tiny_model.run_with_cache(tokens)
        assert spy.call_count == 0  # a chapter's own forwards: TransformerLens's computation, as it shows it
        scoring.score_candidates(tiny_model, PROMPTS, [["Paris", "Rome"]] * 3)
        assert spy.call_count > 0  # the scorer fuses
        spy.reset_mock()
        generate(tiny_model, PROMPTS[:1], max_new_tokens=2)
        assert spy.call_count > 0  # and so does the generator
    assert torch.equal(plain, tiny_model(tokens).detach())


@pytest.mark.float32
def test_fused_equals_step_by_step_on_a_padded_batch(tiny_model):
    tokens = tiny_model.to_tokens(PROMPTS, prepend_bos=True)
    with torch.no_grad():
        slow, fast = both_paths(tiny_model, lambda: tiny_model(tokens))
    with torch.no_grad(), mock.patch.object(fused_attention, "_fused_forward") as spy:
        with fused_attention.enabled(tiny_model), fused_attention.enabled(tiny_model, False):
            tiny_model(tokens)
    assert spy.call_count == 0
    assert torch.allclose(slow, fast, atol=1e-5), float((slow - fast).abs().max())


@pytest.mark.float32
def test_fused_equals_step_by_step_on_packed_prefix_trees(tiny_model):
    """The tree attention of the scorer: a 4-D additive mask, explicit positions, several rows padded."""
    cands = [["Paris", "Rome", "football"], ["football", "tennis"], ["Paris", "the city of Paris"]]
    slow, fast = both_paths(tiny_model, lambda: scoring.score_candidates(
        tiny_model, PROMPTS, cands, rows_per_batch=scoring.ROWS_PER_BATCH, row_tokens=16))
    for a, b in zip(slow, fast):
        assert a == pytest.approx(b, abs=1e-5)


def test_fused_equals_step_by_step_with_a_kv_cache(tiny_model):
    """Greedy generation, left-padded, token by token from the key/value cache."""
    slow, fast = both_paths(tiny_model, lambda: generate(tiny_model, PROMPTS, max_new_tokens=6))
    assert slow == fast


def test_grouped_query_attention_in_the_kernel_is_bit_for_bit_repeating_the_kv_heads(tiny_model):
    """The fused path lets the kernel read each query head's KV head in place (``enable_gqa``) instead of
    copying the keys and values once per query head: the same numbers to the last bit, in scoring (packed
    rows) and in generation (a left-padded batch from the KV cache). benchmarks/bench_kernels.py checks the
    embedded model in its own precision."""
    assert tiny_model.cfg.n_key_value_heads < tiny_model.cfg.n_heads  # the tiny model groups its heads
    cands = [["Paris", "Rome", "football"], ["football", "tennis"], ["Paris", "the city of Paris"]]

    def run():
        scores = scoring.score_candidates(tiny_model, PROMPTS, cands, rows_per_batch=scoring.ROWS_PER_BATCH,
                                          row_tokens=16)
        return scores, generate(tiny_model, PROMPTS, max_new_tokens=6)

    assert fused_attention._SDPA_GQA  # the pinned torch has it
    in_kernel = run()
    with mock.patch.object(fused_attention, "_SDPA_GQA", False):
        repeated = run()
    for a, b in zip(in_kernel[0], repeated[0]):
        assert a.tobytes() == b.tobytes()
    assert in_kernel[1] == repeated[1]


def test_forwards_that_take_gradients_run_step_by_step(tiny_model):
    """On a CPU the fused backward pass is the slower one: only forwards under no_grad are fused."""
    tokens = tiny_model.to_tokens(PROMPTS[:1], prepend_bos=True)
    with mock.patch.object(fused_attention, "_fused_forward", wraps=fused_attention._fused_forward) as spy, \
            fused_attention.enabled(tiny_model):
        tiny_model(tokens).sum().backward()
        assert spy.call_count == 0
        with torch.no_grad():
            tiny_model(tokens)
        assert spy.call_count == tiny_model.cfg.n_layers


@pytest.mark.parametrize("point", ["hook_pattern", "hook_attn_scores"])
def test_a_hook_on_the_pattern_or_scores_takes_the_step_by_step_path(tiny_model, point):
    tokens = tiny_model.to_tokens(PROMPTS[:1], prepend_bos=True)
    seen = []
    with mock.patch.object(fused_attention, "_fused_forward", wraps=fused_attention._fused_forward) as spy, \
            torch.no_grad(), fused_attention.enabled(tiny_model):
        tiny_model(tokens)
        assert spy.call_count == tiny_model.cfg.n_layers  # no hook: every layer fused
        spy.reset_mock()
        tiny_model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.1.attn.{point}", lambda x, hook: seen.append(x))])
        assert spy.call_count == tiny_model.cfg.n_layers - 1  # the hooked layer ran step by step
    assert len(seen) == 1 and seen[0].shape[-1] == tokens.shape[1]


def test_a_hook_that_changes_the_pattern_still_changes_the_output(tiny_model):
    tokens = tiny_model.to_tokens(PROMPTS[:1], prepend_bos=True)

    def uniform(pattern, hook):
        causal = torch.tril(torch.ones_like(pattern))
        return causal / causal.sum(-1, keepdim=True)

    with torch.no_grad(), fused_attention.enabled(tiny_model):
        plain = tiny_model(tokens)
        hooked = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)])
    assert not torch.allclose(plain, hooked, atol=1e-4)


def test_enabled_nests_and_forcing_the_step_by_step_path_wins(tiny_model):
    with fused_attention.enabled(tiny_model):
        assert fused_attention.is_fused(tiny_model)
        with fused_attention.enabled(tiny_model, False):
            assert not fused_attention.is_fused(tiny_model)
            with fused_attention.enabled(tiny_model):  # e.g. the scorer, called inside
                assert not fused_attention.is_fused(tiny_model)
        assert fused_attention.is_fused(tiny_model)
    assert not fused_attention.is_fused(tiny_model)


def test_every_layer_of_a_llama_can_fuse():
    from editlens.localize.toy import tiny_llama

    fresh, _ = tiny_llama(0, d_mlp=32)
    assert fused_attention.install(fresh) == 0
    layers = [m for m in fresh.modules() if hasattr(m, "hook_pattern")]
    assert len(layers) == fresh.cfg.n_layers and all(fused_attention._layer_supported(m) for m in layers)
