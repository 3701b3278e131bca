"""C = E[k k^T]: the second moment of MLP keys at the edit layer, and its regularised inverse.

Taught in: Chapter 3 (ROME, "why u = C^-1 k*"). Chapters 4-6 reuse the cached statistics.

ROME estimated C from 100,000 Wikipedia documents. This book has no corpus to download, so by
default the model writes its own: seeded samples from the model itself (``source="self"``);
pass text files instead with ``source=[path, ...]``. With few tokens C is rank-deficient, so
the inverse is regularised: ``u = (C + lambda * mean(diag C) * I)^-1 k``. C is computed in float32
whatever precision the model runs in (:mod:`editlens.precision`), so one cached C serves every
precision. Statistics are cached
under ``editlens.paths.cache_dir()/stats`` with their provenance (the weights' content print,
:func:`editlens.fingerprint.weights_fingerprint`, layer, token count, source), and a cached file
is only reused when all of these match.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from safetensors import safe_open
from safetensors.torch import save_file

from editlens.anatomy import mlp_width
from editlens.fingerprint import weights_fingerprint
from editlens.paths import cache_dir
from editlens.precision import full_precision
from editlens.rome.keys import mlp_key_hook
from editlens.scoring import bos_ids

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from editlens.rome.hparams import ROMEHyperParams

START_WORDS = ["The", "In", "A", "It", "This", "He", "She", "We", "They", "When", "After", "One", "There", "For",
               "As", "Many", "Today", "His", "Her", "Our"]
STATS_FORMAT = 2  # 2: safetensors files (1 was pickled .pt, no longer read)


def stats_dir() -> Path:
    return cache_dir() / "stats"


def shipped_text_dir() -> Path:
    """Where the book ships the embedded model's own sampled text (``editlens/data/model_text``).

    Sampling 65,536 tokens costs about ten minutes of one CPU thread and is the same work on every
    machine, so it is done once (``scripts/ship_model_text.py``) and shipped; a sample for other
    weights, seeds or lengths is generated and cached as before."""
    return Path(__file__).resolve().parents[1] / "data" / "model_text"


@dataclass
class KeyStats:
    """Uncentred second moment of keys at one layer: ``C = mean over tokens of k k^T``."""

    C: Float[Tensor, "d_mlp d_mlp"]
    n_tokens: int
    meta: dict = field(default_factory=dict)
    _inv_cache: dict = field(default_factory=dict, repr=False)

    @property
    def layer(self) -> int:
        return int(self.meta.get("layer", -1))

    def rank(self, rtol: float = 1e-6) -> int:
        """Numerical rank: how many directions the sampled keys span."""
        return int(torch.linalg.matrix_rank(self.C.double(), rtol=rtol, hermitian=True))  # C is symmetric

    def regularised(self, reg: float) -> Float[Tensor, "d_mlp d_mlp"]:
        C = self.C.double()
        lam = reg * C.diagonal().mean()
        return C + lam * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)

    def inverse(self, reg: float) -> Float[Tensor, "d_mlp d_mlp"]:
        """``(C + reg * mean(diag C) * I)^-1`` in float64 (cached per ``reg``)."""
        if reg not in self._inv_cache:
            self._inv_cache[reg] = torch.linalg.inv(self.regularised(reg))
        return self._inv_cache[reg]

    def solve(self, k: Float[Tensor, "d_mlp"], reg: float) -> Float[Tensor, "d_mlp"]:
        """u = (C + lambda I)^-1 k, returned in ``k``'s dtype and device."""
        inv = self.inverse(reg).to(k.device)
        return (inv @ k.double()).to(k.dtype)


# ----------------------------------------------------------------------------------------------
# Text sources


