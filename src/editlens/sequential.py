"""Sequential edits: many edits applied one after another, and what degrades first.

Taught in: Chapter 6 (synthesis). Editing libraries apply edit after edit to the same model; each edit is computed
on the weights as the earlier edits left them. :func:`sequential_edits` does that with any of the book's editors
and, after each edit, scores with :func:`editlens.evaluate.probe_scores_many` (CounterFact's rule, the same as
every chapter):

- ``"edited ES"`` / ``"edited PS"``: efficacy and paraphrase success of every record edited so far;
- ``"NS"``: neighbourhood success of every record edited so far;
- ``"unrelated"``: a fixed set of records that are never edited: 1 when the model still prefers their
  target_true over their target_new on the rewrite prompt (1 minus that record's ES), else 0.

How editors compose: every :data:`editlens.rome.editor.Editor` of the book (ROME, STEAM, SADR, STEAM+SADR; all
:func:`editlens.rome.editor.rome_editor`) returns :func:`editlens.rome.update.edited`, which computes the edit on the
current weights when entered and restores the weights it found, bit for bit, when left. Nested, they therefore
apply cumulatively and unwind in reverse order; :func:`sequential_edits` nests them in a
:class:`contextlib.ExitStack`, so the original weights come back on exit, also after an exception.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from editlens.data import CounterFactRecord, FactLike, as_case
from editlens.evaluate import probe_scores_many
from editlens.rome.editor import Editor
from editlens.scoring import ROWS_PER_BATCH
from editlens.seeding import seed_everything

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

KINDS = ("edited ES", "edited PS", "NS", "unrelated")
"""The ``kind`` values of :func:`sequential_edits`' frame, in order."""

COLUMNS = ("n_edits", "record", "kind", "value", "edited_at")
"""Columns of :func:`sequential_edits`' frame (``edited_at``: the edit count at which the record was edited; NaN for
unrelated records)."""


def _editor(editor: Editor | str, editor_options: Mapping[str, Any]) -> Editor:
    """An Editor, or a method name of the registry (:data:`editlens.methods.NAMES`) built with ``editor_options``."""
    if isinstance(editor, str):
        from editlens.methods import get

        if "hparams" not in editor_options:
            raise ValueError(f"sequential_edits: method {editor!r} needs hparams=, stats= (and bank= for STEAM). Fix: "
                             "pass them as keyword arguments, or pass an editor from compare.build_editors.")
        opts = dict(editor_options)
        hparams, stats = opts.pop("hparams"), opts.pop("stats", None)
        return get(editor).editor(hparams, stats, **opts)
    if not callable(editor):
        raise TypeError(f"sequential_edits: editor must be an Editor (model, case) -> context manager or a method "
                        f"name, got {type(editor).__name__}.")
    if editor_options:
        raise ValueError("sequential_edits: editor options are only for a method name. Fix: build the editor with "
                         "them (compare.build_editors) or pass the method name.")
    return editor


def _probe_case(case: CounterFactRecord, *, unrelated: bool) -> CounterFactRecord:
    """The part of a record the sequential probes read (the rewrite alone for unrelated records: one ES row)."""
    if unrelated:
        return CounterFactRecord(case_id=case.case_id, requested_rewrite=case.requested_rewrite)
    return CounterFactRecord(case_id=case.case_id, requested_rewrite=case.requested_rewrite,
                             paraphrase_prompts=case.paraphrase_prompts, neighborhood_prompts=case.neighborhood_prompts)


def _case_id(case: CounterFactRecord, fallback: int) -> Any:
    return fallback if case.case_id is None else case.case_id


