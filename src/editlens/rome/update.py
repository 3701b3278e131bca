"""The rank-one update W' = W + u (v* - W k)^T / (u . k), and edits you can undo bit-exactly.

Taught in: Chapter 3 (ROME, "writing the memory"). Chapters 4-5 (STEAM, SADR) build their edits with
:func:`apply_rome` / :func:`edited` and only change how v* is found.

TransformerLens stores the MLP output matrix as ``W_out`` with shape [d_mlp, d_model] (the
transpose of Hugging Face's ``down_proj.weight``, same storage), so the MLP computes
``out = k @ W_out``. The update adds the outer product ``u r^T`` with
``r = (v* - k @ W_out) / (u . k)``; then ``k @ W_out' = v*`` exactly for that ``k``.

Key variants (``hparams.key_variant``):
- ``"r-rome"`` (default): the prefix-averaged key k* in u = C^-1 k* and in the denominator and
  residual. One key in both places, as r-ROME (Gupta et al., 2024) argues: the identity
  W' k* = v* then holds for the key the edit was built from, and r-ROME reports that the
  mixed version causes the occasional "disabling" edit that breaks the model.
- ``"rome"``: the original code: u from the averaged key, but residual and denominator from the
  bare-prompt key, so W' k_bare = v*.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from editlens.rome.hparams import ROMEHyperParams
from editlens.rome.key_stats import KeyStats, stats_for
from editlens.rome.keys import compute_k
from editlens.rome.requests import RewriteRequest, as_request, validate_request
from editlens.rome.values import LossTerm, VResult, compute_vs


def w_out(model: Any, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """The edited matrix (a view sharing storage with the Hugging Face weight)."""
    return model.blocks[layer].mlp.W_out


def rank_one_factors(W: Float[Tensor, "d_mlp d_model"], u: Float[Tensor, "d_mlp"], k: Float[Tensor, "d_mlp"],
                     v_star: Float[Tensor, "d_model"]
                     ) -> tuple[Float[Tensor, "d_mlp"], Float[Tensor, "d_model"]]:
    """The two factors of ROME's update, in float64: ``u`` and ``r = (v* - k W) / (u . k)``."""
    Wd, ud, kd, vd = W.double(), u.double(), k.double(), v_star.double()
    return ud, (vd - kd @ Wd) / (ud @ kd)


def rank_one_update(W: Float[Tensor, "d_mlp d_model"], u: Float[Tensor, "d_mlp"], k: Float[Tensor, "d_mlp"],
                    v_star: Float[Tensor, "d_model"]) -> Float[Tensor, "d_mlp d_model"]:
    """Delta such that ``k @ (W + delta) = v_star``: ``delta = u (v* - k W)^T / (u . k)``."""
    ud, r = rank_one_factors(W, u, k, v_star)
    return torch.outer(ud, r).to(W.dtype)


@dataclass
class Edit:
    """One rank-one edit of ``blocks[layer].mlp.W_out``: holds the delta so it can be applied and undone."""

    layer: int
    delta: Float[Tensor, "d_mlp d_model"]
    request: RewriteRequest | None = None
    u: Tensor | None = None
    k_star: Tensor | None = None
    v_star: Tensor | None = None
    v_result: VResult | None = None
    info: dict = field(default_factory=dict)
    factors: tuple[Tensor, Tensor] | None = None
    """``(left, right)`` with ``delta == outer(left, right)`` (float64), for evaluating several edits in one
    batch without touching the weights (:func:`editlens.rome.rowwise.rowwise_edits`); None when unknown."""
    earlier: dict[int, "Edit"] = field(default_factory=dict)
    """``earlier[n]``: the edit a v* run limited to ``n`` steps gives (``also_steps`` of :func:`compute_rome_edit`)."""
    _saved: Tensor | None = field(default=None, repr=False)

    @property
    def applied(self) -> bool:
        return self._saved is not None

    def apply(self, model: Any) -> "Edit":
        """Add the delta to the weights (remembering the exact old weights)."""
        if self.applied:
            raise RuntimeError("This edit is already applied; undo() it first.")
        W = w_out(model, self.layer)
        self._saved = W.detach().clone()
        with torch.no_grad():
            W.add_(self.delta.to(W.device, W.dtype))
        return self

    def undo(self, model: Any) -> None:
        """Restore the weights bit-exactly as they were before :meth:`apply`."""
        if not self.applied:
            raise RuntimeError("This edit is not applied.")
        with torch.no_grad():
            w_out(model, self.layer).copy_(self._saved)
        self._saved = None


@contextlib.contextmanager
def applied_edit(model: Any, edit: Edit | Sequence[Edit]) -> Iterator[Any]:
    """Apply one or more edits inside the block; the weights are restored bit-exactly on exit, also after an exception."""
    edits = [edit] if isinstance(edit, Edit) else list(edit)
    done: list[Edit] = []
    try:
        for e in edits:
            done.append(e.apply(model))
        yield model
    finally:
        for e in reversed(done):
            e.undo(model)


