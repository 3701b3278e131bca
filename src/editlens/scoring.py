"""Text into scores: the one place that tokenises prompts and answers and scores continuations.

Taught in: Chapter 1 (the model's answer to a prompt); every later chapter scores through it.

What "the score of a continuation" means everywhere in the book: the mean per-token negative
log-likelihood (NLL) of ``" " + continuation``, teacher-forced after the prompt. Two rules make
scores comparable across chapters:

- **BOS.** A prompt starts with the model's BOS token when the model is run that way
  (``model.cfg.default_prepend_bos``, as ``model.to_tokens`` does; :func:`editlens.load_model`
  sets it for the embedded SmolLM2, whose BOS is ``<|endoftext|>``). One rule, :func:`bos_ids`,
  used by every encoder here and by ROME's keys.
- **Leading space.** An answer continues a prompt, so it is scored as ``" " + answer`` (exactly
  one space: an answer that already starts with one is left alone), never with BOS.

The scorer, :func:`score_candidates`, runs each distinct token prefix **once**. It puts every
sequence to be run (prompt + candidate tokens but the last) into a prefix tree: the seven
paraphrases of a relation share "The capital of", candidates "New York" and "New Zealand" share
"New". The tree is packed into rows of about ``row_tokens`` tokens and run with *tree attention*:
every token attends to its own ancestors only (a 4-D attention mask) at its own depth as its
position, which gives the same numbers as running each sequence on its own (up to float
summation order, about 1e-6 in a log-probability). Logits are computed only at the scored
positions (the unembedding is a fifth of a forward pass of SmolLM2). A model whose
implementation ignores custom masks falls back to the plain path: each prompt once, candidates
continued from its key/value cache. :func:`packing_supported` decides, once per model.

The differentiable core used by patching, fine-tuning and ROME's v* keeps explicit rows:
:class:`ScoringPlan` (prompt + candidate tokens but the last, right-padded: with causal attention
the real positions never see the padding) and :func:`item_logprobs`.
"""

from __future__ import annotations

import collections
import copy
import weakref
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterator,
    Literal,
    Sequence,
    cast,
    overload,
)

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from editlens import fused_attention
from editlens.precision import full_precision

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

HookList = list[tuple[Any, Callable]]
HookFactory = Callable[[Int[Tensor, "batch"]], HookList]
"""Called with the last-prompt-token position of every row of a batch; returns forward hooks.

Chapter 2 uses it to steer only at the last prompt token (``last_pos`` differs row by row). A factory
that also has an ``at_positions`` attribute (called with a ``[batch, pos]`` boolean mask of the
positions to act on, returning forward hooks) can act on packed prefix trees too, where one row holds
many prompts: :func:`score_candidates` then packs (each prompt's last token is one tree node)."""


# --------------------------------------------------------------------------------------------
# Tokenisation: one BOS rule, one answer rule
# --------------------------------------------------------------------------------------------

def bos_ids(model: TransformerBridge) -> list[int]:
    """``[bos]`` when the model is run with a BOS token in front (``cfg.default_prepend_bos``)."""
    tok = model.tokenizer
    if getattr(model.cfg, "default_prepend_bos", True) and tok.bos_token_id is not None:
        return [int(tok.bos_token_id)]
    return []


