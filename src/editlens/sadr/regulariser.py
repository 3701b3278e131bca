"""SADR's attention-drift regulariser, added to ROME's v* loss through :class:`editlens.rome.values.LossTerm`.

Taught in: Chapter 5 (SADR). As the authors' ROME ``compute_v`` computes it (the method notes, section 4;
github.com/PinzhengWang322/Reveal_Attention_Drift, ``easyeditor/models/rome/compute_v.py``):

    L_SADR = gamma * sum over layers l of
             (1 / n_rewrite) * sum over rewrite rows b, heads h of M[b,l,h] * KL(A0_{l,h}[b,i,:] || A_{l,h}[b,i,:])

- A: this step's post-softmax attention pattern ``blocks.{l}.attn.hook_pattern`` [batch, head, query, key], with
  gradients; A0 the same at delta = 0 (``ctx.initial``, the unedited weights), detached.
- i: the query row, the last token of (prefix + rewrite prompt) of each rewrite row, before the target tokens
  (``ctx.batch.last_prompt_idx``); the whole key row is compared (real positions only). The KL prompt
  "{} is a" is excluded: only ``ctx.batch.rewrite_rows``.
- KL(A0 || A) = sum_k (A0 + eps) log((A0 + eps) / (A + eps)), eps = 1e-8 added to both (their code).
- The selective mask ("hinge"), per row, layer and head, recomputed every step, without gradient:
  M[b,l,h] = 1 iff A_{l,h}[b,i,s] > max over heads h' of A0_{l,h'}[b,i,s], s the subject's last token of that row:
  only heads that now look at the subject more than any head did before are pulled back.
- Reduction: sum over keys and heads, divide by the number of rewrite prompts, sum over layers; times gamma.
- gamma = configured weight * 1e-4 (their code multiplies by 1e-4): ROME on GPT-J uses weight 100, so gamma 0.01.
- Their first iteration's attention loss is a literal 0 (A0 is being recorded); so is this term's at step 0.

Layers: every layer by default, but layers at or below the edit layer contribute exactly 0 at the query row (delta
enters at the edit layer's MLP output, after that layer's attention, so their patterns are A0 and both the KL and
the mask vanish). They are therefore not read (no hooks), unless ``read_unchanged=True``; tests check that both
give the same value. GQA: SmolLM2 has 9 query heads sharing 3 key/value heads; ``hook_pattern`` is per query head
(after the key/value heads are repeated), so the mask and the KL are per query head, as in the authors' code.
``gamma=0`` is skipped by ``compute_v``: ROME bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from editlens.rome.values import LossTerm, VContext

# The authors' configured attention weights (their hparams ``attn_W_loss_weight``; methods.md section 4). Their code
# multiplies the configured weight by WEIGHT_SCALE, so gamma = weight * WEIGHT_SCALE.
WEIGHT_SCALE = 1e-4
AUTHORS_WEIGHT = {"rome": 100.0, "memit": 50.0, "pmet": 800.0}
AUTHORS_STEPS = {"rome": 80, "memit": 20, "pmet": 40}  # v* steps they ran SADR with (ROME's baseline keeps 20)
ROME_STEPS = 20
EPS = 1e-8  # added to both patterns (their code; 1e-7 in float16)


def gamma_from_weight(weight: float) -> float:
    """gamma as the authors' code computes it from a configured weight: ``weight * 1e-4``."""
    return float(weight) * WEIGHT_SCALE


DEFAULT_GAMMA = gamma_from_weight(AUTHORS_WEIGHT["rome"])  # 0.01: ROME on GPT-J in the authors' configuration


def pattern_hook(layer: int) -> str:
    """The post-softmax attention pattern of a layer, [batch, head, query, key] (one head per query head)."""
    return f"blocks.{layer}.attn.hook_pattern"


def selective_mask(rows_now: Float[Tensor, "row head key"], rows_before: Float[Tensor, "row head key"],
                   subject: Int[Tensor, " row"]) -> Bool[Tensor, "row head"]:
    """M[b,h] = A_h[b,s_b] > max over h' of A0_{h'}[b,s_b]: the heads that now attend to the subject's last token
    more than any head did before (no gradient flows through it)."""
    idx = subject[:, None, None].expand(-1, rows_now.shape[1], 1)
    now = rows_now.detach().gather(-1, idx).squeeze(-1)  # [row, head]
    before = rows_before.detach().gather(-1, idx).squeeze(-1).amax(-1, keepdim=True)  # [row, 1]
    return now > before


def row_kl(rows_before: Float[Tensor, "row head key"], rows_now: Float[Tensor, "row head key"],
           keys: Bool[Tensor, "row key"], eps: float = EPS) -> Float[Tensor, "row head"]:
    """KL(A0 || A) over the keys of each row and head, eps added to both; keys outside ``keys`` count 0."""
    p, q = rows_before.float() + eps, rows_now.float() + eps
    return (p * (p / q).log() * keys[:, None, :]).sum(-1)