def compute_rome_edit(model: Any, request: Any, hparams: ROMEHyperParams, stats: KeyStats | None = None,
                      extra_losses: Sequence[LossTerm] = (), *, also_steps: Sequence[int] = (),
                      verbose: bool = False) -> Edit:
    """Compute (not apply) the ROME edit for one request: k*, v*, u, delta (Chapter 3).

    ``extra_losses`` (Chapters 4-5) are added to the v* loss; see :mod:`editlens.rome.values` for the rules
    (unique names, early stopping, rows of their own). ``also_steps`` (Chapter 5): shorter step limits; the edit
    a run limited to ``n`` steps gives is ``edit.earlier[n]``, from the same optimisation
    (:func:`editlens.rome.values.compute_vs`)."""
    return compute_rome_edits(model, [request], hparams, stats, [extra_losses], also_steps=also_steps,
                              verbose=verbose)[0]


def compute_rome_edits(model: Any, requests: Sequence[Any], hparams: ROMEHyperParams, stats: KeyStats | None = None,
                       extra_losses: Sequence[Sequence[LossTerm]] | None = None, *, also_steps: Sequence[int] = (),
                       verbose: bool = False) -> list[Edit]:
    """:func:`compute_rome_edit` for several requests, each edit computed on the unedited model (not in sequence):
    their v* in one batched optimisation (:func:`editlens.rome.values.compute_vs`: one forward and backward pass
    per step for all of them, each with its own delta, loss and early stop). ``extra_losses[i]``: request i's
    terms. Each edit equals the one-request edit up to float noise (the batch's matrix products round differently)."""
    reqs = [as_request(r) for r in requests]
    for req in reqs:
        validate_request(req, model.tokenizer)
    layer = hparams.layer
    if stats is None:
        stats = stats_for(model, hparams)
    if stats.layer not in (-1, layer):
        raise ValueError(f"Key statistics are for layer {stats.layer}, the edit is at layer {layer}. "
                         "Fix: pass stats computed at the edit layer (editlens.rome.key_stats.get_key_stats(model, layer)).")
    if hparams.key_variant not in ("r-rome", "rome"):
        raise ValueError(f"key_variant must be 'r-rome' or 'rome', got {hparams.key_variant!r}.")
    keys = [compute_k(model, req, layer, hparams) for req in reqs]
    vres = compute_vs(model, reqs, layer, hparams, extra_losses, also_steps=also_steps, verbose=verbose)
    W = w_out(model, layer).detach()
    edits = []
    for req, (k_avg, k_bare), v in zip(reqs, keys, vres):
        u = stats.solve(k_avg, hparams.mom2_reg)
        k_used = k_avg if hparams.key_variant == "r-rome" else k_bare

        def edit_for(v: VResult, req: RewriteRequest = req, u: Tensor = u, k_used: Tensor = k_used) -> Edit:
            left, right = rank_one_factors(W, u, k_used, v.v_star)
            delta = torch.outer(left, right).to(W.dtype)  # = rank_one_update(W, u, k_used, v*)
            return Edit(layer=layer, delta=delta, request=req, u=u, k_star=k_used, v_star=v.v_star, v_result=v,
                        factors=(left, right),
                        info={"key_variant": hparams.key_variant, "final_loss": v.final_loss, "steps": len(v.history)})

        edit = edit_for(v)
        edit.earlier = {n: edit_for(e) for n, e in v.earlier.items()}
        edits.append(edit)
    return edits


def apply_rome(model: Any, request: Any, hparams: ROMEHyperParams, stats: KeyStats | None = None,
               extra_losses: Sequence[LossTerm] = (), *, also_steps: Sequence[int] = (),
               verbose: bool = False) -> Edit:
    """Compute and apply a ROME edit; returns the applied :class:`Edit` (call ``edit.undo(model)`` to revert)."""
    return compute_rome_edit(model, request, hparams, stats, extra_losses, also_steps=also_steps,
                             verbose=verbose).apply(model)


@contextlib.contextmanager
def edited(model: Any, requests: Any, hparams: ROMEHyperParams, stats: KeyStats | None = None,
           extra_losses: Sequence[LossTerm] = (), *, also_steps: Sequence[int] = (),
           verbose: bool = False) -> Iterator[list[Edit]]:
    """Apply ROME edits for one request or a list (sequentially, each on the already edited model);
    restore the original weights bit-exactly on exit, also when the block raises."""
    reqs = [requests] if isinstance(requests, (dict, RewriteRequest)) or hasattr(requests, "requested_rewrite") else list(requests)
    done: list[Edit] = []
    try:
        for r in reqs:
            done.append(apply_rome(model, r, hparams, stats, extra_losses, also_steps=also_steps, verbose=verbose))
        yield done
    finally:
        for e in reversed(done):
            e.undo(model)
