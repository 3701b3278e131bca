"""Bake steering shifts into an attention output-projection bias, undoably; save a steered checkpoint.

Taught in: Chapter 2.

A shift s_h added to head h's z (its slice of the output projection's input) adds
``W_O[h]^T s_h`` to the attention output at every position. With TransformerLens' W_O of shape
[head, d_head, d_model] that is ``s_h @ W_O[h]``; in the Hugging Face module ``o_proj.weight`` is
[d_model, n_heads * d_head] and head h owns columns ``h*d_head:(h+1)*d_head``, so

    b_O[l] += sum_h o_proj.weight[:, h*d_head:(h+1)*d_head] @ s_h        (a d_model vector).

Trap: one public ITI script writes the raw shift (a d_head or n_heads*d_head vector) into the bias
instead of ``W_O @ shift``. That is a different vector in a different space (it only even has the
right length when n_heads * d_head == d_model, as on SmolLM2), so it steers somewhere else.

Llama-family models (SmolLM2 included) have no o_proj bias; :func:`bake_bias` adds one as an
``nn.Parameter`` on the HF ``o_proj`` Linear (the bridge's ``attn.o`` wraps that same Linear and
calls it, so the forward pass uses the bias; the tests check hook and bias give the same logits),
and :meth:`BakedSteering.remove` deletes it again, leaving every original tensor bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import torch
from jaxtyping import Float
from torch import Tensor, nn

from editlens.steering.directions import Head
from editlens.steering.inject import model_dims, validate_shifts

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def o_proj_linear(model, layer: int) -> nn.Linear:
    """The Hugging Face ``nn.Linear`` output projection of ``layer`` (wrapped by the bridge's ``attn.o``)."""
    attn = model.blocks[layer].attn
    lin = getattr(getattr(attn, "o", None), "original_component", None)
    if not isinstance(lin, nn.Linear):
        raise ValueError(f"blocks.{layer}.attn.o does not wrap an nn.Linear (found {type(lin).__name__}); "
                         "baking a bias is implemented for Linear output projections (Llama, Mistral, Qwen, ...) only. "
                         "Fix: steer with hooks (editlens.steering.steered) instead.")
    return lin


def bias_from_shifts(model, shifts: Mapping[Head, Tensor]) -> dict[int, Float[Tensor, "d_model"]]:
    """Per layer, ``sum_h W_O[h]^T shift_h`` (computed in float64, returned in the weight's dtype)."""
    L, H, D = model_dims(model)
    sh = validate_shifts(shifts, L, H, D)
    out: dict[int, Tensor] = {}
    for (l, h), v in sorted(sh.items()):
        W = o_proj_linear(model, l).weight.detach()
        if W.shape[1] != H * D:
            raise ValueError(f"layer {l}: o_proj takes {W.shape[1]} inputs, expected n_heads*d_head = {H * D}.")
        add = W[:, h * D:(h + 1) * D].double() @ v.to(W.device, torch.float64)
        out[l] = out[l] + add if l in out else add
    return {l: b.to(o_proj_linear(model, l).weight.dtype) for l, b in out.items()}


@dataclass
class BakedSteering:
    """Biases added to ``o_proj`` of some layers; :meth:`remove` restores the model exactly."""

    model: TransformerBridge
    biases: dict[int, Tensor]
    _saved: dict[int, Tensor | None] = field(default_factory=dict, repr=False)
    _removed: bool = False

    def remove(self) -> None:
        """Delete the added biases (or restore a pre-existing bias bit-exactly). Idempotent."""
        if self._removed:
            return
        for l, old in self._saved.items():
            lin = o_proj_linear(self.model, l)
            if old is None:
                # back to "registered but absent", as nn.Linear(bias=False) leaves it (torch types the attribute
                # Parameter, without its None)
                lin.bias = None  # type: ignore[assignment]
            else:
                with torch.no_grad():
                    lin.bias.copy_(old)
        self._removed = True


def bake_bias(model, shifts: Mapping[Head, Tensor], *, verify: bool = True) -> BakedSteering:
    """Fold ``shifts`` into ``o_proj`` biases (adding a bias where there is none). Call ``.remove()`` to undo.

    ``verify`` checks, per layer, that the bridge's ``attn.o`` (the module the forward pass calls)
    now maps a zero input to the bias, i.e. that the forward really uses the new parameter (when
    hooks are attached to ``attn.o`` this functional check is replaced by checking that ``attn.o``
    wraps the Linear that holds the bias)."""
    biases = bias_from_shifts(model, shifts)
    baked = BakedSteering(model=model, biases=biases)
    try:
        for l, b in biases.items():
            lin = o_proj_linear(model, l)
            if lin.bias is None:
                baked._saved[l] = None
                lin.bias = nn.Parameter(b.clone(), requires_grad=False)
            else:
                baked._saved[l] = lin.bias.detach().clone()
                with torch.no_grad():
                    lin.bias.add_(b.to(lin.bias.dtype))
            o = model.blocks[l].attn.o
            if o.original_component is not lin or lin.bias is None:
                raise RuntimeError(f"layer {l}: the bias did not attach to the Linear the bridge calls.")
            hooked = any(getattr(hp, "fwd_hooks", None) for hp in (getattr(o, "hook_in", None), getattr(o, "hook_out", None)))
            if verify and not hooked:  # with hooks on o (e.g. steering hooks) a zero input is not zero; identity check above
                with torch.no_grad():
                    y = o(torch.zeros(1, 1, lin.in_features, dtype=lin.weight.dtype, device=lin.weight.device))
                if not torch.equal(y[0, 0], lin.bias.detach()):
                    raise RuntimeError(f"layer {l}: the bridge's attn.o does not apply the o_proj bias; "
                                       "baking would silently do nothing. Steer with hooks instead.")
    except BaseException:
        baked.remove()
        raise
    return baked


@contextlib.contextmanager
def baked(model, shifts: Mapping[Head, Tensor]) -> Iterator[BakedSteering]:
    """Model with the shifts baked into ``o_proj`` biases inside the block; restored exactly on exit, also after an exception."""
    handle = bake_bias(model, shifts)
    try:
        yield handle
    finally:
        handle.remove()


_WRAPPER = re.compile(r"\.?_original_component(?=\.|$)")


def _clean_state_dict(hf_model: nn.Module) -> dict[str, Tensor]:
    """The bridged HF model's tensors under their plain Hugging Face names (bridge wrapper segments removed)."""
    out: dict[str, Tensor] = {}
    for name, t in hf_model.state_dict().items():
        clean = _WRAPPER.sub("", name)
        if clean not in out:
            out[clean] = t
    return out


def save_steered(model, shifts: Mapping[Head, Tensor], folder: str | Path, *, tokenizer=None) -> Path:
    """Write a standard Hugging Face checkpoint (safetensors + config.json + tokenizer) of the
    steered model: the original weights plus ``o_proj`` biases holding ``W_O @ shift``.

    Uses the config's ``attention_bias=True`` (in transformers' Llama this switches on q/k/v/o
    biases together; the q/k/v biases are saved as zeros). Reload with
    ``editlens.load_model(folder)``. Raises ValueError for an architecture whose config has no
    ``attention_bias`` switch for ``o_proj``. Never pickles."""
    from transformers import AutoModelForCausalLM

    hf = model.original_model
    cfg = hf.config
    if not hasattr(cfg, "attention_bias"):
        raise ValueError(f"{type(cfg).__name__} has no attention_bias option, so a saved checkpoint cannot carry an "
                         "o_proj bias. Fix: steer with hooks, or bake in memory with editlens.steering.baked.")
    biases = bias_from_shifts(model, shifts)
    new_cfg = cfg.__class__.from_dict(cfg.to_dict())
    new_cfg.attention_bias = True
    fresh = AutoModelForCausalLM.from_config(new_cfg)
    target = fresh.state_dict()
    src = _clean_state_dict(hf)
    state: dict[str, Tensor] = {}
    for name, meta in target.items():
        if name in src:
            state[name] = src[name].detach().to("cpu").clone()
        elif re.search(r"self_attn\.[qkvo]_proj\.bias$", name):
            state[name] = torch.zeros(meta.shape, dtype=meta.dtype)
        else:
            raise ValueError(f"save_steered: no weight named {name!r} in the bridged model; this architecture's names "
                             "do not map onto a fresh Hugging Face model. Fix: steer with hooks instead.")
    o_bias = [n for n in target if n.endswith("self_attn.o_proj.bias")]
    if len(o_bias) != cfg.num_hidden_layers:
        raise ValueError(f"{type(cfg).__name__} with attention_bias=True has {len(o_bias)} o_proj biases for "
                         f"{cfg.num_hidden_layers} layers; the bias is not where save_steered expects it.")
    for l, b in biases.items():
        key = f"model.layers.{l}.self_attn.o_proj.bias"
        state[key] = state[key] + b.detach().to("cpu", state[key].dtype)
    fresh.load_state_dict(state, strict=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(folder, safe_serialization=True)
    tok = tokenizer if tokenizer is not None else model.tokenizer
    tok.save_pretrained(folder)
    meta = {"steered_heads": [[l, h] for l, h in sorted(validate_shifts(shifts))], "layers_with_bias": sorted(biases)}
    (folder / "editlens_steering.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder
