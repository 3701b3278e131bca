"""MEMIT (Meng et al., 2023, arXiv 2210.07229): ROME's update spread over several MLPs.

Taught on the page *MEMIT: one fact over several layers* (``book/memit.md``); it reuses Chapter 3's pieces (C, k*,
v*) and runs through the same editor interface, so ``python -m editlens edit --method memit`` and ``compare``
run it like the chapters' methods. One module per job: :mod:`~editlens.memit.spread` (the target at the last
layer and its share written into each layer's MLP), :mod:`~editlens.memit.editor` (the editor).
"""

from editlens.memit.editor import memit_editor
from editlens.memit.spread import (
    AUTHORS_D_MLP,
    AUTHORS_UPDATE_WEIGHT,
    compute_memit_edit,
    default_layers,
    default_update_weight,
    residual_at_subject,
)

__all__ = [
    "AUTHORS_D_MLP",
    "AUTHORS_UPDATE_WEIGHT",
    "compute_memit_edit",
    "default_layers",
    "default_update_weight",
    "memit_editor",
    "residual_at_subject",
]
