"""ROME (Meng et al., 2022) from scratch: locate a fact's MLP, write a new value with a rank-one update.

Taught in: Chapter 3. What to edit is a :class:`~editlens.data.RewriteRequest` (the one request type, from
:mod:`editlens.data`). One module per step: :mod:`~editlens.rome.hparams` (per-model settings),
:mod:`~editlens.rome.key_stats` (C), :mod:`~editlens.rome.keys` (k*), :mod:`~editlens.rome.values` (v*, extensible loss; its optimisation loop is
:mod:`~editlens.rome.v_optimise`, its forward passes :mod:`~editlens.rome.v_forward`),
:mod:`~editlens.rome.update` (W' and undoable edits), :mod:`~editlens.rome.editor` (the editor that
evaluation and comparison run).
"""

from editlens.rome.editor import EarlierEdits, Editor, rome_editor
from editlens.rome.hparams import ROMEHyperParams, get_hparams, register
from editlens.rome.key_stats import (
                                  KeyStats,
                                  get_key_stats,
                                  key_stats_convergence,
                                  stats_for,
)
from editlens.rome.keys import compute_k, context_templates
from editlens.rome.update import (
                                  Edit,
                                  applied_edit,
                                  apply_rome,
                                  compute_rome_edit,
                                  compute_rome_edits,
                                  edited,
                                  rank_one_update,
)
from editlens.rome.values import (
                                  LossTerm,
                                  VBatch,
                                  VContext,
                                  VResult,
                                  compute_v,
                                  compute_vs,
)

__all__ = [
    "ROMEHyperParams", "get_hparams", "register", "KeyStats", "get_key_stats", "key_stats_convergence", "stats_for",
    "compute_k", "context_templates",
    "Edit", "applied_edit", "apply_rome", "compute_rome_edit", "compute_rome_edits", "edited", "rank_one_update",
    "LossTerm", "VBatch", "VContext", "VResult", "compute_v", "compute_vs", "EarlierEdits", "Editor", "rome_editor",
]
