"""The fused attention path (editlens.fused_attention) computes what the bridge's step-by-step path
computes, and steps aside whenever a hook looks at the scores or the pattern."""

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


def test_every_layer_of_the_book_models_gets_the_fused_path(tiny_model):
    layers = [m for m in tiny_model.modules() if hasattr(m, "hook_pattern")]
    assert layers and all(getattr(m, fused_attention._INSTALLED) for m in layers)
    assert fused_attention.install(tiny_model) == 0  # installed once, by tiny_llama (and load_model)


def test_fused_equals_step_by_step_on_a_padded_batch(tiny_model):
    tokens = tiny_model.to_tokens(PROMPTS, prepend_bos=True)
    with torch.no_grad():
        slow, fast = both_paths(tiny_model, lambda: tiny_model(tokens))
    with torch.no_grad(), mock.patch.object(fused_attention, "_fused_forward") as spy:
        with fused_attention.enabled(tiny_model, False):
            tiny_model(tokens)
    assert spy.call_count == 0
    assert torch.allclose(slow, fast, atol=1e-5), float((slow - fast).abs().max())


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


def test_forwards_that_take_gradients_run_step_by_step(tiny_model):
    """On a CPU the fused backward pass is the slower one: only forwards under no_grad are fused."""
    tokens = tiny_model.to_tokens(PROMPTS[:1], prepend_bos=True)
    with mock.patch.object(fused_attention, "_fused_forward", wraps=fused_attention._fused_forward) as spy:
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
            torch.no_grad():
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

    with torch.no_grad():
        plain = tiny_model(tokens)
        hooked = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)])
    assert not torch.allclose(plain, hooked, atol=1e-4)


def test_enabled_restores_the_previous_setting(tiny_model):
    layer = tiny_model.blocks[0].attn
    with fused_attention.enabled(tiny_model, False):
        assert getattr(layer, fused_attention._INSTALLED) is False
        with fused_attention.enabled(tiny_model, True):
            assert getattr(layer, fused_attention._INSTALLED) is True
        assert getattr(layer, fused_attention._INSTALLED) is False
    assert getattr(layer, fused_attention._INSTALLED) is True
