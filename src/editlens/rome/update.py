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
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from editlens.anatomy import has_norm_after_mlp
from editlens.data import RewriteRequest, as_request, validate_request
from editlens.rome.hparams import ROMEHyperParams
from editlens.rome.key_stats import KeyStats, stats_for
from editlens.rome.keys import compute_k
from editlens.rome.values import LossTerm, VResult, compute_v, compute_vs

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def w_out(model: TransformerBridge, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """The edited matrix (a view sharing storage with the Hugging Face weight)."""
    return model.blocks[layer].mlp.W_out


def value_on_ray(model: TransformerBridge, hparams: ROMEHyperParams) -> str:
    """``hparams.v_on_ray``, with None resolved for this model (:class:`ROMEHyperParams`)."""
    choice = hparams.v_on_ray
    if choice is None:
        return "nearest" if has_norm_after_mlp(model, hparams.layer) else "as_optimised"
    if choice not in ("nearest", "as_optimised"):
        raise ValueError(f"v_on_ray={choice!r}. Fix: 'nearest', 'as_optimised' or None (by the architecture).")
    if choice == "nearest" and not has_norm_after_mlp(model, hparams.layer):
        raise ValueError(f"v_on_ray='nearest' needs a norm after the MLP of block {hparams.layer}, which this model "
                         "does not have (c * v* would change what the model computes). Fix: leave v_on_ray=None.")
    return choice


def norm_eps_after_mlp(model: TransformerBridge, layer: int) -> float:
    """The epsilon of the norm after block ``layer``'s MLP (added to the mean square before the root)."""
    norm = model.blocks[layer].ln2_post
    for m in (norm, getattr(norm, "original_component", None)):
        for name in ("eps", "variance_epsilon"):
            if isinstance(getattr(m, name, None), float):
                return getattr(m, name)
    raise ValueError(f"Cannot read the epsilon of block {layer}'s norm after the MLP ({type(norm).__name__}). "
                     "Fix: pass v_on_ray='as_optimised' in the hyperparameters.")


def nearest_on_ray(v_star: Float[Tensor, "d_model"], v_now: Float[Tensor, "d_model"], eps: float = 0.0
                   ) -> Float[Tensor, "d_model"]:
    """The point ``c * v_star`` (0 < c <= 1) nearest to ``v_now`` (= W_out k*): with a norm after the MLP it gives
    the same block output as v* with the smallest change to write. The norm is scale-free only while its ``eps``
    is small next to the mean square: c is kept where ``eps`` is at most 1e-3 of it (a relative change of the
    output under 5e-4). v* itself if the ray points away from ``v_now``."""
    vd = v_star.double()
    c = float(vd @ v_now.double()) / float(vd @ vd)
    if c <= 0:
        return v_star
    c_min = (1e3 * eps / float(vd.pow(2).mean())) ** 0.5
    return v_star * min(1.0, max(c, c_min))


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

    def apply(self, model: TransformerBridge) -> "Edit":
        """Add the delta to the weights (remembering the exact old weights)."""
        if self.applied:
            raise RuntimeError("This edit is already applied; undo() it first.")
        W = w_out(model, self.layer)
        self._saved = W.detach().clone()
        with torch.no_grad():
            W.add_(self.delta.to(W.device, W.dtype))
        return self

    def undo(self, model: TransformerBridge) -> None:
        """Restore the weights bit-exactly as they were before :meth:`apply`."""
        saved = self._saved
        if saved is None:  # not applied
            raise RuntimeError("This edit is not applied.")
        with torch.no_grad():
            w_out(model, self.layer).copy_(saved)
        self._saved = None


@contextlib.contextmanager
def applied_edit(model: TransformerBridge, edit: Edit | Sequence[Edit]) -> Iterator[Any]:
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


def compute_rome_edit(model: TransformerBridge, request: Any, hparams: ROMEHyperParams, stats: KeyStats | None = None,
                      extra_losses: Sequence[LossTerm] = (), *, also_steps: Sequence[int] = (),
                      verbose: bool = False) -> Edit:
    """Compute (not apply) the ROME edit for one request: k*, v*, u, delta (Chapter 3).

    ``extra_losses`` (Chapters 4-5) are added to the v* loss; see :mod:`editlens.rome.values` for the rules
    (unique names, early stopping, rows of their own). ``also_steps`` (Chapter 5): shorter step limits; the edit
    a run limited to ``n`` steps gives is ``edit.earlier[n]``, from the same optimisation
    (:func:`editlens.rome.values.compute_vs`)."""
    req, stats = _checked(model, request, hparams, stats)
    k_avg, k_bare = compute_k(model, req, hparams.layer, hparams)
    vres = compute_v(model, req, hparams.layer, hparams, extra_losses, also_steps=also_steps, verbose=verbose)
    return _edit(model, req, hparams, stats, k_avg, k_bare, vres)


def compute_rome_edits(model: TransformerBridge, requests: Sequence[Any], hparams: ROMEHyperParams,
                       stats: KeyStats | None = None,
                       extra_losses: Sequence[Sequence[LossTerm]] | None = None, *, also_steps: Sequence[int] = (),
                       verbose: bool = False) -> list[Edit]:
    """:func:`compute_rome_edit` of several requests (each edit on its own, none applied), their v* optimised
    together: one forward and backward pass per step for all of them (:func:`editlens.rome.values.compute_vs`),
    each with its own delta, early stop and history. The same edits up to float noise; under bfloat16 on a CPU a
    batch of 8 facts costs about half of what 8 one at a time do (Chapter 3's evaluation).
    ``extra_losses[i]``: request ``i``'s extra terms."""
    checked = [_checked(model, r, hparams, stats) for r in requests]
    if not checked:
        return []
    stats = checked[0][1]
    reqs = [req for req, _ in checked]
    ks = [compute_k(model, req, hparams.layer, hparams) for req in reqs]
    vres = compute_vs(model, reqs, hparams.layer, hparams, extra_losses, also_steps=also_steps, verbose=verbose)
    return [_edit(model, req, hparams, stats, k_avg, k_bare, v) for req, (k_avg, k_bare), v in zip(reqs, ks, vres)]


def _checked(model: TransformerBridge, request: Any, hparams: ROMEHyperParams, stats: KeyStats | None
             ) -> tuple[RewriteRequest, KeyStats]:
    """The validated request and the key statistics for the edit layer (computed or cached if not given)."""
    req = as_request(request)
    validate_request(req, model.tokenizer)
    layer = hparams.layer
    if stats is None:
        stats = stats_for(model, hparams)
    if stats.layer not in (-1, layer):
        raise ValueError(f"Key statistics are for layer {stats.layer}, the edit is at layer {layer}. "
                         "Fix: pass stats computed at the edit layer (editlens.rome.key_stats.get_key_stats(model, layer)).")
    if hparams.key_variant not in ("r-rome", "rome"):
        raise ValueError(f"key_variant must be 'r-rome' or 'rome', got {hparams.key_variant!r}.")
    return req, stats


def _edit(model: TransformerBridge, req: RewriteRequest, hparams: ROMEHyperParams, stats: KeyStats, k_avg: Tensor,
          k_bare: Tensor,
          vres: VResult) -> Edit:
    """The :class:`Edit` of one request from its keys and v* (and the edits of its shorter runs)."""
    layer = hparams.layer
    u = stats.solve(k_avg, hparams.mom2_reg)
    k_used = k_avg if hparams.key_variant == "r-rome" else k_bare
    W = w_out(model, layer).detach()
    nearest = value_on_ray(model, hparams) == "nearest"

    def edit_for(v: VResult) -> Edit:
        v_star = nearest_on_ray(v.v_star, k_used @ W, norm_eps_after_mlp(model, layer)) if nearest else v.v_star
        left, right = rank_one_factors(W, u, k_used, v_star)
        delta = torch.outer(left, right).to(W.dtype)  # = rank_one_update(W, u, k_used, v*)
        info = {"key_variant": hparams.key_variant, "final_loss": v.final_loss, "steps": len(v.history)}
        if nearest:  # how far along its ray v* was moved (1: not at all)
            info["v_scale"] = float(v_star.norm() / v.v_star.norm())
        return Edit(layer=layer, delta=delta, request=req, u=u, k_star=k_used, v_star=v_star, v_result=v,
                    factors=(left, right), info=info)

    edit = edit_for(vres)
    edit.earlier = {n: edit_for(v) for n, v in vres.earlier.items()}
    return edit


def apply_rome(model: TransformerBridge, request: Any, hparams: ROMEHyperParams, stats: KeyStats | None = None,
               extra_losses: Sequence[LossTerm] = (), *, also_steps: Sequence[int] = (),
               verbose: bool = False) -> Edit:
    """Compute and apply a ROME edit; returns the applied :class:`Edit` (call ``edit.undo(model)`` to revert)."""
    return compute_rome_edit(model, request, hparams, stats, extra_losses, also_steps=also_steps,
                             verbose=verbose).apply(model)


@contextlib.contextmanager
def edited(model: TransformerBridge, requests: Any, hparams: ROMEHyperParams, stats: KeyStats | None = None,
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
