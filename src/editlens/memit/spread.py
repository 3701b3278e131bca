"""MEMIT's update for one fact: a target for the residual stream after the last edited layer, written a share at a
time into the MLPs of several layers.

ROME writes the whole change into one MLP: ``W' = W + u r^T / (u . k)`` makes the edited layer map k* exactly to
v*. MEMIT (Meng et al., 2023) edits the MLPs of a window of layers ``l_1 < ... < l_n``:

1. v* is optimised at the last layer ``R = l_n`` as in ROME (:func:`editlens.rome.values.compute_v`); its change
   ``delta = v* - v0`` is added to the residual stream after block R at the subject's last token, so the target
   is ``z* = h_R + delta`` (the MLP's output is added to the residual: without a norm after the MLP, moving the
   output by delta moves the residual by delta).
2. Layer by layer, from the first: the residual still missing at R, ``z* - h_R`` with the layers below already
   edited, divided by the number of layers left, is that layer's share ``r``; the layer's key k (averaged over
   the context prefixes, as ROME's) and its key statistics C give the least-squares update that writes r for k
   while keeping the outputs of the keys C describes:

       W' = W + u r^T / (1 + k . u),    u = (lambda C)^-1 k

   ``lambda`` (the authors' ``mom2_update_weight``) weighs the preserved keys against the new one; as lambda
   goes to 0 the layer writes r exactly, as ROME does. The edit is applied before the next layer's key and
   residual are read.

Each layer's update is rank one, an :class:`editlens.rome.update.Edit`, so the edits are applied, restored bit for
bit and evaluated (per batch row) as ROME's are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from editlens.anatomy import has_norm_after_mlp, mlp_width
from editlens.data import as_request, validate_request
from editlens.precision import full_precision
from editlens.rome.hparams import ROMEHyperParams
from editlens.rome.key_stats import KeyStats, stats_for
from editlens.rome.keys import compute_k, subject_last_index
from editlens.rome.update import Edit, w_out
from editlens.rome.values import LossTerm, compute_v

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

AUTHORS_UPDATE_WEIGHT = 15000.0
"""The authors' ``mom2_update_weight`` for GPT-J (hparams/MEMIT/EleutherAI_gpt-j-6B.json)."""
AUTHORS_D_MLP = 16384
"""GPT-J's MLP width, the keys' dimension that weight was tuned for."""


def default_layers(layer: int, n_layers: int) -> tuple[int, ...]:
    """Five MLPs around ROME's edit layer (``layer - 2`` to ``layer + 2``, within the model), as the authors edit
    GPT-J's layers 3 to 8 around ROME's 5."""
    return tuple(range(max(0, layer - 2), min(n_layers, layer + 3)))


def default_update_weight(d_mlp: int) -> float:
    """The authors' lambda scaled to this model's key dimension. For a typical key ``k . C^-1 k`` is about
    ``d_mlp``, so ``k . u`` is about ``d_mlp / lambda`` and each layer writes a share ``s / (1 + s)`` of its target,
    ``s = d_mlp / lambda``: about half on GPT-J; the scaled weight keeps that share on any model."""
    return AUTHORS_UPDATE_WEIGHT * d_mlp / AUTHORS_D_MLP


def residual_at_subject(model: TransformerBridge, prompt: str, subject: str, layer: int) -> Float[Tensor, "d_model"]:
    """The residual stream after block ``layer`` at the subject's last token of ``prompt`` (float32)."""
    ids, idx = subject_last_index(model, prompt, subject)
    hook = f"blocks.{layer}.hook_resid_post"
    tokens = torch.tensor([ids], device=model.cfg.device)
    with torch.no_grad(), full_precision(model):
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == hook, stop_at_layer=layer + 1)
    return cache[hook][0, idx].float()


def compute_memit_edit(model: TransformerBridge, request: Any, hparams: ROMEHyperParams, layers: Sequence[int],
                       update_weight: float, stats: Sequence[KeyStats] | None = None,
                       extra_losses: Sequence[LossTerm] = (), *, verbose: bool = False) -> list[Edit]:
    """The rank-one edits (one per layer of ``layers``, none applied) that MEMIT writes for one request.

    ``hparams``: ROME's settings for v* (its ``layer`` is ignored: v* is optimised at ``layers[-1]``);
    ``update_weight``: lambda (0: every layer writes its share exactly); ``stats[i]``: C at ``layers[i]``
    (computed or read from the cache when None). The weights are the same on return as on entry, bit for bit."""
    layers = [int(layer) for layer in layers]
    n_layers = model.cfg.n_layers
    if not layers or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= n_layers:
        raise ValueError(f"MEMIT's layers must be distinct and increasing, between 0 and {n_layers - 1}; got "
                         f"{layers}. Fix: pass e.g. layers={list(default_layers(hparams.layer, n_layers))}.")
    if not update_weight >= 0:
        raise ValueError(f"update_weight must be >= 0, got {update_weight}. Fix: pass e.g. "
                         f"{default_update_weight(mlp_width(model)):g} (the authors' weight for this key size).")
    normed = [layer for layer in layers if has_norm_after_mlp(model, layer)]
    if normed:
        raise ValueError(f"MEMIT adds each MLP's change to the residual stream; blocks {normed} of this model norm "
                         "the MLP's output first, so the change would not add up. Fix: use ROME (--method rome).")
    req = as_request(request)
    validate_request(req, model.tokenizer)
    last = layers[-1]
    stats = [stats_for(model, hparams.replace(layer=layer)) for layer in layers] if stats is None else list(stats)
    if len(stats) != len(layers) or any(s.layer not in (-1, layer) for s, layer in zip(stats, layers)):
        raise ValueError("stats must hold the key statistics of each of the layers, in order. Fix: leave stats=None.")
    vres = compute_v(model, req, last, hparams.replace(layer=last), extra_losses, verbose=verbose)
    unedited = residual_at_subject(model, req.prompt, req.subject, last)
    target = unedited + vres.delta.float().to(model.cfg.device)
    edits: list[Edit] = []
    try:
        for i, (layer, layer_stats) in enumerate(zip(layers, stats)):
            k, _ = compute_k(model, req, layer, hparams.replace(layer=layer))
            now = residual_at_subject(model, req.prompt, req.subject, last) if edits else unedited
            share = (target - now).double() / (len(layers) - i)
            u = layer_stats.solve(k, hparams.mom2_reg).double()
            if update_weight > 0:
                u = u / update_weight
            ku = float(k.double() @ u)  # the layer writes ku / (1 + ku) of its share (all of it at lambda 0)
            right = share / (1.0 + ku) if update_weight > 0 else share / ku
            written = ku / (1.0 + ku) if update_weight > 0 else 1.0
            W = w_out(model, layer).detach()
            delta = torch.outer(u, right).to(W.dtype)
            info = {"steps": len(vres.history), "final_loss": vres.final_loss, "share_norm": float(share.norm()),
                    "written": written}
            edit = Edit(layer=layer, delta=delta, request=req, u=u.float(), k_star=k, v_star=None,
                        v_result=vres if layer == last else None, factors=(u, right), info=info)
            edits.append(edit.apply(model))
    finally:
        for edit in reversed(edits):
            edit.undo(model)
    return edits