def sample_tokens(model: TransformerBridge, n_tokens: int, *, seed: int = 0, seq_len: int = 128, batch_size: int = 32,
                  progress: bool = False) -> Int[Tensor, "n_seq pos"]:
    """Token sequences the model samples itself (temperature 1, seeded), each starting BOS + a common word.

    Cached on disk (safetensors) per weights fingerprint, seed, length and count.
    """
    n_seq = max(1, -(-n_tokens // seq_len))
    path = stats_dir() / f"samples_{weights_fingerprint(model)}_s{seed}_L{seq_len}_n{n_seq}.safetensors"
    if path.exists():
        return _load_tensor(path, "tokens")
    # reuse a longer sample with the same weights, seed and length: shipped with the book, or cached
    pattern = f"samples_{weights_fingerprint(model)}_s{seed}_L{seq_len}_n*.safetensors"
    for other in [*sorted(shipped_text_dir().glob(pattern)), *sorted(stats_dir().glob(pattern))]:
        if int(other.stem.rsplit("_n", 1)[1]) >= n_seq:
            return _load_tensor(other, "tokens")[:n_seq].long()
    from tqdm import tqdm

    tok = model.tokenizer
    hf = getattr(model, "original_model", None)
    if hf is None:
        raise TypeError("sample_tokens needs a TransformerBridge with .original_model (a Hugging Face model).")
    dev = next(hf.parameters()).device
    g = torch.Generator().manual_seed(seed)
    starts = [[*bos_ids(model), *tok(w, add_special_tokens=False)["input_ids"][:1]] for w in START_WORDS]
    out = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for b in tqdm(range(0, n_seq, batch_size), disable=not progress, desc="sampling text for C"):
            nb = min(batch_size, n_seq - b)
            which = torch.randint(len(starts), (nb,), generator=g)
            L0 = len(starts[0])
            inp = torch.tensor([starts[i] for i in which.tolist()], device=dev)[:, :L0]
            with torch.no_grad(), full_precision(model):  # the same text whatever the model's precision
                gen = hf.generate(inp, attention_mask=torch.ones_like(inp), do_sample=True, temperature=1.0, top_k=0,
                                  top_p=1.0, max_new_tokens=seq_len - L0, min_new_tokens=seq_len - L0,
                                  pad_token_id=tok.pad_token_id)
            out.append(gen[:, :seq_len].cpu())
    tokens = torch.cat(out)
    _save_tensor(path, "tokens", tokens)
    return tokens


def _save_tensor(path: Path, name: str, tensor: Tensor, meta: dict | None = None) -> None:
    """Write one tensor as safetensors (atomically: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({name: tensor.contiguous()}, str(tmp), metadata=None if meta is None else {"meta": json.dumps(meta)})
    tmp.replace(path)


def _load_tensor(path: Path, name: str) -> Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name)


def _load_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("meta", "{}"))


def file_tokens(model: TransformerBridge, paths: Sequence[str | os.PathLike], n_tokens: int, *, seq_len: int = 128
                ) -> Int[Tensor, "n_seq pos"]:
    """Chunks of ``seq_len`` tokens (BOS first) from the given UTF-8 text files, up to ``n_tokens``."""
    tok = model.tokenizer
    ids: list[int] = []
    for p in paths:
        ids += tok(Path(p).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            break
    body = seq_len - len(bos_ids(model))
    n_seq = min(len(ids) // body, max(1, -(-n_tokens // seq_len)))
    if n_seq == 0:
        raise ValueError(f"The text files {list(map(str, paths))} hold fewer than {body} tokens; give more text.")
    rows = [bos_ids(model) + ids[i * body:(i + 1) * body] for i in range(n_seq)]
    return torch.tensor(rows)


# ----------------------------------------------------------------------------------------------
# Statistics


def _source_id(source: Any) -> tuple[str, str]:
    if source in (None, "self"):
        return "self", "self"
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return "files:" + ",".join(Path(p).name for p in paths), h.hexdigest()[:12]


def accumulate_second_moment(model: TransformerBridge, layer: int, tokens: Int[Tensor, "n_seq pos"], *,
                             batch_size: int = 16,
                             skip_bos: bool = True, progress: bool = False) -> tuple[Float[Tensor, "d_mlp d_mlp"], int]:
    """Sum of k k^T over all token positions (BOS position skipped: its keys are outliers) and the count."""
    from tqdm import tqdm

    d_mlp = mlp_width(model)
    S = torch.zeros(d_mlp, d_mlp, dtype=torch.float64)
    n = 0
    store: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: Any) -> Tensor:
        store["k"] = act.detach()
        return act

    start = 1 if (skip_bos and bos_ids(model)) else 0
    for b in tqdm(range(0, tokens.shape[0], batch_size), disable=not progress, desc=f"keys at layer {layer}"):
        chunk = tokens[b:b + batch_size].to(model.cfg.device)
        with torch.no_grad(), full_precision(model):  # a statistic: float32 whatever the model's precision
            model.run_with_hooks(chunk, fwd_hooks=[(mlp_key_hook(layer), grab)], stop_at_layer=layer + 1)
        k = store["k"][:, start:].reshape(-1, d_mlp).float()
        S += (k.T @ k).double().cpu()
        n += k.shape[0]
    return S, n


def compute_key_stats(model: TransformerBridge, layer: int, n_tokens: int = 100_000, *, source: Any = "self",
                      seed: int = 0,
                      seq_len: int = 128, progress: bool = False) -> KeyStats:
    """Estimate C at ``layer`` from ``n_tokens`` tokens of ``source`` ("self" or text files). Not cached."""
    if source in (None, "self"):
        tokens = sample_tokens(model, n_tokens, seed=seed, seq_len=seq_len, progress=progress)
    else:
        paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        tokens = file_tokens(model, paths, n_tokens, seq_len=seq_len)
    S, n = accumulate_second_moment(model, layer, tokens, progress=progress)
    src, src_hash = _source_id(source)
    meta = {"format": STATS_FORMAT, "weights": weights_fingerprint(model), "layer": layer, "n_tokens": n,
            "requested_tokens": n_tokens, "source": src, "source_hash": src_hash, "seed": seed, "seq_len": seq_len,
            "model_name": str(getattr(model.cfg, "model_name", ""))}
    return KeyStats(C=(S / n).float(), n_tokens=n, meta=meta)


def _cache_path(model: TransformerBridge, layer: int, n_tokens: int, source: Any, seed: int, seq_len: int) -> Path:
    src, src_hash = _source_id(source)
    return stats_dir() / f"C_{weights_fingerprint(model)}_L{layer}_n{n_tokens}_{src_hash}_s{seed}_T{seq_len}.safetensors"


def get_key_stats(model: TransformerBridge, layer: int, n_tokens: int = 100_000, *, source: Any = "self", seed: int = 0,
                  seq_len: int = 128, use_cache: bool = True, progress: bool = True) -> KeyStats:
    """Cached :func:`compute_key_stats`. The cache file's metadata must match the model's weights fingerprint."""
    path = _cache_path(model, layer, n_tokens, source, seed, seq_len)
    if use_cache and path.exists():
        meta = _load_meta(path)
        if meta.get("weights") == weights_fingerprint(model) and meta.get("layer") == layer and meta.get("format") == STATS_FORMAT:
            return KeyStats(C=_load_tensor(path, "C"), n_tokens=meta["n_tokens"], meta=meta)
    stats = compute_key_stats(model, layer, n_tokens, source=source, seed=seed, seq_len=seq_len, progress=progress)
    if use_cache:
        _save_tensor(path, "C", stats.C, stats.meta)
        path.with_suffix(".json").write_text(json.dumps(stats.meta, indent=2) + "\n")
    return stats


def stats_for(model: TransformerBridge, hparams: ROMEHyperParams, **kwargs: Any) -> KeyStats:
    """Key statistics as ``hparams`` ask for them (layer, mom2_n_tokens, mom2_source)."""
    return get_key_stats(model, hparams.layer, hparams.mom2_n_tokens, source=hparams.mom2_source, **kwargs)


def key_stats_convergence(model: TransformerBridge, layer: int, keys: Float[Tensor, "n_edits d_mlp"],
                          token_counts: Sequence[int], *,
                          reg: float = 1e-2, source: Any = "self", seed: int = 0, reference_tokens: int | None = None,
                          seq_len: int = 128, progress: bool = True) -> list[dict]:
    """How the edit direction u = (C + lambda I)^-1 k* changes with the number of tokens behind C.

    For each count: the numerical rank of C, and over the given keys the mean cosine between u and
    the u of the largest count (or ``reference_tokens``), plus with ``reg=0`` (plain pseudo-inverse,
    what little text forces). Chapter 3 plots these. Uses one sample, truncated (nested estimates).
    """
    counts = sorted(token_counts)
    ref_n = reference_tokens or counts[-1]
    if source in (None, "self"):
        tokens = sample_tokens(model, max(ref_n, counts[-1]), seed=seed, seq_len=seq_len, progress=progress)
    else:
        paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        tokens = file_tokens(model, paths, max(ref_n, counts[-1]), seq_len=seq_len)
    per_seq = tokens.shape[1] - (1 if bos_ids(model) else 0)
    keys = keys.double().cpu()
    n_seqs = {n: max(1, -(-n // per_seq)) for n in {*counts, ref_n}}
    # The estimates are nested (the first m sequences of one sample): the keys of each sequence are computed
    # once, and the running sum is kept at every count.
    at: dict[int, KeyStats] = {}
    S, cnt, done = None, 0, 0
    for m in sorted(set(n_seqs.values())):
        part, c = accumulate_second_moment(model, layer, tokens[done:m])
        S, cnt, done = (part if S is None else S + part), cnt + c, m
        at[m] = KeyStats(C=(S / cnt).float(), n_tokens=cnt)

    ref = at[n_seqs[ref_n]]
    u_ref = (ref.inverse(reg) @ keys.T).T
    rows = []
    for n in counts:
        st = at[n_seqs[n]]
        u = (st.inverse(reg) @ keys.T).T
        u_pinv = (torch.linalg.pinv(st.C.double(), hermitian=True) @ keys.T).T
        cos = torch.nn.functional.cosine_similarity(u, u_ref, dim=-1)
        cos_p = torch.nn.functional.cosine_similarity(u_pinv, u_ref, dim=-1)
        rows.append({"n_tokens": st.n_tokens, "rank": st.rank(), "cos_u_vs_ref": float(cos.mean()),
                     "cos_u_pinv_vs_ref": float(cos_p.mean()), "reg": reg})
    return rows
