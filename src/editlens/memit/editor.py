"""MEMIT's editor: ``editor(model, case)`` applies one record's MEMIT edit (a rank-one edit in each layer's MLP)
and restores the weights bit for bit on exit.

Taught on the page ``book/memit.md``. The same interface as Chapter 3's :func:`editlens.rome.editor.rome_editor`,
so :func:`editlens.evaluate.evaluate_edits`, :func:`editlens.compare.run_methods` and the command line run it as
they run the chapters' methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from editlens.anatomy import mlp_width
from editlens.data import FactLike
from editlens.memit.spread import (
    compute_memit_edit,
    default_layers,
    default_update_weight,
)
from editlens.rome.editor import Editor
from editlens.rome.hparams import ROMEHyperParams
from editlens.rome.key_stats import stats_for
from editlens.rome.update import applied_edit

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def memit_editor(hparams: ROMEHyperParams, *, layers: Sequence[int] | None = None,
                 update_weight: float | None = None) -> Editor:
    """The :data:`~editlens.rome.editor.Editor` for MEMIT: v* as ROME's ``hparams`` say, at the last of ``layers``
    (default :func:`~editlens.memit.spread.default_layers` around ``hparams.layer``), spread with
    ``update_weight`` (default :func:`~editlens.memit.spread.default_update_weight`). The key statistics of each
    layer are computed (or read from the cache) on the first edit."""
    read: dict[tuple[int, ...], tuple[Any, list[Any]]] = {}  # layers -> (the model they were read for, C per layer)

    @contextlib.contextmanager
    def editor(model: TransformerBridge, case: FactLike) -> Iterator[list[Any]]:
        chosen = tuple(default_layers(hparams.layer, model.cfg.n_layers) if layers is None else layers)
        weight = default_update_weight(mlp_width(model)) if update_weight is None else update_weight
        if chosen not in read or read[chosen][0] is not model:  # the same model object, not an id that may recur
            read[chosen] = (model, [stats_for(model, hparams.replace(layer=layer)) for layer in chosen])
        edits = compute_memit_edit(model, case, hparams, chosen, weight, read[chosen][1])
        with applied_edit(model, edits):
            yield edits

    return editor
