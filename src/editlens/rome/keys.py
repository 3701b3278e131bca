"""Tokens, positions and the key k*: the MLP input at the subject's last token.

Taught in: Chapter 3 (ROME, "the key"). Used by Chapters 4-6 unchanged.

Two traps this module handles once for every chapter: the BOS token the model expects at
position 0 (it shifts every position by one), and the leading space of a continuation
(" Paris" is one token, "Paris" another).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from editlens.data import RewriteRequest
from editlens.precision import full_precision
from editlens.rome.hparams import ROMEHyperParams
from editlens.scoring import bos_ids, encode_text, pad_id, pad_rows

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_TEMPLATE_CACHE: dict[tuple, list[str]] = {}


def encode(model: TransformerBridge, text: str, *, bos: bool = True) -> list[int]:
    """Token ids of ``text`` as the model sees it (BOS first unless ``bos=False``): the book's one
    encoder, :func:`editlens.scoring.encode_text` (one BOS rule, :func:`editlens.scoring.bos_ids`)."""
    return encode_text(model, text, bos=bos)


def pad_batch(model: TransformerBridge, seqs: Sequence[Sequence[int]]) -> tuple[Int[Tensor, "batch pos"],
              Int[Tensor, "batch"]]:
    """Right-pad token lists into one tensor (:func:`editlens.scoring.pad_rows`). With right padding and
    causal attention, the real positions never see the padding. Returns (tokens, lengths)."""
    return pad_rows(seqs, pad_id(model), model.cfg.device), torch.tensor([len(s) for s in seqs])


def fill_template(template: str, prompt: str) -> str:
    """Put a prompt (itself a template with ``{}`` for the subject) into a context template ``"... {}"``."""
    return template.replace("{}", prompt)


def subject_last_index(model: TransformerBridge, prompt_template: str, subject: str) -> tuple[list[int], int]:
    """Token ids of ``prompt_template.format(subject)`` and the index of the subject's last token.

    The index counts BOS. It is found by tokenising the text up to the end of the subject, as ROME does.
    """
    before = prompt_template.split("{}")[0]
    full = encode(model, prompt_template.format(subject))
    upto = encode(model, before + subject)
    idx = len(upto) - 1
    if full[: len(upto)] != upto:  # the subject's end merged with what follows: take the last shared token
        shared = 0
        while shared < min(len(full), len(upto)) and full[shared] == upto[shared]:
            shared += 1
        idx = max(shared - 1, 0)
    return full, idx


def context_templates(model: TransformerBridge, hparams: ROMEHyperParams) -> list[str]:
    """``["{}", "<generated prefix>. {}", ...]``: the bare prompt, then short prefixes the model samples
    itself (seeded; ROME: 10 of 5 tokens and 10 of 10 tokens), sampled in float32 whatever the model's
    precision, so an edit's prefixes do not depend on it. Cached per model and settings."""
    key = (getattr(model.cfg, "model_name", ""), hparams.context_lengths, hparams.context_seed)
    if key in _TEMPLATE_CACHE:
        return list(_TEMPLATE_CACHE[key])
    starts = ["The", "Therefore", "Because", "I", "You"]
    tok = model.tokenizer
    hf = getattr(model, "original_model", None)
    templates = ["{}"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hparams.context_seed)
        for length, n in hparams.context_lengths:
            prompts = [starts[i % len(starts)] for i in range(n)]
            seqs = [encode(model, p) for p in prompts]
            out_texts = []
            # left-pad for generation: group equal-length prompts instead (all starts are one token here)
            by_len: dict[int, list[int]] = {}
            for i, s in enumerate(seqs):
                by_len.setdefault(len(s), []).append(i)
            texts: dict[int, str] = {}
            for L, idxs in by_len.items():
                inp = torch.tensor([seqs[i] for i in idxs], device=model.cfg.device)
                with torch.no_grad(), full_precision(model):  # the same prefixes whatever the precision
                    if hf is not None:
                        gen = hf.generate(inp, attention_mask=torch.ones_like(inp), do_sample=True, top_k=5,
                                          max_new_tokens=length, min_new_tokens=length,
                                          pad_token_id=tok.pad_token_id)
                    else:
                        gen = model.generate(inp, max_new_tokens=length, top_k=5, verbose=False)
                for j, i in enumerate(idxs):
                    texts[i] = tok.decode(gen[j, len(bos_ids(model)):], skip_special_tokens=True)
            out_texts = [texts[i] for i in range(n)]
            for t in out_texts:
                t = " ".join(t.replace("{", " ").replace("}", " ").split())
                templates.append(t + ". {}")
    _TEMPLATE_CACHE[key] = templates
    return list(templates)


def mlp_key_hook(layer: int) -> str:
    """Hook whose activation is the key: the input of W_out (also for gated MLPs)."""
    return f"blocks.{layer}.mlp.hook_post"


def mlp_value_hook(layer: int) -> str:
    """Hook whose activation is the value: the output of W_out, where v* is optimised. That is the MLP's own
    output, before a norm some architectures put after the MLP (Gemma 3's ``post_feedforward_layernorm``:
    ``blocks.{layer}.hook_mlp_out`` comes after it, and a norm is not linear, so W_out k* = v* must hold
    before it). Without such a norm the two hooks carry the same tensor."""
    return f"blocks.{layer}.mlp.hook_out"


def subject_keys(model: TransformerBridge, request: RewriteRequest, layer: int,
                 templates: Sequence[str]) -> Float[Tensor, "n_templates d_mlp"]:
    """The MLP key at the subject's last token of ``request.prompt`` inside each context template."""
    seqs, idxs = [], []
    for t in templates:
        ids, i = subject_last_index(model, fill_template(t, request.prompt), request.subject)
        seqs.append(ids)
        idxs.append(i)
    tokens, _ = pad_batch(model, seqs)
    store: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: Any) -> Tensor:
        store["k"] = act.detach()
        return act

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(mlp_key_hook(layer), grab)], stop_at_layer=layer + 1)
    rows = torch.arange(len(seqs), device=store["k"].device)
    return store["k"][rows, torch.tensor(idxs, device=rows.device)].float()  # bf16 under mixed precision


def compute_k(model: TransformerBridge, request: RewriteRequest, layer: int,
              hparams: ROMEHyperParams) -> tuple[Float[Tensor, "d_mlp"], Float[Tensor, "d_mlp"]]:
    """k*: the key averaged over the bare prompt and ~20 model-generated prefixes; also the bare-prompt key.

    Returns ``(k_avg, k_bare)``. Chapter 3 shows why averaging makes the edit fire in new contexts.
    """
    keys = subject_keys(model, request, layer, context_templates(model, hparams))
    return keys.mean(0), keys[0]
