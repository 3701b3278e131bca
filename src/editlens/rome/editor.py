"""Editors: ``editor(model, case)`` is a context manager inside which the model carries one record's edit, and
the weights are restored bit for bit on exit. :func:`editlens.evaluate.evaluate_edits` and
:func:`editlens.compare.run_methods` measure any editor the same way.

Taught in: Chapter 3 (ROME's editor, and computing the v* of several records together); Chapters 4 and 5 build
STEAM's and SADR's editors on :func:`rome_editor` (:mod:`editlens.steam.editor`, :mod:`editlens.sadr.editor`),
and Chapter 5 keeps a shorter run's edits with :class:`EarlierEdits`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Sequence

from editlens.data import CounterFactRecord, FactLike, as_case, as_request

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from editlens.rome.hparams import ROMEHyperParams
    from editlens.rome.key_stats import KeyStats

Editor = Callable[["TransformerBridge", FactLike], ContextManager]
"""``editor(model, case)`` returns a context manager inside which the model is edited (Chapters 3-6 each give one)."""


def rome_editor(hparams: ROMEHyperParams, stats: KeyStats | None = None,
                extra_losses: Sequence[Any] | Callable[[Any, CounterFactRecord], Sequence[Any]] = (), *,
                earlier: "EarlierEdits | None" = None, batch: int = 1) -> Editor:
    """The :data:`Editor` for ROME (Chapter 3); Chapters 4-5 (STEAM, SADR) pass ``extra_losses``: the loss terms,
    or a function ``(model, case) -> loss terms`` called before each edit (per-record terms, e.g. STEAM's anchors
    of that record's target_new). ``earlier`` (Chapter 5) keeps, from each edit's v* run, the edit that a run of
    ``earlier.steps`` steps gives.

    ``batch > 1``: :func:`editlens.evaluate.evaluate_edits` lets the editor compute the edits of the next ``batch`` records
    together (:meth:`prepare`, :func:`editlens.rome.update.compute_rome_edits`: their v* optimised in one batch,
    each edit still applied and measured on its own); the same edits up to float noise, about twice as fast
    under bfloat16 on a CPU with ``batch=8``."""
    from editlens.rome.update import applied_edit, compute_rome_edits, edited

    if int(batch) < 1:
        raise ValueError(f"batch must be at least 1, got {batch}.")
    also = [earlier.steps] if earlier is not None else []
    ready: dict[tuple, Any] = {}  # key of a record -> its precomputed Edit

    def terms_for(model: TransformerBridge, case: CounterFactRecord) -> Sequence[Any]:
        return extra_losses(model, case) if callable(extra_losses) else extra_losses

    def prepare(model: TransformerBridge, upcoming: Sequence[FactLike]) -> list[tuple]:
        """Compute the edits of the first ``batch`` records of ``upcoming`` that have none ready yet; returns the
        keys (:meth:`EarlierEdits.key`) of the records computed now (empty when the next record's edit was ready)."""
        if batch == 1 or not upcoming or EarlierEdits.key(upcoming[0]) in ready:
            return []
        todo = [as_case(c) for c in upcoming if EarlierEdits.key(c) not in ready][:batch]
        edits = compute_rome_edits(model, todo, hparams, stats, [terms_for(model, c) for c in todo], also_steps=also)
        ready.update((EarlierEdits.key(c), e) for c, e in zip(todo, edits))
        return [EarlierEdits.key(c) for c in todo]

    @contextlib.contextmanager
    def precomputed(model: TransformerBridge, edit: Any) -> Iterator[list[Any]]:
        with applied_edit(model, edit):
            yield [edit]

    def editor(model: TransformerBridge, fact: FactLike) -> ContextManager:
        case = as_case(fact)  # the loss terms read the record's fields
        edit = ready.pop(EarlierEdits.key(case), None)
        if edit is not None:
            context = precomputed(model, edit)
        else:
            context = edited(model, [case], hparams, stats, terms_for(model, case), also_steps=also)
        return context if earlier is None else earlier.keeping(context, case)

    editor.prepare = prepare  # type: ignore[attr-defined]
    return editor


class EarlierEdits:
    """The edits of a shorter v* run, kept from a longer one (Chapter 5: the authors' ROME+SADR runs 80 steps, the
    equal-steps comparison 20; the first 20 steps of the 80-step run *are* the 20-step run, see
    :func:`editlens.rome.values.compute_vs`). Pass it to :func:`rome_editor` (or ``sadr_editor``) of the long run;
    after that run, :meth:`editor` applies the kept edits, so the short run costs nothing more."""

    def __init__(self, steps: int):
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}.")
        self.steps = int(steps)
        self.edits: dict[Any, list[Any]] = {}

    @staticmethod
    def key(case: FactLike) -> tuple:
        req = as_request(case)
        return (req.case_id, req.prompt, req.subject, req.target_new)

    @contextlib.contextmanager
    def keeping(self, edit_context: ContextManager, case: FactLike) -> Iterator[list[Any]]:
        with edit_context as edits:
            self.edits[self.key(case)] = [e.earlier[self.steps] for e in edits]
            yield edits

    def editor(self) -> Editor:
        """The :data:`Editor` that applies the kept ``steps``-step edit of each record (the weights are restored
        bit-exactly on exit); a record the long run did not edit is refused."""
        from editlens.rome.update import applied_edit

        @contextlib.contextmanager
        def editor(model: TransformerBridge, case: FactLike) -> Iterator[list[Any]]:
            key = self.key(case)
            if key not in self.edits:
                raise KeyError(f"No kept {self.steps}-step edit for record {key[0]!r} ({key[2]!r} -> {key[3]!r}). "
                               "Fix: run the long run's editor (with this EarlierEdits) on the record first.")
            edits = self.edits[key]
            with applied_edit(model, edits):
                yield edits

        return editor
