"""Running a model from layer l up (editlens.block_runner), as causal tracing does."""

from __future__ import annotations

import pytest
import torch

from editlens import tracing
from editlens.block_runner import record_block_calls, run_from_layer

FACT = {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome", "target_true": "Paris"}


def test_run_from_layer_equals_the_full_run(tiny_model):
    ids = torch.tensor([tiny_model.tokenizer("The capital of France is")["input_ids"]] * 2)
    with torch.no_grad():
        logits, calls, kept = record_block_calls(tiny_model, ids, keep=["blocks.1.hook_resid_pre"], keep_rows=1)
        _, cache = tiny_model.run_with_cache(ids)
        assert list(kept) == ["blocks.1.hook_resid_pre"]
        torch.testing.assert_close(kept["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_pre"][:1])
        n = tiny_model.cfg.n_layers
        for start in range(n + 1):
            resid = cache[f"blocks.{start}.hook_resid_pre"] if start < n else cache[f"blocks.{n - 1}.hook_resid_post"]
            got = run_from_layer(tiny_model, resid, start, calls)
            torch.testing.assert_close(got, logits, rtol=1e-5, atol=1e-5)
        last = run_from_layer(tiny_model, cache["blocks.1.hook_resid_pre"], 1, calls, positions=slice(-1, None))
        torch.testing.assert_close(last[:, 0], logits[:, -1], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="recorded for"):
            run_from_layer(tiny_model, cache["blocks.1.hook_resid_pre"][:1], 1, calls)
        with pytest.raises(ValueError, match="outside"):
            run_from_layer(tiny_model, cache["blocks.1.hook_resid_pre"], n + 1, calls)


@pytest.mark.parametrize("kind", tracing.KINDS)
def test_tracing_from_layer_equals_the_bridge_path(tiny_model, monkeypatch, kind):
    """The fast path (blocks from the restored layer up, last-position logits) gives the scores the bridge's own
    full runs give."""
    fast = tracing.trace_fact(tiny_model, FACT, kind, n_samples=3, window=2, seed=2)
    monkeypatch.setattr(tracing, "supports_block_runs", lambda model: False)
    slow = tracing.trace_fact(tiny_model, FACT, kind, n_samples=3, window=2, seed=2)
    torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-5, atol=1e-6)
    assert fast.p_corrupted == pytest.approx(slow.p_corrupted, rel=1e-5)
