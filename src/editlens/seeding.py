"""One call that makes a chapter reproducible. Taught in: Chapter 0."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0, *, deterministic_algorithms: bool = False) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and all GPUs) and return a seeded ``torch.Generator``.

    Every notebook calls this in its first code cell, so re-running it reproduces its checked
    outputs. ``deterministic_algorithms=True`` also asks PyTorch for deterministic kernels
    (slower on GPU; a no-op for most CPU kernels).
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic_algorithms:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)
