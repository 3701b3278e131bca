"""The STEAM editor for :func:`editlens.evaluate.evaluate_edits`: ROME plus the alignment term of each record.

Taught in: Chapter 4 (STEAM). It is :func:`editlens.rome.editor.rome_editor` with a per-record loss term: for each
record, the :class:`~editlens.steam.alignment.AlignmentTerm` toward the anchors of its target_new, taken from an
:class:`~editlens.steam.anchors.AnchorBank` (computed once per object from the unedited model, cached).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from editlens.data import FactLike, as_case
from editlens.rome.editor import Editor, rome_editor
from editlens.steam.alignment import (
    AlignmentTerm,
    Position,
    check_layers,
    default_layers,
)
from editlens.steam.anchors import AnchorBank, NotEnoughAnchorsError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from editlens.rome.hparams import ROMEHyperParams
    from editlens.rome.key_stats import KeyStats

MISSING = ("raise", "rome")


def steam_terms(hparams: ROMEHyperParams, bank: AnchorBank, lam: float, layers: Sequence[int] | None = None, *,
                position: Position = "last_prompt", paraphrases: bool = False, missing: str = "raise"):
    """``(model, case) -> [AlignmentTerm]``: the per-record loss terms STEAM adds to ROME's v*, toward the
    anchors :meth:`~editlens.steam.anchors.AnchorBank.for_case` gives the record. A record whose target_new has
    too few anchors raises :class:`~editlens.steam.anchors.NotEnoughAnchorsError`, or with ``missing="rome"`` gets
    no term (it is edited as ROME edits it; Chapter 4 reports such records). With a ``centred`` bank the term
    aligns centred states (:meth:`~editlens.steam.anchors.AnchorBank.shared_components`: the edited relation's
    mean subtracted from the state, each anchor prompt's relation mean from the anchor)."""
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}. Fix: 'raise' (the default) or "
                         "'rome' (edit records without enough anchors as ROME does).")

    centre = bank.centre()  # before any edit, like the anchors

    def terms(model: TransformerBridge, fact: FactLike) -> list[AlignmentTerm]:
        case = as_case(fact)
        req = case.requested_rewrite
        try:
            anchors = bank.for_case(case)
        except NotEnoughAnchorsError:
            if missing == "rome":
                return []
            raise
        paras = list(case.paraphrase_prompts) if paraphrases else []
        paras = [p if "{}" in p else p.replace(req.subject, "{}", 1) for p in paras if "{}" in p or req.subject in p]
        return [AlignmentTerm(anchors, lam, layers, position=position, paraphrases=paras,
                              n_layers=model.cfg.n_layers, edit_layer=hparams.layer, centre=centre,
                              relation=str(req.relation_id))]

    return terms


def steam_editor(hparams: ROMEHyperParams, stats: KeyStats | None, bank: AnchorBank, lam: float = 1.0,
                 layers: Sequence[int] | None = None,
                 *, position: Position = "last_prompt", paraphrases: bool = False, missing: str = "raise",
                 batch: int = 1) -> Editor:
    """The :data:`~editlens.rome.editor.Editor` of STEAM: ROME with ``lam`` * L_LA toward the anchors of each record's
    target_new (``lam=0``: exactly ROME). Layers are checked now against the bank's model (clear errors early).
    ``missing``: see :func:`steam_terms`; ``batch``: v* of that many records optimised together
    (:func:`editlens.rome.editor.rome_editor`)."""
    n_layers = bank.model.cfg.n_layers
    if layers is None:
        default_layers(hparams.layer, n_layers)
    else:
        check_layers(layers, hparams.layer, n_layers)
    return rome_editor(hparams, stats, steam_terms(hparams, bank, lam, layers, position=position,
                                                   paraphrases=paraphrases, missing=missing), batch=batch)