def encode_text(model: TransformerBridge, text: str, *, bos: bool = True) -> list[int]:
    """Token ids of ``text`` as the model sees it: :func:`bos_ids` first unless ``bos=False``."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return (bos_ids(model) if bos else []) + [int(i) for i in ids]


def encode_prompt(model: TransformerBridge, prompt: str) -> list[int]:
    """Token ids of a prompt, BOS first (the book's one rule, :func:`bos_ids`)."""
    return encode_text(model, prompt)


def with_leading_space(text: str) -> str:
    """Answers are scored as a continuation: ``"Paris"`` -> ``" Paris"`` (one space, no more)."""
    return text if text.startswith(" ") else " " + text


def encode_answer(model: TransformerBridge, answer: str) -> list[int]:
    """Token ids of ``" " + answer`` (no BOS): how an answer continues a prompt."""
    ids = encode_text(model, with_leading_space(answer), bos=False)
    if not ids:
        raise ValueError(f"The answer {answer!r} tokenises to nothing. Fix: give a non-empty word.")
    return ids


class TokenCache:
    """Memoised :func:`encode_prompt` / :func:`encode_answer` (prompts and answers repeat)."""

    def __init__(self, model: TransformerBridge):
        self.model = model
        self._prompts: dict[str, list[int]] = {}
        self._answers: dict[str, list[int]] = {}

    def prompt(self, text: str) -> list[int]:
        if text not in self._prompts:
            self._prompts[text] = encode_prompt(self.model, text)
        return self._prompts[text]

    def answer(self, text: str) -> list[int]:
        if text not in self._answers:
            self._answers[text] = encode_answer(self.model, text)
        return self._answers[text]


# --------------------------------------------------------------------------------------------
# Rows: padding, device
# --------------------------------------------------------------------------------------------

def pad_id(model: TransformerBridge) -> int:
    """The id used to pad rows (the tokenizer's pad token, else EOS, else 0)."""
    tok = model.tokenizer
    for tid in (tok.pad_token_id, tok.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def model_device(model: TransformerBridge) -> torch.device:
    """Where the model's first parameter lives (where token tensors must go)."""
    return next(model.parameters()).device


def pad_rows(rows: Sequence[Sequence[int]], pad: int, device: Any, *, multiple: int = 1) -> Int[Tensor, "batch pos"]:
    """Right-pad token lists into one tensor (causal attention: real positions never see padding).
    ``multiple``: the width is rounded up to a multiple of it, so that batches of varying lengths
    share a few shapes (a CPU's bf16 kernels are built once per shape)."""
    width = max(len(r) for r in rows)
    width = -(-width // multiple) * multiple
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out.to(device)


# --------------------------------------------------------------------------------------------
# The differentiable core: explicit rows (patching, SFT, v*)
# --------------------------------------------------------------------------------------------

@dataclass
class ScoringPlan:
    """Deduplicated token rows plus, for every scored item, where its target tokens are read.

    ``rows[r]`` is a token list; ``last_pos[r]`` its last prompt token. Item ``i`` is scored on row
    ``item_row[i]`` at positions ``item_pos[i]`` (one per target token) with targets ``item_tok[i]``.
    """

    rows: list[list[int]] = field(default_factory=list)
    last_pos: list[int] = field(default_factory=list)
    item_row: list[int] = field(default_factory=list)
    item_pos: list[list[int]] = field(default_factory=list)
    item_tok: list[list[int]] = field(default_factory=list)
    _index: dict[tuple, int] = field(default_factory=dict, repr=False)

    def add(self, prompt_ids: list[int], answer_ids: list[int], *, tag: Any = None) -> int:
        """Register ``answer_ids`` continuing ``prompt_ids``; returns the item index.

        Items share a row when their rows are identical and their ``tag`` is equal (patching tags
        rows by pair, since two pairs may patch the same tokens from different sources)."""
        row = list(prompt_ids) + list(answer_ids[:-1])
        key = (tag, tuple(row))
        if key not in self._index:
            self._index[key] = len(self.rows)
            self.rows.append(row)
            self.last_pos.append(len(prompt_ids) - 1)
        self.item_row.append(self._index[key])
        start = len(prompt_ids) - 1
        self.item_pos.append(list(range(start, start + len(answer_ids))))
        self.item_tok.append(list(answer_ids))
        return len(self.item_row) - 1


def item_logprobs(
    logits: Float[Tensor, "batch pos d_vocab"],
    plan: ScoringPlan,
    batch_rows: Sequence[int],
    items: Sequence[int],
) -> Float[Tensor, "item"]:
    """Mean per-token log-probability of each item whose row is in this batch (differentiable)."""
    where = {r: b for b, r in enumerate(batch_rows)}
    b_idx, p_idx, t_idx, owner = [], [], [], []
    for k, i in enumerate(items):
        b = where[plan.item_row[i]]
        for pos, tok in zip(plan.item_pos[i], plan.item_tok[i]):
            b_idx.append(b); p_idx.append(pos); t_idx.append(tok); owner.append(k)
    dev = logits.device
    sel = logits[torch.tensor(b_idx, device=dev), torch.tensor(p_idx, device=dev)]  # [n_tok, vocab]
    lp = sel.float().log_softmax(-1).gather(-1, torch.tensor(t_idx, device=dev)[:, None])[:, 0]
    owner_t = torch.tensor(owner, device=dev)
    total = torch.zeros(len(items), device=dev, dtype=lp.dtype).index_add(0, owner_t, lp)
    count = torch.zeros(len(items), device=dev, dtype=lp.dtype).index_add(0, owner_t, torch.ones_like(lp))
    return total / count


# --------------------------------------------------------------------------------------------
# Prefix trees packed into rows (tree attention)
# --------------------------------------------------------------------------------------------

@dataclass
class PackedRow:
    """One row of a packed prefix tree: tokens, their depths (positions) and parents in the row."""

    tokens: list[int]
    depth: list[int]
    parent: list[int]  # index of the parent token in this row, -1 for a root token
    nodes: list[int] = field(default_factory=list)  # the tree node of each token (PrefixTree rows)

    def mask(self, dtype: torch.dtype, device: Any) -> Float[Tensor, "1 1 pos pos"]:
        """Additive attention mask: 0 where a token may attend (itself, its ancestors), else -inf."""
        n = len(self.tokens)
        allowed = np.zeros((n, n), dtype=bool)
        for i, p in enumerate(self.parent):
            if p >= 0:
                allowed[i] = allowed[p]
            allowed[i, i] = True
        out = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype)
        out[torch.from_numpy(allowed)] = 0.0
        return out[None, None].to(device)


class PrefixTree:
    """Distinct prefixes of token sequences, packed into rows of about ``row_tokens`` tokens.

    ``node(s, d)`` is the node of sequence ``s`` at depth ``d``; ``home[node]`` the (row, index)
    where that node's hidden state is read. A subtree that does not fit a row is split among its
    children, each copy carrying the path from the root (a few tokens repeated)."""

    def __init__(self, seqs: Sequence[Sequence[int]], row_tokens: int = 256):
        self.token: list[int] = []
        self.parent: list[int] = []
        self.depth: list[int] = []
        self.children: list[list[int]] = []
        self.roots: list[int] = []
        index: dict[tuple[int, int], int] = {}
        self.paths: list[list[int]] = []
        for s in seqs:
            node, path = -1, []
            for t in s:
                key = (node, int(t))
                if key not in index:
                    index[key] = len(self.token)
                    self.token.append(int(t)); self.parent.append(node)
                    self.depth.append(0 if node < 0 else self.depth[node] + 1)
                    self.children.append([])
                    (self.roots if node < 0 else self.children[node]).append(index[key])
                node = index[key]
                path.append(node)
            self.paths.append(path)
        size = [1] * len(self.token)
        for v in range(len(self.token) - 1, -1, -1):  # children are created after their parents
            if self.parent[v] >= 0:
                size[self.parent[v]] += size[v]
        self.rows: list[PackedRow] = []
        self.home: dict[int, tuple[int, int]] = {}
        current = PackedRow([], [], [])
        for unit in self._units(size, row_tokens):
            if current.tokens and len(current.tokens) + len(unit) > row_tokens:
                self._close(current)
                current = PackedRow([], [], [])
            offset = len(current.tokens)
            where: dict[int, int] = {}
            for v in unit:
                where[v] = offset + len(where)
                p = self.parent[v]
                current.tokens.append(self.token[v]); current.depth.append(self.depth[v]); current.nodes.append(v)
                current.parent.append(where[p] if p >= 0 else -1)
                self.home.setdefault(v, (len(self.rows), where[v]))
        if current.tokens:
            self._close(current)

    def _close(self, row: PackedRow) -> None:
        self.rows.append(row)

    def _units(self, size: list[int], budget: int) -> Iterator[list[int]]:
        """Node lists (ancestors first, then a subtree in depth-first order), each about ``budget``."""
        stack: list[tuple[int, list[int]]] = [(r, []) for r in reversed(self.roots)]
        while stack:
            v, above = stack.pop()
            if len(above) + size[v] <= budget or not self.children[v]:
                nodes, todo = [], [v]
                while todo:
                    u = todo.pop()
                    nodes.append(u)
                    todo.extend(reversed(self.children[u]))
                yield above + nodes
            else:
                stack.extend((c, above + [v]) for c in reversed(self.children[v]))

    def node(self, seq: int, depth: int) -> int:
        return self.paths[seq][depth]


_PACKING_OK: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # per model object, held weakly


def forward_packed(model: TransformerBridge, row: PackedRow, keep: Sequence[int], hooks: HookList
                    ) -> Float[Tensor, "keep d_vocab"]:
    """Logits at row positions ``keep`` of one packed row (tree attention); ``hooks`` are active."""
    dev = model_device(model)
    dtype = next(model.parameters()).dtype
    tokens = torch.tensor([row.tokens], device=dev)
    pos = torch.tensor([row.depth], device=dev)
    keep_t = torch.tensor(list(keep), device=dev)
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens, attention_mask=row.mask(dtype, dev), position_ids=pos, logits_to_keep=keep_t)
    if logits.shape[1] != len(keep):  # an implementation without logits_to_keep returns every position
        logits = logits[:, keep_t]
    return logits[0]


def forward_packed_rows(model: TransformerBridge, rows: Sequence[PackedRow], keeps: Sequence[Sequence[int]],
                        hooks: HookList,
                        *, width: int = 0, marked: Sequence[Sequence[int]] | None = None,
                        at_positions: Callable[[Tensor], HookList] | None = None,
                        ) -> list[Float[Tensor, "keep d_vocab"]]:
    """:func:`forward_packed` for several packed rows run as one batch: the logits at ``keeps[b]`` of
    each row ``b``. Each row keeps its own tree attention; every row is padded to ``width`` tokens (at
    least its longest row) with positions that attend to themselves only, which no real position
    sees. On a CPU this is much faster than one row at a time: the weights are read, and cast to the
    compute precision, once per forward, and batches of one fixed shape reuse the bf16 kernels that
    oneDNN builds once per shape (building them takes longer than running them). The final
    normalised states are read with a hook on ``ln_final.hook_out`` and only the kept positions go
    through the unembedding. ``marked[b]`` (positions of row ``b``) and ``at_positions`` (a
    :data:`HookFactory`'s ``at_positions``): hooks that act on the marked positions only, added to
    ``hooks`` (Chapter 2's last-token steering, each prompt's last token being one tree node)."""
    if len(rows) != len(keeps) or not rows:
        raise ValueError(f"forward_packed_rows: {len(rows)} rows but {len(keeps)} keep lists.")
    if (marked is None) != (at_positions is None):
        raise ValueError("forward_packed_rows: pass both marked and at_positions, or neither.")

    def with_marks(n_pos: int, batch: Sequence[int]) -> HookList:
        if at_positions is None:
            return list(hooks)
        assert marked is not None  # given with at_positions (checked above)
        mask = torch.zeros((len(batch), n_pos), dtype=torch.bool)
        for b, r in enumerate(batch):
            mask[b, list(marked[r])] = True
        return list(hooks) + list(at_positions(mask.to(model_device(model))))

    if len(rows) == 1 or "ln_final.hook_out" not in getattr(model, "hook_dict", {}):
        return [forward_packed(model, r, k, with_marks(len(r.tokens), [b]))
                for b, (r, k) in enumerate(zip(rows, keeps))]
    dev = model_device(model)
    dtype = next(model.parameters()).dtype
    n = max(width, max(len(r.tokens) for r in rows))
    tokens = torch.full((len(rows), n), pad_id(model), dtype=torch.long)
    pos = torch.zeros((len(rows), n), dtype=torch.long)
    mask = torch.full((len(rows), 1, n, n), torch.finfo(dtype).min, dtype=dtype)
    for b, r in enumerate(rows):
        m = len(r.tokens)
        tokens[b, :m] = torch.tensor(r.tokens)
        pos[b, :m] = torch.tensor(r.depth)
        mask[b, 0, :m, :m] = r.mask(dtype, "cpu")[0, 0]
        pad = torch.arange(m, n)
        mask[b, 0, pad, pad] = 0.0
    captured: list[Tensor] = []

    def grab(x: Tensor, hook: Any = None) -> Tensor:
        captured.append(x)
        return x

    with model.hooks(fwd_hooks=with_marks(n, range(len(rows))) + [("ln_final.hook_out", grab)]):
        model(tokens.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), logits_to_keep=1)
    b_idx = torch.tensor([b for b, k in enumerate(keeps) for _ in k], device=dev)
    p_idx = torch.tensor([p for k in keeps for p in k], device=dev)
    logits = model.unembed(captured[-1][b_idx, p_idx][None])[0]
    return list(torch.split(logits, [len(k) for k in keeps]))


