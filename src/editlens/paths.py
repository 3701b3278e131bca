"""Where editlens keeps what it builds once: the dequantised embedded model, key statistics, results.

Taught in: Setup (book/setup.md). Override the location with the ``EDITLENS_CACHE`` environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "EDITLENS_CACHE"


def cache_dir() -> Path:
    """The user cache folder: ``$EDITLENS_CACHE``, else ``$XDG_CACHE_HOME/editlens``, else ``~/.cache/editlens``."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "editlens").resolve()


def models_dir() -> Path:
    """Folder holding one sub-folder per cached model."""
    return cache_dir() / "models"
