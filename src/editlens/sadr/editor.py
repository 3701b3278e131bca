"""The SADR editor for :func:`editlens.evaluate.evaluate_edits`: ROME plus the attention-drift term.

Taught in: Chapter 5 (SADR). It is :func:`editlens.rome.editor.rome_editor` with a fresh
:class:`~editlens.sadr.regulariser.AttentionDriftTerm` per record. The authors ran ROME+SADR with 80 v* steps
against ROME's 20 (``AUTHORS_STEPS``), so a comparison changes two things at once: ``steps`` sets
``hparams.v_num_grad_steps`` so that a chapter can compare at equal steps and at the authors' steps.
:func:`combined_terms` puts several methods' terms (e.g. STEAM's and SADR's) into one v* optimisation.
:class:`PrecomputedEdits` computes the edits of many records in batched v* optimisations before an evaluation
(:func:`sadr_edits`: ROME+SADR's), and its :meth:`~PrecomputedEdits.editor` applies them one record at a time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from editlens.data import FactLike, as_case
from editlens.rome.editor import EarlierEdits, Editor, rome_editor
from editlens.rome.update import Edit, applied_edit, compute_rome_edits
from editlens.rome.values import LossTerm
from editlens.sadr.regulariser import DEFAULT_GAMMA, AttentionDriftTerm

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from editlens.rome.hparams import ROMEHyperParams
    from editlens.rome.key_stats import KeyStats

TermMaker = Callable[[Any, FactLike], Sequence[LossTerm]]
"""``(model, case) -> loss terms`` (what :func:`editlens.rome.editor.rome_editor` accepts)."""


def sadr_terms(gamma: float = DEFAULT_GAMMA, layers: Sequence[int] | None = None, *, hinge: bool = True) -> TermMaker:
    """``(model, case) -> [AttentionDriftTerm]``: a fresh term per edit (it remembers its layers)."""
    AttentionDriftTerm(gamma, layers, hinge=hinge)  # check the arguments now

    def terms(model: TransformerBridge, case: FactLike) -> list[LossTerm]:
        return [AttentionDriftTerm(gamma, layers, hinge=hinge)]

    return terms


def combined_terms(*makers: TermMaker | Sequence[LossTerm]) -> TermMaker:
    """One ``(model, case) -> terms`` from several (or from fixed lists of terms): e.g. STEAM's
    :func:`editlens.steam.steam_terms` and :func:`sadr_terms` in one optimisation. Term names must differ."""

    def terms(model: TransformerBridge, case: FactLike) -> list[LossTerm]:
        out: list[LossTerm] = []
        for m in makers:
            out.extend(m(model, case) if callable(m) else m)
        return out

    return terms


def with_steps(hparams: ROMEHyperParams, steps: int | None) -> ROMEHyperParams:
    """``hparams`` with ``v_num_grad_steps = steps`` (None: unchanged)."""
    if steps is None:
        return hparams
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}. Fix: pass e.g. 20 (ROME) or 80 (the authors' SADR).")
    return hparams.replace(v_num_grad_steps=int(steps))


def sadr_editor(hparams: ROMEHyperParams, stats: KeyStats | None = None, gamma: float = DEFAULT_GAMMA,
                steps: int | None = None,
                layers: Sequence[int] | None = None, *, hinge: bool = True,
                also: TermMaker | Sequence[LossTerm] = (), earlier: EarlierEdits | None = None,
                batch: int = 1) -> Editor:
    """The :data:`~editlens.rome.editor.Editor` of ROME+SADR: ``gamma`` * the attention-drift KL (``gamma=0``: exactly
    ROME), ``steps`` v* steps (None: ``hparams``'s). ``also``: other terms in the same optimisation (e.g. STEAM's).
    ``earlier``: keep the edits of a shorter run from the same optimisation (:class:`editlens.rome.editor.EarlierEdits`).
    ``batch``: v* of that many records optimised together (:func:`editlens.rome.editor.rome_editor`)."""
    return rome_editor(with_steps(hparams, steps), stats, combined_terms(also, sadr_terms(gamma, layers, hinge=hinge)),
                       earlier=earlier, batch=batch)


class PrecomputedEdits:
    """ROME edits (with extra loss terms) of many records, computed together, then applied one record at a time.

    :func:`editlens.rome.compute_rome_edits` optimises the v* of ``batch_size`` records at once (one forward and
    one backward pass per step for all of them): a few dozen tokens per record make small matrix products, and on
    a CPU a batch of records costs far less than its records one by one. Each edit is made on the unedited model
    and equals the one-record edit up to float noise. :meth:`editor` is the :data:`~editlens.rome.editor.Editor` for
    :func:`editlens.evaluate.evaluate_edits` that applies a record's edit (the weights are restored bit-exactly
    on exit); ``editor(steps=n)`` applies the edit a run of ``n`` steps gives (``also_steps``: the first ``n``
    steps of the same optimisation). ``terms``: ``(model, case) -> loss terms`` (a fresh list per record), or
    one list shared by every record. ``seconds``: the wall time of the whole computation."""

    def __init__(self, model: TransformerBridge, cases: Sequence[FactLike], hparams: ROMEHyperParams,
                 stats: KeyStats | None = None,
                 terms: TermMaker | Sequence[LossTerm] = (), *, also_steps: Sequence[int] = (), batch_size: int = 25,
                 progress: bool = True, desc: str = "computing edits"):
        from tqdm import tqdm

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.cases = [as_case(c) for c in cases]
        self.also_steps = sorted({int(n) for n in also_steps})
        self.edits: dict[tuple, Edit] = {}
        start = time.perf_counter()
        with tqdm(total=len(self.cases), desc=desc, disable=not progress, unit="edit") as bar:
            for b in range(0, len(self.cases), int(batch_size)):
                chunk = self.cases[b:b + int(batch_size)]
                made = [list(terms(model, c)) if callable(terms) else list(terms) for c in chunk]
                edits = compute_rome_edits(model, chunk, hparams, stats, made, also_steps=self.also_steps)
                self.edits.update((EarlierEdits.key(c), e) for c, e in zip(chunk, edits))
                bar.update(len(chunk))
        self.seconds = time.perf_counter() - start

    def edit(self, case: FactLike, steps: int | None = None) -> Edit:
        """The record's edit (``steps``: the edit its first ``steps`` steps gave, one of ``also_steps``)."""
        key = EarlierEdits.key(as_case(case))
        if key not in self.edits:
            raise KeyError(f"No precomputed edit for record {key[0]!r} ({key[2]!r} -> {key[3]!r}). Fix: pass it "
                           "among the cases of PrecomputedEdits.")
        edit = self.edits[key]
        if steps is None:
            return edit
        if int(steps) not in edit.earlier:
            raise KeyError(f"No {steps}-step edit was kept (also_steps = {self.also_steps}). Fix: list {steps} in "
                           "also_steps.")
        return edit.earlier[int(steps)]

    def editor(self, steps: int | None = None) -> Editor:
        """The :data:`~editlens.rome.editor.Editor` that applies each record's precomputed edit."""

        @contextlib.contextmanager
        def editor(model: TransformerBridge, case: FactLike) -> Iterator[list[Edit]]:
            edits = [self.edit(case, steps)]
            with applied_edit(model, edits):
                yield edits

        return editor


def sadr_edits(model: TransformerBridge, cases: Sequence[FactLike], hparams: ROMEHyperParams, stats: KeyStats | None = None,
               gamma: float = DEFAULT_GAMMA,
               steps: int | None = None, layers: Sequence[int] | None = None, *, hinge: bool = True,
               also: TermMaker | Sequence[LossTerm] = (), also_steps: Sequence[int] = (), batch_size: int = 25,
               progress: bool = True, desc: str = "computing edits") -> PrecomputedEdits:
    """The ROME+SADR edits of ``cases`` (:func:`sadr_editor`'s, ``gamma=0``: ROME's), computed in batches
    (:class:`PrecomputedEdits`)."""
    return PrecomputedEdits(model, cases, with_steps(hparams, steps), stats,
                            combined_terms(also, sadr_terms(gamma, layers, hinge=hinge)), also_steps=also_steps,
                            batch_size=batch_size, progress=progress, desc=desc)