ROWS_PER_BATCH = 8
"""Packed rows per forward pass for callers that batch them (``score_candidates(..., rows_per_batch=
ROWS_PER_BATCH)``; see :func:`forward_packed_rows`). The default of :func:`score_candidates` stays 1
(one row per forward, the chapters' stored results); in bfloat16 the two round differently."""


def packing_supported(model: TransformerBridge) -> bool:
    """Does this model honour tree attention (4-D mask, explicit positions)? Checked once per model
    by scoring two prompts that share a prefix both ways, in float32 (bf16's rounding differs between
    the two layouts); the answer is cached per model object (held weakly: it goes with the model)."""
    if model not in _PACKING_OK:
        try:
            a = encode_prompt(model, "The capital of France is the city of")
            b = encode_prompt(model, "The capital of Spain is the city of")
            tree = PrefixTree([a, b], row_tokens=64)
            (row_a, ia), (row_b, ib) = tree.home[tree.node(0, len(a) - 1)], tree.home[tree.node(1, len(b) - 1)]
            with torch.no_grad(), full_precision(model):  # a property of the model, not of its precision
                packed = [forward_packed(model, tree.rows[r], [i], [])[0] for r, i in ((row_a, ia), (row_b, ib))]
                plain = [model(torch.tensor([s], device=model_device(model)))[0, -1] for s in (a, b)]
            ok = all(torch.allclose(p.float().log_softmax(-1), q.float().log_softmax(-1), atol=1e-3)
                     for p, q in zip(packed, plain))
        except (TypeError, ValueError, RuntimeError, NotImplementedError):
            ok = False
        _PACKING_OK[model] = ok
    return _PACKING_OK[model]