def drift_loss_per_layer(now: Sequence[Float[Tensor, "row head key"]], before: Sequence[Float[Tensor, "row head key"]],
                         subject: Int[Tensor, " row"], keys: Bool[Tensor, "row key"], *, hinge: bool = True,
                         eps: float = EPS) -> Float[Tensor, " layer"]:
    """Per layer: sum over rows and heads of M * KL(A0 || A), divided by the number of rows (unweighted).

    ``now[l]``/``before[l]``: the query rows (one per rewrite row) of layer l's pattern, [row, head, key]. The
    layers are computed together (stacked: one set of operations, not one per layer)."""
    a, a0 = torch.stack(list(now)), torch.stack(list(before))  # [layer, row, head, key]
    n_layers, n_rows, n_heads = a.shape[:3]
    flat, flat0 = a.flatten(0, 1), a0.flatten(0, 1)
    kl = row_kl(flat0, flat, keys.repeat(n_layers, 1), eps)
    if hinge:
        kl = kl * selective_mask(flat, flat0, subject.repeat(n_layers))
    return kl.view(n_layers, n_rows, n_heads).sum((1, 2)) / n_rows


class AttentionDriftTerm(LossTerm):
    """gamma * SADR's attention-drift KL at the last prompt token of the rewrite rows (Chapter 5; module docstring).

    ``layers=None``: every layer (those at or below the edit layer contribute 0 and are not read unless
    ``read_unchanged``). ``hinge=False`` drops the selective mask (every head counts; the authors' ``hinge`` flag)."""

    name = "sadr"

    def __init__(self, gamma: float = DEFAULT_GAMMA, layers: Sequence[int] | None = None, *, hinge: bool = True,
                 read_unchanged: bool = False, eps: float = EPS):
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}. Fix: pass gamma >= 0 (0 is plain ROME; the authors' "
                             f"ROME setting is {DEFAULT_GAMMA}).")
        self.weight = float(gamma)
        self.requested_layers = None if layers is None else sorted({int(layer) for layer in layers})
        self.hinge, self.read_unchanged, self.eps = hinge, read_unchanged, eps
        self.layers: list[int] = []
        self.hook_names: list[str] = []

    @property
    def gamma(self) -> float:
        return self.weight

    def resolve(self, edit_layer: int, n_layers: int) -> list[int]:
        """The layers read for an edit at ``edit_layer`` (sets ``hook_names``)."""
        layers = list(range(n_layers)) if self.requested_layers is None else self.requested_layers
        bad = [layer for layer in layers if not 0 <= layer < n_layers]
        if bad:
            raise ValueError(f"SADR layers {bad} are outside the model's layers 0..{n_layers - 1}. "
                             "Fix: pass layer indices in range, or layers=None for all of them.")
        self.layers = layers if self.read_unchanged else [layer for layer in layers if layer > edit_layer]
        self.hook_names = [pattern_hook(layer) for layer in self.layers]
        return self.layers

    def extra_rows(self, ctx: VContext) -> list:
        # compute_v calls extra_rows before it reads hook_names: resolve the layers of this edit here
        self.resolve(ctx.layer, ctx.model.cfg.n_layers)
        return []

    def positions(self, ctx: VContext) -> tuple[Tensor, Tensor]:
        """The query row i of each rewrite row: the only positions the term reads (compute_v gathers them)."""
        b = ctx.batch
        rows = torch.arange(b.n_rewrite, device=b.tokens.device)
        return rows, b.last_prompt_idx[rows]

    def query_rows(self, ctx: VContext, *, initial: bool = False) -> list[Float[Tensor, "row head key"]]:
        """Each read layer's pattern at the query row i of each rewrite row, [row, head, key] (this step or A0)."""
        return [ctx.at(name, initial=initial) for name in self.hook_names]

    def key_mask(self, ctx: VContext) -> Bool[Tensor, "row key"]:
        """Real keys of each rewrite row's query row: not padding, not after the query (causal)."""
        b = ctx.batch
        rows = torch.arange(b.n_rewrite, device=b.tokens.device)
        pos = torch.arange(b.tokens.shape[1], device=b.tokens.device)
        return b.attention_mask[rows] & (pos[None, :] <= b.last_prompt_idx[rows][:, None])

    def per_layer(self, ctx: VContext) -> Float[Tensor, " layer"]:
        """Unweighted contribution of each read layer (``self.layers``)."""
        if not self.hook_names:
            return torch.zeros(0, device=ctx.delta.device)
        b = ctx.batch
        return drift_loss_per_layer(self.query_rows(ctx), self.query_rows(ctx, initial=True),
                                    b.subject_idx[: b.n_rewrite], self.key_mask(ctx), hinge=self.hinge, eps=self.eps)

    def __call__(self, ctx: VContext) -> Float[Tensor, ""]:
        if ctx.step == 0 or not self.hook_names:  # delta = 0: A is A0 (the authors' first iteration: a literal 0)
            return ctx.delta.new_zeros(()).float()
        return self.weight * self.per_layer(ctx).sum()
