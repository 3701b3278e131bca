"""v*: the MLP output that makes the model say the new object, found by gradient descent.

Taught in: Chapter 3 (ROME, "the value"). Chapter 5 (STEAM) and Chapter 6 (SADR) add loss terms
to the same optimisation through :class:`LossTerm`, without copying this code.

One vector ``delta`` is added to the MLP output of the edit layer at the subject's last token
of every rewrite prompt (the prompt inside each context template). The loss is

    mean NLL of target_new (teacher-forced over its tokens)
    + kl_factor * KL(p_edited || p_unedited) of the next token after "{subject} is a"
    + v_weight_decay * ||delta|| / ||v0||^2
    + sum of the extra terms,

minimised with Adam, stopping early once the loss (or, with ``v_early_stop_on="nll"``, the NLL) is
below ``v_loss_early_stop``; ``delta`` is projected back into the ball of radius clamp_norm_factor * ||v0||.
Then v* = v0 + delta, v0 being the unedited MLP output on the bare prompt.

Writing a loss term (Chapters 5-6)::

    class AttentionKL(LossTerm):
        name = "attn_kl"
        def __init__(self, layers): self.hook_names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
        def __call__(self, ctx):
            ...  # ctx.acts[name]: this step's activations WITH gradients;
                 # ctx.initial[name]: the same at delta = 0, detached; ctx.batch: rows and positions
            return loss  # a scalar tensor, already weighted

The term declares the hooks it needs; every step it receives their activations of the edited
run with gradients flowing to ``delta``. A term that returns ``0 * x`` leaves ROME unchanged.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from editlens.rome.hparams import ROMEHyperParams
from editlens.rome.keys import context_templates, encode, fill_template, pad_batch, subject_last_index
from editlens.rome.requests import RewriteRequest, as_request, with_leading_space


@dataclass
class VBatch:
    """The rows of one v* forward pass: the rewrite prompts (each + target tokens but the last), then the KL prompts."""

    tokens: Int[Tensor, "batch pos"]
    subject_idx: Int[Tensor, "batch"]  # subject's last token, where delta is added
    last_prompt_idx: Int[Tensor, "batch"]  # last prompt token (predicts the first target token)
    target_ids: Int[Tensor, "n_target"]
    n_rewrite: int
    n_kl: int

    @property
    def rewrite_rows(self) -> slice:
        return slice(0, self.n_rewrite)

    @property
    def kl_rows(self) -> slice:
        return slice(self.n_rewrite, self.n_rewrite + self.n_kl)


@dataclass
class VContext:
    """What a :class:`LossTerm` sees at each step."""

    model: Any
    request: RewriteRequest
    layer: int
    hparams: ROMEHyperParams
    batch: VBatch
    delta: Float[Tensor, "d_model"]
    step: int = 0
    acts: dict[str, Tensor] = field(default_factory=dict)  # this step, with gradients
    initial: dict[str, Tensor] = field(default_factory=dict)  # at delta = 0 (step 0), detached
    logits: Tensor | None = None  # [batch, pos, d_vocab] of this step's edited run


class LossTerm:
    """An extra term of the v* loss. Subclass it: set ``name`` and ``hook_names``, implement ``__call__``."""

    name: str = "extra"
    hook_names: Sequence[str] = ()

    def prepare(self, ctx: VContext) -> None:
        """Called once before the first step (``ctx.acts`` still empty): compute anchors, masks, ..."""

    def __call__(self, ctx: VContext) -> Float[Tensor, ""]:
        raise NotImplementedError


@dataclass
class VResult:
    """Result of :func:`compute_v`."""

    v_star: Float[Tensor, "d_model"]
    v0: Float[Tensor, "d_model"]
    delta: Float[Tensor, "d_model"]
    history: list[dict[str, float]]

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients inside (faster backward; only ``delta`` learns); restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def build_v_batch(model: Any, request: RewriteRequest, hparams: ROMEHyperParams,
                  templates: Sequence[str] | None = None) -> VBatch:
    """Token rows for the v* optimisation (rewrite prompts in every context template, then ``kl_prompt``)."""
    if templates is None:
        templates = context_templates(model, hparams)
        if hparams.v_num_prefixes is not None:
            templates = templates[: 1 + hparams.v_num_prefixes]
    target_ids = encode(model, with_leading_space(request.target_new), bos=False)
    seqs, sub, last = [], [], []
    for t in templates:
        ids, i = subject_last_index(model, fill_template(t, request.prompt), request.subject)
        seqs.append(ids + target_ids[:-1])
        sub.append(i)
        last.append(len(ids) - 1)
    n_rewrite = len(seqs)
    kl_prompts = [hparams.kl_prompt] if hparams.kl_prompt else []
    for p in kl_prompts:
        ids, i = subject_last_index(model, p, request.subject)
        seqs.append(ids)
        sub.append(i)
        last.append(len(ids) - 1)
    tokens, _ = pad_batch(model, seqs)
    dev = tokens.device
    return VBatch(tokens=tokens, subject_idx=torch.tensor(sub, device=dev), last_prompt_idx=torch.tensor(last, device=dev),
                  target_ids=torch.tensor(target_ids, device=dev), n_rewrite=n_rewrite, n_kl=len(kl_prompts))


def target_nll(log_probs_fn: Any, logits: Float[Tensor, "batch pos d_vocab"], batch: VBatch) -> Float[Tensor, "n_rewrite"]:
    """Mean per-token NLL of the target in each rewrite row (teacher forcing)."""
    n_t = batch.target_ids.shape[0]
    rows = torch.arange(batch.n_rewrite, device=logits.device)
    pos = batch.last_prompt_idx[: batch.n_rewrite, None] + torch.arange(n_t, device=logits.device)[None]  # [n_rewrite, n_t]
    sel = logits[rows[:, None], pos]  # [n_rewrite, n_t, d_vocab]
    lp = log_probs_fn(sel)
    return -lp.gather(-1, batch.target_ids[None, :, None].expand(batch.n_rewrite, n_t, 1)).squeeze(-1).mean(-1)


def compute_v(
    model: Any,
    request: Any,
    layer: int,
    hparams: ROMEHyperParams,
    extra_losses: Sequence[LossTerm] = (),
    *,
    verbose: bool = False,
) -> VResult:
    """Optimise v* for one request at ``layer`` (Chapter 3); ``extra_losses`` are added (Chapters 5-6)."""
    request = as_request(request)
    if hparams.v_early_stop_on not in ("loss", "nll"):
        raise ValueError(f"v_early_stop_on must be 'loss' (ROME's code) or 'nll', got {hparams.v_early_stop_on!r}")
    batch = build_v_batch(model, request, hparams)
    d_model = model.cfg.d_model
    dev = batch.tokens.device
    dtype = next(model.parameters()).dtype
    delta = torch.zeros(d_model, device=dev, dtype=dtype, requires_grad=True)
    ctx = VContext(model=model, request=request, layer=layer, hparams=hparams, batch=batch, delta=delta)
    rows = torch.arange(batch.tokens.shape[0], device=dev)
    state: dict[str, Tensor] = {}

    def add_delta(act: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
        if "v0" not in state:
            state["v0"] = act[0, batch.subject_idx[0]].detach().clone()  # row 0: the bare prompt
        act = act.clone()
        act[rows, batch.subject_idx] = act[rows, batch.subject_idx] + delta
        return act

    def recorder(name: str):
        def rec(act: Tensor, hook: Any) -> Tensor:
            ctx.acts[name] = act
            return act
        return rec

    fwd_hooks = [(f"blocks.{layer}.hook_mlp_out", add_delta)]
    for term in extra_losses:
        for name in term.hook_names:
            fwd_hooks.append((name, recorder(name)))
    for term in extra_losses:
        term.prepare(ctx)

    opt = torch.optim.Adam([delta], lr=hparams.v_lr)
    history: list[dict[str, float]] = []
    kl_init: Tensor | None = None
    with frozen_parameters(model):
        for step in range(hparams.v_num_grad_steps):
            ctx.step = step
            ctx.acts = {}
            opt.zero_grad()
            logits = model.run_with_hooks(batch.tokens, fwd_hooks=fwd_hooks)
            ctx.logits = logits
            if step == 0:
                ctx.initial = {k: v.detach() for k, v in ctx.acts.items()}
            nll = target_nll(lambda x: torch.log_softmax(x.float(), -1), logits, batch)
            loss_nll = nll.mean()
            terms: dict[str, Tensor] = {"nll": loss_nll}
            if batch.n_kl:
                kl_rows = rows[batch.kl_rows]
                kl_lp = torch.log_softmax(logits[kl_rows, batch.subject_idx[batch.kl_rows]].float(), -1)
                if kl_init is None:
                    kl_init = kl_lp.detach().clone()
                terms["kl"] = hparams.kl_factor * F.kl_div(kl_init, kl_lp, log_target=True, reduction="batchmean")
            v0 = state["v0"]
            terms["weight_decay"] = hparams.v_weight_decay * (delta.norm() / v0.norm() ** 2)
            for term in extra_losses:
                terms[term.name] = term(ctx)
            loss = sum(terms.values())
            rec = {k: float(v.detach()) for k, v in terms.items()}
            rec.update(loss=float(loss.detach()), p_target=float(torch.exp(-nll.detach()).mean()), step=step,
                       delta_norm=float(delta.detach().norm()))
            history.append(rec)
            if verbose:
                print(" ".join(f"{k}={v:.4g}" for k, v in rec.items()))
            watched = loss if hparams.v_early_stop_on == "loss" else loss_nll
            if watched.item() < hparams.v_loss_early_stop or step == hparams.v_num_grad_steps - 1:
                break
            loss.backward()
            opt.step()
            max_norm = hparams.clamp_norm_factor * v0.norm()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    v0 = state["v0"]
    d = delta.detach().clone()
    return VResult(v_star=v0 + d, v0=v0, delta=d, history=history)