def sequential_edits(
    model: TransformerBridge,
    cases: Sequence[FactLike],
    editor: Editor | str,
    *,
    unrelated: Sequence[Any] = (),
    probe_every: int = 1,
    seed: int = 0,
    progress: bool = True,
    desc: str = "sequential edits",
    batch_size: int = 32,
    rows_per_batch: int = ROWS_PER_BATCH,
    **editor_options: Any,
) -> pd.DataFrame:
    """Edit ``cases`` one after another (each edit computed on the already edited weights) and probe after each.

    ``editor``: an :data:`editlens.rome.editor.Editor` (e.g. from :func:`editlens.compare.build_editors`) or a method
    name of the registry, :mod:`editlens.methods` (``"rome"``, ``"steam"``, ``"sadr"``, ``"steam+sadr"``), with
    ``hparams=``, ``stats=`` (``bank=``, ...) as keyword arguments. ``unrelated``: records never edited (their
    accuracy is tracked). ``probe_every``: probe after every k-th edit (and always after the last). ``desc`` labels
    the progress bar. ``rows_per_batch``: packed rows per forward pass of the probes
    (:func:`editlens.scoring.score_candidates`: several at once is faster on a CPU). Edit t is seeded with
    :func:`editlens.compare.record_seed` of ``(seed, t)``. The weights are restored bit for bit on return, also
    after an exception.

    Returns the long frame of :data:`COLUMNS`: one row per (edit count, record, kind), values in [0, 1].
    """
    from tqdm import tqdm

    from editlens.compare import record_seed

    if probe_every < 1:
        raise ValueError(f"probe_every must be >= 1, got {probe_every}.")
    edit = _editor(editor, editor_options)
    records = [as_case(c) for c in cases]  # a malformed record fails here, before any edit
    if not records:
        raise ValueError("sequential_edits: no records to edit. Fix: pass at least one record.")
    others = [as_case(c) for c in unrelated]
    ids = [_case_id(c, i) for i, c in enumerate(records)]
    edited_ids = set(ids)
    clash = [_case_id(c, -1) for c in others if _case_id(c, -1) in edited_ids]
    if clash:
        raise ValueError(f"sequential_edits: unrelated records {clash} are also edited. Fix: pass records that are "
                         "not among the edited ones.")
    probes_edited = [_probe_case(c, unrelated=False) for c in records]
    probes_other = [_probe_case(c, unrelated=True) for c in others]
    rows: list[dict[str, Any]] = []
    n = len(records)
    with contextlib.ExitStack() as stack:
        for t, case in enumerate(tqdm(records, disable=not progress, desc=desc), start=1):
            seed_everything(record_seed(seed, t - 1))
            stack.enter_context(edit(model, case))
            if t % probe_every and t != n:
                continue
            scores = probe_scores_many(model, probes_edited[:t] + probes_other, batch_size=batch_size,
                                       rows_per_batch=rows_per_batch)
            for j, s in enumerate(scores[:t]):
                for kind, key in (("edited ES", "ES"), ("edited PS", "PS"), ("NS", "NS")):
                    if not math.isnan(s[key]):
                        rows.append({"n_edits": t, "record": ids[j], "kind": kind, "value": float(s[key]),
                                     "edited_at": float(j + 1)})
            for c, s in zip(others, scores[t:]):
                rows.append({"n_edits": t, "record": _case_id(c, -1), "kind": "unrelated", "value": 1.0 - s["ES"],
                             "edited_at": math.nan})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def mean_curve(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over records per (edit count, kind): columns ``n_edits``, ``kind``, ``value``, ``n`` (records averaged),
    kinds in :data:`KINDS` order. ``edited ES`` at edit count t is the mean over the t records edited so far."""
    _check_frame(frame)
    g = frame.groupby(["n_edits", "kind"], sort=False)["value"].agg(["mean", "size"]).reset_index()
    g = g.rename(columns={"mean": "value", "size": "n"})
    order = {k: i for i, k in enumerate(KINDS)}
    g["_o"] = g["kind"].map(lambda k: order.get(k, len(order)))
    return g.sort_values(["_o", "n_edits"]).drop(columns="_o").reset_index(drop=True)


def degradation_summary(frame: pd.DataFrame, *, drop: float = 0.10) -> pd.DataFrame:
    """Per kind: the mean value after the first and after the last probed edit, and the first edit count at which the
    mean is at least ``drop`` (0.10 = 10 points) below its value after the first edit (None if it never is).
    Columns ``kind``, ``first``, ``last``, ``change``, ``drops_at``; the kind with the smallest ``drops_at`` is what
    degrades first."""
    curve = mean_curve(frame)
    rows = []
    for kind, g in curve.groupby("kind", sort=False):
        g = g.sort_values("n_edits")
        first, last = float(g["value"].iat[0]), float(g["value"].iat[-1])
        below = g[g["value"] <= first - drop + 1e-12]
        rows.append({"kind": kind, "first": first, "last": last, "change": last - first,
                     "drops_at": int(below["n_edits"].iat[0]) if len(below) else None})
    out = pd.DataFrame(rows, columns=["kind", "first", "last", "change", "drops_at"])
    out["drops_at"] = pd.Series([r["drops_at"] for r in rows], index=out.index, dtype=object)
    return out


def _check_frame(frame: pd.DataFrame) -> None:
    missing = [c for c in ("n_edits", "kind", "value") if c not in frame.columns]
    if missing:
        raise ValueError(f"Not a sequential_edits frame: missing columns {missing}. Fix: pass the frame that "
                         "sequential_edits returned.")