# --------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------

@overload
def score_candidates(
    model: TransformerBridge, prompts: Sequence[str], candidates: Sequence[Sequence[str]], *, batch_size: int = ...,
    fwd_hooks: HookList | HookFactory | None = ..., row_tokens: int = ..., packed: bool | None = ...,
    rows_per_batch: int = ..., top1: Literal[False] = ...,
) -> list[np.ndarray]: ...
@overload
def score_candidates(
    model: TransformerBridge, prompts: Sequence[str], candidates: Sequence[Sequence[str]], *, batch_size: int = ...,
    fwd_hooks: HookList | HookFactory | None = ..., row_tokens: int = ..., packed: bool | None = ...,
    rows_per_batch: int = ..., top1: Literal[True],
) -> tuple[list[np.ndarray], list[np.ndarray]]: ...
@overload
def score_candidates(
    model: TransformerBridge, prompts: Sequence[str], candidates: Sequence[Sequence[str]], *, batch_size: int = ...,
    fwd_hooks: HookList | HookFactory | None = ..., row_tokens: int = ..., packed: bool | None = ...,
    rows_per_batch: int = ..., top1: bool,
) -> list[np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]: ...
def score_candidates(
    model: TransformerBridge,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    fwd_hooks: HookList | HookFactory | None = None,
    row_tokens: int = 256,
    packed: bool | None = None,
    rows_per_batch: int = 1,
    top1: bool = False,
) -> list[np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
    """Mean per-token NLL of ``" " + c`` after each prompt, for each prompt's candidate list.

    Returns one array per prompt, aligned with ``candidates[i]``; lower is more likely. A plain
    hook list is active at every position. A :data:`HookFactory` (hooks at the last prompt token
    of each row) takes the unpacked path (one prompt per row), unless it has ``at_positions``: then
    the prefix trees are packed and its hooks act on the nodes that end a prompt (unpacked after all
    when such a node is also an inner token of another prompt or of a candidate). ``packed=None`` packs
    prefix trees when :func:`packing_supported`; ``False`` forces the unpacked path (each prompt
    once, multi-token candidates continued from its key/value cache, ``batch_size`` prompts).
    ``rows_per_batch``: packed rows of about ``row_tokens`` tokens run together in one forward pass,
    each padded to ``row_tokens`` (:func:`forward_packed_rows`; :data:`ROWS_PER_BATCH` is a good
    value on a CPU). Equal in exact arithmetic; in bfloat16 the scores round differently.
    ``top1=True`` also returns, per candidate, the fraction of its tokens that are the model's top-1 prediction
    under teacher forcing (EasyEdit's token accuracy, the exact-match portability of Chapter 4): ``(nll, top1)``.
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists; give one list per prompt.")
    enc = TokenCache(model)
    pids = [enc.prompt(p) for p in prompts]
    cids = [[enc.answer(c) for c in cands] for cands in candidates]
    with fused_attention.enabled(model):  # every score of the book: one fused kernel per attention layer
        out = _score(model, pids, cids, batch_size=batch_size, fwd_hooks=fwd_hooks, row_tokens=row_tokens,
                     packed=packed, rows_per_batch=rows_per_batch, top1=top1)
    return out if top1 else out[0]


def _score(model: TransformerBridge, pids: list[list[int]], cids: list[list[list[int]]], *, batch_size: int,
           fwd_hooks: HookList | HookFactory | None, row_tokens: int, packed: bool | None, rows_per_batch: int,
           top1: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`score_candidates` on encoded prompts and candidates: picks the packed or the unpacked path."""
    at_positions = getattr(fwd_hooks, "at_positions", None) if callable(fwd_hooks) else None
    if (callable(fwd_hooks) and at_positions is None) or packed is False or (
            packed is None and not packing_supported(model)):
        out = _score_unpacked(model, pids, cids, batch_size=batch_size, fwd_hooks=fwd_hooks)
    elif at_positions is not None:
        at_ends = _score_packed(model, pids, cids, hooks=[], row_tokens=row_tokens, rows_per_batch=rows_per_batch,
                                at_last_prompt_token=at_positions, top1=top1)
        # None: a prompt's last token is also another sequence's inner token: only the unpacked path keeps them apart
        out = (at_ends if at_ends is not None
               else _score_unpacked(model, pids, cids, batch_size=batch_size, fwd_hooks=fwd_hooks))
    else:
        hooks = cast(HookList, fwd_hooks or [])  # not callable here: a hook list or None
        everywhere = _score_packed(model, pids, cids, hooks=list(hooks), row_tokens=row_tokens,
                                   rows_per_batch=rows_per_batch, top1=top1)
        assert everywhere is not None  # None only with at_last_prompt_token
        out = everywhere
    return out


@overload
def score_continuations(
    model: TransformerBridge, pairs: Sequence[tuple[str, str]], *, fwd_hooks: HookList | HookFactory | None = ...,
    packed: bool | None = ..., rows_per_batch: int = ..., top1: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def score_continuations(
    model: TransformerBridge, pairs: Sequence[tuple[str, str]], *, fwd_hooks: HookList | HookFactory | None = ...,
    packed: bool | None = ..., rows_per_batch: int = ..., top1: Literal[True],
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def score_continuations(
    model: TransformerBridge, pairs: Sequence[tuple[str, str]], *, fwd_hooks: HookList | HookFactory | None = ...,
    packed: bool | None = ..., rows_per_batch: int = ..., top1: bool,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...
def score_continuations(
    model: TransformerBridge, pairs: Sequence[tuple[str, str]], *, fwd_hooks: HookList | HookFactory | None = None,
    packed: bool | None = None, rows_per_batch: int = 1, top1: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Mean per-token NLL of each ``(prompt, continuation)`` pair: :func:`score_candidates` with one
    candidate per prompt, the pairs sharing every prefix they can (``rows_per_batch`` and ``top1`` as there:
    ``top1=True`` returns ``(nll, top-1 token accuracy)``)."""
    by_prompt: dict[str, list[int]] = {}
    for i, (p, _) in enumerate(pairs):
        by_prompt.setdefault(p, []).append(i)
    prompts = list(by_prompt)
    conts = [[pairs[i][1] for i in by_prompt[p]] for p in prompts]
    scores, hits = score_candidates(model, prompts, conts, fwd_hooks=fwd_hooks, packed=packed,
                                    rows_per_batch=rows_per_batch, top1=True)
    out, acc = np.empty(len(pairs)), np.empty(len(pairs))
    for p, s, h in zip(prompts, scores, hits):
        out[by_prompt[p]] = s
        acc[by_prompt[p]] = h
    return (out, acc) if top1 else out


@dataclass
class _Layout:
    """Where every scored token of one ``(prompts, candidates)`` set is read in its packed prefix tree: the
    same for every model and every hook, so it is built once per set (:func:`_layout`) and reused when a
    chapter scores the same queries again under another steering or edit."""

    owners: list[tuple[int, int]]  # sequence s -> (prompt i, candidate j)
    tree: PrefixTree
    reads: list[list[tuple[int, int]]]  # per sequence: (node, target) of each scored token
    order: list[int]  # the rows that hold a read position, in order
    keeps: dict[int, list[int]]  # row -> its read positions, sorted
    gather: dict[int, tuple[list[int], list[int], list[int]]]  # row -> (index in keeps, target, node) per read
    marked: dict[int, list[int]] | None = None  # row -> positions that end a prompt (when asked for)
    separable: bool | None = None  # no prompt ends inside another sequence (when asked for)


_LAYOUTS: collections.OrderedDict[tuple, _Layout] = collections.OrderedDict()  # the last few sets scored
_LAYOUTS_KEPT = 8


def _layout(pids: list[list[int]], cids: list[list[list[int]]], row_tokens: int) -> _Layout:
    """The :class:`_Layout` of these prompts and candidates, from the cache when the same set was scored lately."""
    key = (row_tokens, tuple(map(tuple, pids)), tuple(tuple(map(tuple, cs)) for cs in cids))
    if key in _LAYOUTS:
        _LAYOUTS.move_to_end(key)
        return _LAYOUTS[key]
    seqs, owners = [], []  # one sequence per (prompt, distinct candidate row)
    for i, (p, cands) in enumerate(zip(pids, cids)):
        for j, c in enumerate(cands):
            seqs.append(p + c[:-1]); owners.append((i, j))
    tree = PrefixTree(seqs, row_tokens=row_tokens)
    wanted: dict[int, dict[int, list[tuple[int, int]]]] = {}  # row -> index -> [(node, target)]
    reads: list[list[tuple[int, int]]] = []  # per sequence: (node, target) of each scored token
    for s, (i, j) in enumerate(owners):
        p, c = pids[i], cids[i][j]
        rd = []
        for k, target in enumerate(c):
            v = tree.node(s, len(p) - 1 + k)
            r, idx = tree.home[v]
            wanted.setdefault(r, {}).setdefault(idx, []).append((v, target))
            rd.append((v, target))
        reads.append(rd)
    order = sorted(wanted)
    keeps = {r: sorted(wanted[r]) for r in order}
    gather = {}
    for r in order:
        ks, ts, vs = [], [], []
        for k, idx in enumerate(keeps[r]):
            at = wanted[r][idx]
            for t in sorted({t for _, t in at}):
                ks.append(k); ts.append(t); vs.append(at[0][0])
        gather[r] = (ks, ts, vs)
    layout = _Layout(owners=owners, tree=tree, reads=reads, order=order, keeps=keeps, gather=gather)
    _LAYOUTS[key] = layout
    if len(_LAYOUTS) > _LAYOUTS_KEPT:
        _LAYOUTS.popitem(last=False)
    return layout


def _mark_prompt_ends(layout: _Layout, pids: list[list[int]]) -> None:
    """Fill ``layout.separable`` and ``layout.marked``: the nodes that end a prompt, and where they sit in the rows."""
    tree, owners = layout.tree, layout.owners
    ends = {tree.node(s, len(pids[i]) - 1) for s, (i, _) in enumerate(owners)}
    layout.separable = not any(v in ends for s, (i, _) in enumerate(owners)
                               for d, v in enumerate(tree.paths[s]) if d != len(pids[i]) - 1)
    layout.marked = {r: [k for k, v in enumerate(row.nodes) if v in ends] for r, row in enumerate(tree.rows)}


def _score_packed(model: TransformerBridge, pids: list[list[int]], cids: list[list[list[int]]], *, hooks: HookList,
                  row_tokens: int, rows_per_batch: int = 1,
                  at_last_prompt_token: Callable[[Tensor], HookList] | None = None, top1: bool = True,
                  ) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    layout = _layout(pids, cids, row_tokens)
    tree, owners, reads, order = layout.tree, layout.owners, layout.reads, layout.order
    marked: dict[int, list[int]] | None = None
    if at_last_prompt_token is not None:
        if layout.separable is None:
            _mark_prompt_ends(layout, pids)
        if not layout.separable:
            return None  # one prompt's end is inside another sequence: not separable in a tree
        marked = layout.marked
    logp: dict[tuple[int, int], float] = {}
    best: dict[int, int] = {}  # node -> the model's top-1 next token there
    with torch.no_grad():
        for start in range(0, len(order), max(1, rows_per_batch)):
            chunk = order[start : start + max(1, rows_per_batch)]
            keeps = [layout.keeps[r] for r in chunk]
            outs = forward_packed_rows(
                model, [tree.rows[r] for r in chunk], keeps, hooks, width=row_tokens,
                marked=None if marked is None else [marked[r] for r in chunk], at_positions=at_last_prompt_token)
            for r, logits in zip(chunk, outs):
                lp = logits.float().log_softmax(-1)
                ks, ts, vs = layout.gather[r]  # every read of the row, gathered at once
                vals = lp[torch.tensor(ks, device=lp.device), torch.tensor(ts, device=lp.device)].tolist()
                logp.update(zip(zip(vs, ts), vals))
                if top1:  # a pass over the vocabulary: only when asked
                    top = lp.argmax(-1).tolist()
                    best.update((v, top[k]) for k, v in zip(ks, vs))
    out = [np.zeros(len(c)) for c in cids]
    hits = [np.zeros(len(c)) for c in cids]
    for s, (i, j) in enumerate(owners):
        out[i][j] = -sum(logp[key] for key in reads[s]) / len(reads[s])
        if top1:
            hits[i][j] = sum(best[v] == t for v, t in reads[s]) / len(reads[s])
    return out, (hits if top1 else [])


def _score_unpacked(model: TransformerBridge, pids: list[list[int]], cids: list[list[list[int]]], *, batch_size: int,
                    fwd_hooks: HookList | HookFactory | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each prompt once (equal lengths batched: no padding); candidates from its key/value cache. Returns the mean
    NLLs and the top-1 token accuracies."""
    total = [np.zeros(len(c)) for c in cids]
    hits = [np.zeros(len(c)) for c in cids]
    dev = model_device(model)
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(pids):
        by_len.setdefault(len(ids), []).append(i)
    plain = [] if callable(fwd_hooks) else list(fwd_hooks or [])
    with torch.no_grad():
        for plen, members in sorted(by_len.items()):
            for s in range(0, len(members), batch_size):
                chunk = members[s : s + batch_size]
                tokens = torch.tensor([pids[i] for i in chunk], device=dev)
                hooks = fwd_hooks(torch.full((len(chunk),), plen - 1, device=dev)) if callable(fwd_hooks) else plain
                with model.hooks(fwd_hooks=hooks):
                    logits, cache = model(tokens, return_type="logits_and_cache")
                first = logits[:, -1].float().log_softmax(-1).cpu()
                first_top = first.argmax(-1).tolist()
                conts: dict[int, list[tuple[int, int, int]]] = {}  # n tokens -> (row in chunk, prompt, cand)
                for b, i in enumerate(chunk):
                    for j, ids in enumerate(cids[i]):
                        total[i][j] = float(first[b, ids[0]])
                        hits[i][j] = float(first_top[b] == ids[0])
                        if len(ids) > 1:
                            conts.setdefault(len(ids), []).append((b, i, j))
                for n, items in sorted(conts.items()):
                    for c0 in range(0, len(items), 4 * batch_size):
                        part = items[c0 : c0 + 4 * batch_size]
                        sub = copy.deepcopy(cache)
                        sub.batch_select_indices(torch.tensor([b for b, _, _ in part], device=dev))
                        rows = torch.tensor([cids[i][j][:-1] for _, i, j in part], device=dev)
                        targets = torch.tensor([cids[i][j][1:] for _, i, j in part], device=dev)
                        with model.hooks(fwd_hooks=plain):
                            lg = model(rows, past_key_values=sub)
                        lp = lg.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0].sum(-1).cpu()
                        top = (lg.argmax(-1) == targets).sum(-1).cpu()
                        for (_, i, j), v, h in zip(part, lp.tolist(), top.tolist()):
                            total[i][j] += v
                            hits[i][j] += h
    lengths = [np.array([len(ids) for ids in c]) for c in cids]
    return [-t / n for t, n in zip(total, lengths)], [h / n for h, n in zip(hits, lengths)]
