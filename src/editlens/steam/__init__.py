"""STEAM (arXiv 2510.10398): ROME edits aligned with the new object's "semantic anchors".

Taught in: Chapter 4. One module per job: :mod:`~editlens.steam.states` (last-token residual states),
:mod:`~editlens.steam.anchors` (reference facts and their mean states, from the unedited model),
:mod:`~editlens.steam.alignment` (the loss term added to ROME's v*), :mod:`~editlens.steam.editor` (the editor
for :func:`editlens.evaluate.evaluate_edits`), :mod:`~editlens.steam.diagnostics` (cosines, logit lens, PCA).
"""

from editlens.steam.alignment import (
    AlignmentTerm,
    LayerChoiceError,
    aligned_cosine,
    alignment_term,
    check_layers,
    default_layers,
)
from editlens.steam.anchors import (
    FIRST_DESIGN,
    PAPER_DESIGN,
    REFERENCE_SOURCES,
    SOURCES,
    AnchorBank,
    AnchorPrompt,
    AnchorSet,
    KnownFact,
    NotEnoughAnchorsError,
    SharedComponents,
    anchor_candidates,
    anchor_coverage,
    compute_anchors,
    judged_prompts,
    known_facts,
    lifted,
    select_anchor_prompts,
)
from editlens.steam.editor import steam_editor, steam_terms
from editlens.steam.states import last_token_states

__all__ = [
    "FIRST_DESIGN",
    "PAPER_DESIGN",
    "REFERENCE_SOURCES",
    "SOURCES",
    "AlignmentTerm",
    "AnchorBank",
    "AnchorPrompt",
    "AnchorSet",
    "KnownFact",
    "LayerChoiceError",
    "NotEnoughAnchorsError",
    "SharedComponents",
    "aligned_cosine",
    "alignment_term",
    "anchor_candidates",
    "anchor_coverage",
    "check_layers",
    "compute_anchors",
    "default_layers",
    "judged_prompts",
    "known_facts",
    "last_token_states",
    "lifted",
    "select_anchor_prompts",
    "steam_editor",
    "steam_terms",
]
