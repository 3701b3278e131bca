"""Add steering shifts to the heads' outputs before the output projection, with hooks.

Taught in: Chapter 2.

``blocks.{l}.attn.hook_z`` ([batch, pos, head, d_head]) is, in the TransformerLens 4 bridge, an
alias of ``blocks.{l}.attn.o.hook_in``: the input of the output projection ``o`` (HF ``o_proj``),
so a shift added there goes through W_O, exactly like a bias ``W_O @ shift`` on ``o_proj``
(:mod:`editlens.steering.bake`; the tests check the two agree).

Positions:
- ``"all"``: every position of every forward pass. :func:`steering_hooks` then returns a plain
  hook list, which :func:`editlens.consistency.model_answers` keeps active in both its passes
  (the prompt pass and the key/value-cached continuation of multi-token answers), so it equals
  the baked bias.
- ``"last"``: only each row's last prompt token. :func:`steering_hooks` returns a
  :data:`~editlens.scoring.HookFactory` (called with that position per row); the
  continuation pass of multi-token answers is not steered (its positions are not the prompt's).
  Its ``at_positions`` form steers the nodes that end a prompt in a packed prefix tree, the same
  function (answer tokens see the steered last prompt token, and are not steered themselves).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal, Mapping

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from editlens.localize.activations import z_hook_name
from editlens.scoring import HookFactory, HookList
from editlens.steering.directions import Head, check_heads

Position = Literal["all", "last"]


def validate_shifts(shifts: Mapping[Any, Tensor], n_layers: int | None = None, n_heads: int | None = None,
                    d_head: int | None = None) -> dict[Head, Float[Tensor, "d_head"]]:
    """Check a ``{(layer, head): shift}`` mapping (non-empty, heads in range, 1-D shifts of length
    ``d_head``, finite values); returns it with int keys and detached float tensors."""
    if not isinstance(shifts, Mapping):
        raise ValueError(f"shifts must be a dict {{(layer, head): tensor[d_head]}}, got {type(shifts).__name__}. "
                         "Fix: use Directions.shift(heads, alpha).")
    heads = check_heads(list(shifts.keys()), n_layers if n_layers is not None else 10**9,
                        n_heads if n_heads is not None else 10**9, what="shifts")
    out: dict[Head, Tensor] = {}
    for key, head in zip(shifts.keys(), heads):
        v = shifts[key]
        v = torch.as_tensor(v).detach()
        if v.dim() != 1 or (d_head is not None and v.shape[0] != d_head):
            want = f"[{d_head}]" if d_head is not None else "1-D"
            raise ValueError(f"shift for head {head} has shape {tuple(v.shape)}, expected {want} (one vector per "
                             "head, in hook_z's d_head space).")
        if not torch.isfinite(v).all():
            raise ValueError(f"shift for head {head} contains NaN or infinity (alpha or sigma not finite?).")
        out[head] = v.float()
    return out


def model_dims(model) -> tuple[int, int, int]:
    """(n_layers, n_heads, d_head) of the model: the shape steering shifts are checked against."""
    return int(model.cfg.n_layers), int(model.cfg.n_heads), int(model.cfg.d_head)


def _per_layer(shifts: dict[Head, Tensor], n_heads: int | None) -> dict[int, Float[Tensor, "head d_head"]]:
    """One dense [n_heads, d_head] delta per layer (zeros for unsteered heads)."""
    H = n_heads if n_heads is not None else max(h for _, h in shifts) + 1
    D = next(iter(shifts.values())).shape[0]
    dense: dict[int, Tensor] = {}
    for (l, h), v in shifts.items():
        dense.setdefault(l, torch.zeros(H, D))[h] = v
    return dense


def _add_all(delta: Tensor):
    def hook(z: Float[Tensor, "batch pos head d_head"], hook=None) -> Tensor:
        if z.shape[-2:] != delta.shape:
            raise ValueError(f"{getattr(hook, 'name', 'hook_z')}: activations have heads x d_head {tuple(z.shape[-2:])}, "
                             f"the shift has {tuple(delta.shape)}; the shifts were built for another model.")
        return z + delta.to(z.device, z.dtype)
    return hook


def _add_last(delta: Tensor, last_pos: Int[Tensor, "batch"] | None):
    def hook(z: Float[Tensor, "batch pos head d_head"], hook=None) -> Tensor:
        if z.shape[-2:] != delta.shape:
            raise ValueError(f"{getattr(hook, 'name', 'hook_z')}: activations have heads x d_head {tuple(z.shape[-2:])}, "
                             f"the shift has {tuple(delta.shape)}; the shifts were built for another model.")
        out = z.clone()
        ar = torch.arange(z.shape[0], device=z.device)
        pos = torch.full_like(ar, z.shape[1] - 1) if last_pos is None else last_pos.to(z.device)
        out[ar, pos] = out[ar, pos] + delta.to(z.device, z.dtype)
        return out
    return hook


def _add_marked(delta: Tensor, mask: Tensor):
    def hook(z: Float[Tensor, "batch pos head d_head"], hook=None) -> Tensor:
        if z.shape[-2:] != delta.shape or z.shape[:2] != mask.shape:
            raise ValueError(f"{getattr(hook, 'name', 'hook_z')}: activations {tuple(z.shape)} do not fit the shift "
                             f"{tuple(delta.shape)} and the position mask {tuple(mask.shape)}.")
        return torch.where(mask[..., None, None].to(z.device), z + delta.to(z.device, z.dtype), z)
    return hook


class _LastTokenSteering:
    """The :data:`~editlens.scoring.HookFactory` of ``steering_hooks(position="last")``: called with each row's last
    prompt token, or ``at_positions(mask)`` for the positions a ``[batch, pos]`` mask marks (packed prefix trees)."""

    def __init__(self, dense: dict[int, Tensor]) -> None:
        self.dense = dense

    def __call__(self, last_pos: Int[Tensor, "batch"]) -> HookList:
        return [(z_hook_name(l), _add_last(d, last_pos)) for l, d in sorted(self.dense.items())]

    def at_positions(self, mask: Bool[Tensor, "batch pos"]) -> HookList:
        return [(z_hook_name(l), _add_marked(d, mask)) for l, d in sorted(self.dense.items())]


def steering_hooks(shifts: Mapping[Head, Tensor], position: Position = "all", *, model=None) -> HookList | HookFactory:
    """Forward hooks adding ``shifts[(l, h)]`` to ``blocks.{l}.attn.hook_z[..., h, :]``.

    ``position="all"`` returns a hook list (every position); ``"last"`` returns a HookFactory
    (each row's last prompt token) whose ``at_positions(mask)`` gives the same shift on the positions
    a ``[batch, pos]`` mask marks, so :func:`editlens.scoring.score_candidates` can steer the last
    prompt token of every prompt in a packed prefix tree. Both are accepted as ``fwd_hooks`` by
    :func:`editlens.consistency.model_answers`. Pass ``model`` to check head indices and d_head now
    rather than at the first forward pass."""
    dims = model_dims(model) if model is not None else (None, None, None)
    sh = validate_shifts(shifts, *dims)
    dense = _per_layer(sh, dims[1])
    if position == "all":
        return [(z_hook_name(l), _add_all(d)) for l, d in sorted(dense.items())]
    if position == "last":
        return _LastTokenSteering(dense)
    raise ValueError(f"position must be 'all' or 'last', got {position!r}.")


@contextlib.contextmanager
def steered(model, shifts: Mapping[Head, Tensor], position: Position = "all") -> Iterator[Any]:
    """Run ``model`` steered inside the block; the hooks are removed on exit, also after an exception.

    With ``position="last"`` a plain forward pass steers the *final* position of every row, which is
    the last prompt token only for unpadded (or left-padded) batches; for scoring use
    ``model_answers(..., fwd_hooks=steering_hooks(shifts, "last"))``, which knows each row's prompt end."""
    dims = model_dims(model)
    sh = validate_shifts(shifts, *dims)
    if position == "all":
        hooks = steering_hooks(sh, "all", model=model)
    elif position == "last":
        hooks = [(z_hook_name(l), _add_last(d, None)) for l, d in sorted(_per_layer(sh, dims[1]).items())]
    else:
        raise ValueError(f"position must be 'all' or 'last', got {position!r}.")
    with model.hooks(fwd_hooks=hooks):
        yield model
