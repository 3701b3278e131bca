"""STEAM's latent alignment term L_LA, added to ROME's v* loss through :class:`editlens.rome.values.LossTerm`.

Taught in: Chapter 4 (STEAM). The v* loss becomes L_NLL + L_KL + weight decay + lambda * L_LA with

    L_LA = mean over layers l in L, mean over rewrite rows i of (1 - cos(h^l_i(delta) - mu^l_r, phi^l_c))

h^l_i the edited run's ``blocks.{l}.hook_resid_post`` at the last prompt token of rewrite row i, mu^l_r the shared
component of the edited relation r's last-token states and phi^l_c the new object's anchor centred the same way
(each anchor prompt minus its own relation's mean; :class:`~editlens.steam.anchors.SharedComponents`). With
``centre=None``, mu = 0 and phi is the raw anchor: the raw cosine of Chapter 4's first design. Centring matters:
raw last-token states mostly say which question is asked, so the raw cosine of the rewrite prompt to the new
object's anchors is high before any edit and a step toward o* hardly changes it. Anchors are last-token states,
so they match ``position="last_prompt"``; ``position="subject_last"`` (the subject's last token, where delta
enters) is kept for the raw design and refused with a centre (no anchor is taken at that position).

Documented choices (the paper's code could not be read), all parameters: the per-layer terms are averaged (not
summed), so lambda does not depend on how many layers are aligned;
the default layer set is the layers after the edit layer up to two thirds of the depth
(:func:`default_layers`: layers 5..20 of SmolLM2's 30 when editing layer 4), mid layers where the object is
being assembled but not yet written out. ROME's weight decay and clamp stay. ``weight=0`` is skipped by
``compute_v``, so lambda = 0 reproduces ROME bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from editlens.rome.keys import subject_last_index
from editlens.rome.values import LossTerm, VContext
from editlens.steam.anchors import AnchorSet, SharedComponents
from editlens.steam.states import resid_hook

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Position = Literal["last_prompt", "subject_last"]
POSITIONS = ("last_prompt", "subject_last")


class LayerChoiceError(ValueError):
    """The aligned layers do not fit the model or the edit layer; the message names the layers and the fix."""


def default_layers(edit_layer: int, n_layers: int) -> list[int]:
    """The book's default layer set: ``edit_layer + 1`` up to ``2 * n_layers // 3`` (at least one layer)."""
    if not 0 <= edit_layer < n_layers - 1:
        raise LayerChoiceError(f"Edit layer {edit_layer} leaves no layer above it to align in a model of {n_layers} "
                               f"layers. Fix: edit a layer between 0 and {n_layers - 2}.")
    top = max(edit_layer + 1, (2 * n_layers) // 3)
    return list(range(edit_layer + 1, min(top, n_layers - 1) + 1))


def check_layers(layers: Sequence[int], edit_layer: int, n_layers: int) -> list[int]:
    """The aligned layers as sorted distinct ints, each above ``edit_layer`` and below ``n_layers``."""
    out = sorted({int(layer) for layer in layers})
    if not out:
        raise LayerChoiceError("No layers to align. Fix: pass at least one layer above the edit layer, or "
                               "layers=None for the default (editlens.steam.alignment.default_layers).")
    outside = [layer for layer in out if not 0 <= layer < n_layers]
    if outside:
        raise LayerChoiceError(f"Aligned layers {outside} are outside the model's layers 0..{n_layers - 1}. "
                               f"Fix: pass layers between {edit_layer + 1} and {n_layers - 1}.")
    below = [layer for layer in out if layer <= edit_layer]
    if below:
        raise LayerChoiceError(f"Aligned layers {below} are not above the edit layer {edit_layer}: delta enters at "
                               f"layer {edit_layer}'s MLP, so the residual stream there and below cannot follow it. "
                               f"Fix: pass layers between {edit_layer + 1} and {n_layers - 1}.")
    return out


def aligned_cosine(h: Float[Tensor, "layer row d_model"], phi: Float[Tensor, "layer d_model"],
                   mu: Float[Tensor, "layer d_model"] | None = None) -> Float[Tensor, "layer row"]:
    """cos(h - mu, phi) per layer and row in float32: ``phi`` the reference as it is compared (centred already
    when ``mu`` is given, :meth:`~editlens.steam.anchors.SharedComponents.centred_anchor`), ``mu`` the state's
    shared component (None: the raw cosine). The one cosine of STEAM's term and of its diagnostics (Chapter 4)."""
    dtype = h.dtype  # references at the states' precision, then all in float32
    phi, h = phi.to(h.device, dtype).float(), h.float()
    if mu is not None:
        h = h - mu.to(h.device, dtype).float()[:, None, :]
    return F.cosine_similarity(h, phi[:, None, :].expand_as(h), dim=-1)


class AlignmentTerm(LossTerm):
    """lambda * mean_l mean_rows (1 - cos(h^l - mu^l_r, phi^l_c)) at the last prompt token of each rewrite row
    (Chapter 4).

    ``anchors``: the new object's :class:`AnchorSet` (computed on the unedited model). ``layers=None``: the
    :func:`default_layers` of the edit layer, resolved in :meth:`prepare`. ``paraphrases``: prompt templates
    (``{}`` for the subject) added as rows of their own (delta at the subject's last token, aligned at the last
    token), off by default. ``centre``: the :class:`~editlens.steam.anchors.SharedComponents` to centre states
    (on ``relation``'s mean) and anchors (each prompt on its own relation's) with; None: the raw cosine."""

    name = "steam_align"

    def __init__(self, anchors: AnchorSet, weight: float = 1.0, layers: Sequence[int] | None = None, *,
                 position: Position = "last_prompt", paraphrases: Sequence[str] = (), n_layers: int | None = None,
                 edit_layer: int | None = None, centre: SharedComponents | None = None, relation: str = ""):
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}. Fix: use 'last_prompt' "
                             "(where the object is predicted, the default) or 'subject_last' (where delta enters).")
        if weight < 0:
            raise ValueError(f"weight (lambda) must be >= 0, got {weight}. Fix: pass lambda >= 0 (0 is plain ROME).")
        if centre is not None and position != "last_prompt":
            raise ValueError(f"position={position!r} with a centre: the anchors and the shared component are "
                             "last-token states, so only position='last_prompt' compares like with like. Fix: use "
                             "position='last_prompt', or centre=None for the raw design.")
        self.anchors, self.weight, self.position = anchors, float(weight), position
        self.centre, self.relation = centre, str(relation)
        self.mu: Tensor | None = None
        self.paraphrases = list(paraphrases)
        self.requested_layers = None if layers is None else list(layers)
        self.layers: list[int] = []
        self.phi: Tensor | None = None
        if n_layers is not None and edit_layer is not None:  # validate early when the geometry is known
            self._resolve(edit_layer, n_layers)
        elif layers is not None:
            self._set_layers(sorted({int(layer) for layer in layers}))

    def _set_layers(self, layers: list[int]) -> None:
        self.layers = layers
        self.hook_names = [resid_hook(layer) for layer in layers]

    def _resolve(self, edit_layer: int, n_layers: int) -> None:
        layers = (default_layers(edit_layer, n_layers) if self.requested_layers is None
                  else check_layers(self.requested_layers, edit_layer, n_layers))
        if self.centre is None:
            self.phi, self.mu = self.anchors.at(layers), None
        else:
            self.phi = self.centre.centred_anchor(self.anchors, layers)
            self.mu = self.centre.of(self.relation, layers)
        self._set_layers(layers)

    def extra_rows(self, ctx: VContext) -> list[tuple[list[int], int | None]]:
        # compute_v calls extra_rows before it reads hook_names: resolve the layers of this edit here
        self._resolve(ctx.layer, ctx.model.cfg.n_layers)
        rows: list[tuple[list[int], int | None]] = []
        for p in self.paraphrases:
            ids, i = subject_last_index(ctx.model, p if "{}" in p else p.replace(ctx.request.subject, "{}", 1),
                                        ctx.request.subject)
            rows.append((ids, i))
        return rows

    def prepare(self, ctx: VContext) -> None:
        layers_before = list(self.layers)
        self._resolve(ctx.layer, ctx.model.cfg.n_layers)
        if self.layers != layers_before:  # compute_v registered hook_names before prepare: they must not change
            raise LayerChoiceError(f"AlignmentTerm was built for layers {layers_before} but the edit at layer "
                                   f"{ctx.layer} resolves to {self.layers}. Fix: pass edit_layer= and n_layers= "
                                   "(or explicit layers) when building the term.")

    def rows_and_positions(self, ctx: VContext) -> tuple[Tensor, Tensor]:
        """Rows whose states are aligned (rewrite rows, then paraphrase rows) and the position in each."""
        b = ctx.batch
        dev = b.tokens.device
        own = b.rows_of(self.name)
        rows = torch.cat([torch.arange(b.n_rewrite, device=dev), torch.arange(own.start, own.stop, device=dev)])
        idx = b.last_prompt_idx if self.position == "last_prompt" else b.subject_idx
        return rows, idx[rows]

    def positions(self, ctx: VContext) -> tuple[Tensor, Tensor]:
        """The only positions the term reads (:meth:`rows_and_positions`): compute_vs gathers them for every fact
        of a batch at once, instead of putting each aligned layer's whole activation together every step."""
        return self.rows_and_positions(ctx)

    def distances(self, ctx: VContext, *, initial: bool = False) -> Float[Tensor, "layer row"]:
        """1 - cos(h^l - mu^l_r, phi^l) for each aligned layer and row (this step's, or at delta = 0), read at the
        positions the term declared (:meth:`positions`); mu = 0 and phi raw without a centre."""
        h = torch.stack([ctx.at(name, initial=initial) for name in self.hook_names])  # [layer, row, d_model]
        assert self.phi is not None  # set with the layers, in extra_rows (before any forward pass)
        return 1 - aligned_cosine(h, self.phi, self.mu)

    def __call__(self, ctx: VContext) -> Float[Tensor, ""]:
        return self.weight * self.distances(ctx).mean()


def alignment_term(anchors: AnchorSet, model: TransformerBridge, edit_layer: int, weight: float = 1.0,
                   layers: Sequence[int] | None = None, **kwargs: Any) -> AlignmentTerm:
    """An :class:`AlignmentTerm` validated against ``model`` and ``edit_layer`` now (clear errors before any work)."""
    return AlignmentTerm(anchors, weight, layers, n_layers=model.cfg.n_layers, edit_layer=edit_layer, **kwargs)
