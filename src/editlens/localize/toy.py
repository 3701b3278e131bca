"""A tiny random Llama (grouped-query attention) wrapped in a TransformerBridge, for tests and exercises.

Taught in: Chapter 1 (the exercises check their answers on it before touching the real model).

It has the same architecture family as SmolLM2 (rotary, RMSNorm, gated MLP, GQA) but 2 layers,
d_model 64, 4 query heads sharing 2 key/value heads, and a word-level vocabulary built in code,
so it loads in about a second with no files and no network.
"""

from __future__ import annotations

import torch

TOY_WORDS: tuple[str, ...] = (
    "The capital of France Germany Italy Spain Japan is city country Paris Berlin Rome Madrid Tokyo "
    "language spoken in French German Italian Spanish Japanese people speak mother tongue where "
    "located a an on the continent Europe Asia official New York Delhi"
).split()


def toy_tokenizer(words: tuple[str, ...] = TOY_WORDS):
    """Word-level ``PreTrainedTokenizerFast``: ``<bos>`` (0), ``<pad>`` (1), ``<unk>`` (2), then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<pad>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>",
                                  eos_token="<pad>")
    tok.padding_side = "right"
    # TransformerLens re-creates tokenizers from their init kwargs unless they already add BOS;
    # mark this in-memory tokenizer so the bridge keeps it as it is (to_tokens prepends <bos> itself).
    tok.init_kwargs["name_or_path"] = "toy-word-level"
    tok.init_kwargs["add_bos_token"] = True
    return tok


def tiny_llama(seed: int = 0, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
               weight_std: float = 0.08):
    """Random tiny Llama + word tokenizer, wrapped: returns ``(bridge, tokenizer)``. Deterministic in ``seed``."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = toy_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=4 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                      max_position_embeddings=128, bos_token_id=0, pad_token_id=1, eos_token_id=1,
                      tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg)
    # Larger-than-default weights (HF uses 0.02) so that single heads matter measurably; at 0.08 the
    # model is still close enough to linear that attribution patching tracks activation patching.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, weight_std)
    hf.eval()
    bridge = TransformerBridge.boot_transformers("toy-llama", hf_model=hf, tokenizer=tok)
    bridge.eval()
    return bridge, tok
