"""The one weight fingerprint (editlens.fingerprint) and the per-model caches that must not go stale."""

from __future__ import annotations

import hashlib
import re
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch

import editlens
from editlens import scoring, tracing
from editlens.fingerprint import weights_fingerprint
from editlens.localize.toy import tiny_llama
from editlens.rome import Edit, applied_edit
from editlens.rome import key_stats as ks


def tiny(seed: int, tokenizer: Any) -> Any:
    """The ``tiny_model`` fixture's model (tests/conftest.py) for another seed."""
    return tiny_llama(seed, d_mlp=128, weight_std=None, tokenizer=tokenizer, tie_embeddings=True,
                      max_positions=256)[0]


def at_the_id_of(dead_id: int, make: Callable[[], Any], tries: int = 20_000) -> Any:
    """A new object from ``make()`` that Python placed at a dead object's id: CPython frees an object when its
    last reference goes and reuses the memory for the next object of its size. The caller keeps the dead
    object's neighbours alive (:func:`crowd`), so that its memory pool is not handed to other sizes; the misses
    are kept alive meanwhile, so that each try takes another free slot."""
    misses = []
    for _ in range(tries):
        obj = make()
        if id(obj) == dead_id:
            return obj
        misses.append(obj)
    pytest.skip("this interpreter did not reuse the dead object's id; the stale-cache case cannot be staged")


def crowd(make: Callable[[], Any], n: int = 32) -> list[Any]:
    """``n`` objects allocated together: pop one to kill it while the rest hold its memory pool."""
    return [make() for _ in range(n)]


# ---------------------------------------------------------------------------------------------- the print
def test_two_loads_of_the_same_weights_have_one_print(embedded_tokenizer):
    a, b = tiny(0, embedded_tokenizer), tiny(0, embedded_tokenizer)
    assert a is not b
    assert re.fullmatch("[0-9a-f]{16}", weights_fingerprint(a))
    assert weights_fingerprint(a) == weights_fingerprint(b)
    assert editlens.weights_fingerprint is weights_fingerprint  # the public name is this function


def test_other_weights_have_another_print(embedded_tokenizer):
    assert weights_fingerprint(tiny(0, embedded_tokenizer)) != weights_fingerprint(tiny(1, embedded_tokenizer))


def test_a_bridge_and_the_model_it_wraps_have_one_print(tiny_model):
    assert weights_fingerprint(tiny_model) == weights_fingerprint(tiny_model.original_model)


def test_an_in_place_change_moves_the_print_and_restoring_brings_it_back(tiny_model):
    before = weights_fingerprint(tiny_model)
    W = tiny_model.blocks[1].mlp.W_out
    with torch.no_grad():
        old = W[0, 0].item()
        W[0, 0] += 1.0
        changed = weights_fingerprint(tiny_model)
        W[0, 0] = old
    assert changed != before
    assert weights_fingerprint(tiny_model) == before == weights_fingerprint(tiny_model, recompute=True)


def test_a_rome_edit_moves_the_print_and_its_undo_restores_it(tiny_model):
    before = weights_fingerprint(tiny_model)
    W = tiny_model.blocks[0].mlp.W_out
    edit = Edit(layer=0, delta=0.1 * torch.randn(W.shape, generator=torch.Generator().manual_seed(1)))
    with applied_edit(tiny_model, edit):
        assert weights_fingerprint(tiny_model) != before
    assert weights_fingerprint(tiny_model) == before


def test_a_write_through_data_is_seen_with_recompute(tiny_model):
    """``.data`` writes bypass the version counter the memo relies on; ``recompute=True`` hashes again."""
    before = weights_fingerprint(tiny_model)
    tiny_model.blocks[1].mlp.W_out.data[0, 0] += 1.0
    assert weights_fingerprint(tiny_model, recompute=True) != before


def test_the_print_hashes_names_and_bytes_in_name_order():
    """The scheme the key-statistics files on disk are named by: changing it orphans every cached C."""
    lin = torch.nn.Linear(3, 2)
    h = hashlib.sha256()
    for name in ("bias", "weight"):
        h.update(name.encode())
        h.update(getattr(lin, name).detach().numpy().tobytes())
    assert weights_fingerprint(lin) == h.hexdigest()[:16]


def test_a_non_module_is_refused_with_a_fix():
    with pytest.raises(TypeError, match="Fix: pass the model"):
        weights_fingerprint({"weight": torch.zeros(2)})


def test_the_key_statistics_cache_is_keyed_by_content(embedded_tokenizer):
    path = lambda m: ks._cache_path(m, 0, 300, "self", 0, 32)  # noqa: E731
    a, b, other = tiny(0, embedded_tokenizer), tiny(0, embedded_tokenizer), tiny(1, embedded_tokenizer)
    assert path(a) == path(b) != path(other)


# ---------------------------------------------------------------------------------------------- no stale entries
def test_a_new_model_at_a_dead_models_id_gets_its_own_print():
    with torch.random.fork_rng(devices=[]):  # random weights, without moving the other tests' generator
        torch.manual_seed(0)
        neighbours = crowd(lambda: torch.nn.Linear(4, 4))
        a = neighbours.pop(len(neighbours) // 2)
        old, dead = weights_fingerprint(a), id(a)
        del a
        b = at_the_id_of(dead, lambda: torch.nn.Linear(4, 4))  # other random weights (one generator)
    assert weights_fingerprint(b) == weights_fingerprint(b, recompute=True) != old


class FakeModel:
    """Answers the capability probes: ``run_with_hooks`` works or raises; ``calls`` counts the probes."""

    def __init__(self, works: bool) -> None:
        self.works, self.calls, self.cfg = works, 0, SimpleNamespace(n_layers=2)

    def run_with_hooks(self, tokens: Any, **kwargs: Any) -> None:
        self.calls += 1
        if not self.works:
            raise RuntimeError("cannot start after the last block")


def test_the_start_at_end_flag_is_not_inherited_through_a_reused_id():
    x = torch.zeros(1, 3, dtype=torch.long)
    neighbours = crowd(lambda: FakeModel(works=False))
    a = neighbours.pop(len(neighbours) // 2)
    assert tracing._supports_start_at_end(a, x) is False
    dead = id(a)
    del a
    b = at_the_id_of(dead, lambda: FakeModel(works=True))
    assert tracing._supports_start_at_end(b, x) is True and b.calls == 1


def test_the_packing_flag_is_probed_again_for_a_new_model_at_a_reused_id(monkeypatch):
    probed = []

    def encode(model: Any, prompt: str) -> list[int]:
        probed.append(model)
        raise TypeError("a model without packing")

    monkeypatch.setattr(scoring, "encode_prompt", encode)
    neighbours = crowd(lambda: FakeModel(works=False))
    a = neighbours.pop(len(neighbours) // 2)
    assert scoring.packing_supported(a) is False and scoring.packing_supported(a) is False
    assert len(probed) == 1  # cached for the same object
    dead = id(a)
    del a, probed[:]
    b = at_the_id_of(dead, lambda: FakeModel(works=False))
    assert scoring.packing_supported(b) is False and probed == [b]
