"""One fingerprint of a model's weights: which exact weights a cache entry or a check belongs to.

Taught in: Chapter 1 (the selected heads are saved with the print of the weights they were found on, and
Chapter 2 refuses heads of other weights). Every cache and check of the package uses this one print: the key
statistics C on disk (Chapter 3), STEAM's anchors (Chapter 4), the restored-weights checks (Chapters 2, 6).

**What it covers.** SHA-256 (first 16 hex digits) over every entry of the model's ``state_dict()``
(parameters and persistent buffers), in name order, each as its name followed by its raw bytes. A
``TransformerBridge`` is fingerprinted through the Hugging Face model it wraps (``model.original_model``), so
a bridge and its wrapped model have the same print. Dtype and shape are not hashed apart from the bytes: an
entry's name fixes its role in the architecture, and another dtype changes its byte count. (This is the
scheme the key-statistics cache has always used, so the files already on disk keep their names; the names
include the bridge's wrapper modules, so a TransformerLens upgrade that renames them changes the print, which
only costs recomputing the caches.)

**Identity is by content**: two models loaded from the same weights have the same print, an edit applied in
place changes it, and undoing the edit bit-exactly brings the original print back. There is no key by
``id()``: Python reuses an id once its object is gone, so such a cache can hand a new model an old one's entry.

**Cost and memo.** Hashing reads every byte: for the embedded 135M model, 964 entries and 1.9 GB (the
bridge's wrapper modules and the tied embedding list tensors under several names), 1.5 s on one thread
(``benchmarks/bench_fingerprint.py``). So the print is memoised per model object, held weakly (a model that
is garbage-collected takes its entry with it; a memo hit costs about 10 ms), and reused only while every
``state_dict`` tensor is the same tensor object with the same version counter (``Tensor._version``). Every
in-place write bumps that counter (``add_``, ``copy_``, index assignment, also under ``torch.no_grad()``,
optimiser steps), and so do the package's edits. Writes through ``.data`` do not: after one, pass
``recompute=True``, as the exact checks (:func:`editlens.compare.run_methods`) do.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_Stamp = list[tuple[str, "weakref.ref[Tensor]", int]]
_MEMO: "weakref.WeakKeyDictionary[Any, tuple[_Stamp, str]]" = weakref.WeakKeyDictionary()


def weights_fingerprint(model: TransformerBridge, *, recompute: bool = False) -> str:
    """16 hex digits identifying the exact weights of ``model`` (a module or a TransformerBridge).

    Memoised while no weight changed in place (see the module docstring); ``recompute=True`` hashes the bytes
    again whatever the memo says."""
    target = getattr(model, "original_model", model)
    if not isinstance(target, torch.nn.Module):
        raise TypeError(f"weights_fingerprint needs a torch module or a TransformerBridge, got "
                        f"{type(model).__name__}. Fix: pass the model returned by editlens.load_model().")
    tensors = target.state_dict(keep_vars=True)
    if not recompute:
        hit = _memo_get(target)
        if hit is not None and _unchanged(hit[0], tensors):
            return hit[1]
    print_ = _digest(tensors)
    _memo_put(target, tensors, print_)
    return print_


def _digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)  # no copy on CPU
    return h.hexdigest()[:16]


def _stamp(tensors: Mapping[str, Tensor]) -> _Stamp | None:
    """Each tensor's identity and version counter; None when one has no counter (an inference tensor)."""
    if any(t.is_inference() for t in tensors.values()):
        return None
    return [(name, weakref.ref(t), t._version) for name, t in tensors.items()]


def _unchanged(stamp: _Stamp, tensors: Mapping[str, Tensor]) -> bool:
    if len(stamp) != len(tensors):
        return False
    return all(name in tensors and ref() is tensors[name] and tensors[name]._version == version
               for name, ref, version in stamp)


def _memo_get(target: torch.nn.Module) -> tuple[_Stamp, str] | None:
    try:
        return _MEMO.get(target)
    except TypeError:  # a module class that is not hashable: no memo
        return None


def _memo_put(target: torch.nn.Module, tensors: Mapping[str, Tensor], print_: str) -> None:
    stamp = _stamp(tensors)
    if stamp is None:
        return
    try:
        _MEMO[target] = (stamp, print_)
    except TypeError:
        pass
