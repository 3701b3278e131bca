"""The SADR editor for :func:`editlens.evaluate.evaluate_edits`: ROME plus the attention-drift term.

Taught in: Chapter 5 (SADR). It is :func:`editlens.evaluate.rome_editor` with a fresh
:class:`~editlens.sadr.regulariser.AttentionDriftTerm` per record. The authors ran ROME+SADR with 80 v* steps
against ROME's 20 (``AUTHORS_STEPS``), so a comparison changes two things at once: ``steps`` sets
``hparams.v_num_grad_steps`` so that a chapter can compare at equal steps and at the authors' steps.
:func:`combined_terms` puts several methods' terms (e.g. STEAM's and SADR's) into one v* optimisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from editlens.evaluate import EarlierEdits, Editor, rome_editor
from editlens.rome.values import LossTerm
from editlens.sadr.regulariser import DEFAULT_GAMMA, AttentionDriftTerm

TermMaker = Callable[[Any, dict], Sequence[LossTerm]]
"""``(model, case) -> loss terms`` (what :func:`editlens.evaluate.rome_editor` accepts)."""


def sadr_terms(gamma: float = DEFAULT_GAMMA, layers: Sequence[int] | None = None, *, hinge: bool = True) -> TermMaker:
    """``(model, case) -> [AttentionDriftTerm]``: a fresh term per edit (it remembers its layers)."""
    AttentionDriftTerm(gamma, layers, hinge=hinge)  # check the arguments now

    def terms(model: Any, case: dict) -> list[LossTerm]:
        return [AttentionDriftTerm(gamma, layers, hinge=hinge)]

    return terms


def combined_terms(*makers: TermMaker | Sequence[LossTerm]) -> TermMaker:
    """One ``(model, case) -> terms`` from several (or from fixed lists of terms): e.g. STEAM's
    :func:`editlens.steam.steam_terms` and :func:`sadr_terms` in one optimisation. Term names must differ."""

    def terms(model: Any, case: dict) -> list[LossTerm]:
        out: list[LossTerm] = []
        for m in makers:
            out.extend(m(model, case) if callable(m) else m)
        return out

    return terms


def with_steps(hparams: Any, steps: int | None) -> Any:
    """``hparams`` with ``v_num_grad_steps = steps`` (None: unchanged)."""
    if steps is None:
        return hparams
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}. Fix: pass e.g. 20 (ROME) or 80 (the authors' SADR).")
    return hparams.replace(v_num_grad_steps=int(steps))


def sadr_editor(hparams: Any, stats: Any = None, gamma: float = DEFAULT_GAMMA, steps: int | None = None,
                layers: Sequence[int] | None = None, *, hinge: bool = True,
                also: TermMaker | Sequence[LossTerm] = (), earlier: EarlierEdits | None = None) -> Editor:
    """The :data:`~editlens.evaluate.Editor` of ROME+SADR: ``gamma`` * the attention-drift KL (``gamma=0``: exactly
    ROME), ``steps`` v* steps (None: ``hparams``'s). ``also``: other terms in the same optimisation (e.g. STEAM's).
    ``earlier``: keep the edits of a shorter run from the same optimisation (:class:`editlens.evaluate.EarlierEdits`)."""
    return rome_editor(with_steps(hparams, steps), stats, combined_terms(also, sadr_terms(gamma, layers, hinge=hinge)),
                       earlier=earlier)
