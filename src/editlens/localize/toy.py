"""A tiny random Llama (grouped-query attention) wrapped in a TransformerBridge, for tests and exercises.

Taught in: Chapter 1 (the exercises check their answers on it before touching the real model).

It has the same architecture family as SmolLM2 (rotary, RMSNorm, gated MLP, GQA) but 2 layers,
d_model 64, 4 query heads sharing 2 key/value heads, and a word-level vocabulary built in code,
so it loads in about a second with no files and no network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editlens import fused_attention

TOY_WORDS: list[str] = (
    "The capital of France Germany Italy Spain Japan is city country Paris Berlin Rome Madrid Tokyo "
    "language spoken in French German Italian Spanish Japanese people speak mother tongue where "
    "located a an on the continent Europe Asia official New York Delhi"
).split()


def toy_tokenizer(words: Sequence[str] = TOY_WORDS):
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
               d_mlp: int | None = None, weight_std: float | None = 0.08, tokenizer=None,
               tie_embeddings: bool = False, max_positions: int = 128, device: str | torch.device = "cpu"):
    """Random tiny Llama + tokenizer, wrapped: returns ``(bridge, tokenizer)``. Deterministic in ``seed``
    (the weights are drawn on the CPU, then moved to ``device``).

    The one tiny model of the book and its tests. Defaults: the word-level :func:`toy_tokenizer`, MLP width
    ``4 * d_model``, weights drawn with std ``weight_std`` (``None``: Hugging Face's own initialisation).
    The tests of ROME and the scorer pass the embedded model's tokenizer, so real prompts tokenize as on SmolLM2.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = toy_tokenizer() if tokenizer is None else tokenizer
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=d_mlp or 4 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                      max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=tie_embeddings,
                      attn_implementation="eager")  # type: ignore[call-arg]  # a PretrainedConfig kwarg, untyped
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg)
    # Larger-than-default weights (HF uses 0.02) so that single heads matter measurably; at 0.08 the
    # model is still close enough to linear that attribution patching tracks activation patching.
    if weight_std is not None:
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if p.dim() == 2:
                    p.normal_(0.0, weight_std)
    hf = hf.to(device).eval()  # type: ignore[arg-type]  # transformers' wrapper of .to hides torch's signature
    bridge = TransformerBridge.boot_transformers("toy-llama" if tokenizer is None else "tiny-llama", hf_model=hf,
                                                 tokenizer=tok)
    bridge.eval()
    fused_attention.install(bridge)
    return bridge, tok


def tiny_gemma3(seed: int = 0, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4, n_kv_heads: int = 1,
                d_head: int = 16, d_mlp: int | None = None, weight_std: float | None = 0.08, tokenizer=None,
                max_positions: int = 256, device: str | torch.device = "cpu"):
    """Random tiny Gemma 3 (the second model's architecture) + tokenizer, wrapped: ``(bridge, tokenizer)``.

    What the package must handle beyond a Llama, at test size: norms after the attention and after the MLP
    (``hook_mlp_out`` follows the MLP's own output through a norm), q/k norms, scaled embeddings (by
    sqrt(d_model)), one key/value head shared by every query head, sliding-window and full-attention layers
    (every second layer full here), tied embeddings. Matrices drawn with std ``weight_std`` (``None``: Hugging
    Face's 0.02, under which the MLP's outputs are so small that the norms' epsilon matters); deterministic in
    ``seed`` (drawn on the CPU, then moved to ``device``).
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = toy_tokenizer() if tokenizer is None else tokenizer
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=d_mlp or 4 * d_model,
                           num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                           head_dim=d_head, query_pre_attn_scalar=d_head, sliding_window=8,
                           layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                                        for i in range(n_layers)],
                           max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           tie_word_embeddings=True,
                           attn_implementation="eager",  # type: ignore[call-arg]  # a PretrainedConfig kwarg, untyped
                           architectures=["Gemma3ForCausalLM"])  # the bridge picks its adapter by this name
    torch.manual_seed(seed)
    hf = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # Gemma's norms scale by (1 + weight), initialised at 0: make them matter
        for name, p in hf.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.normal_(0.0, 0.5)
            elif p.dim() == 2 and weight_std is not None:
                p.normal_(0.0, weight_std)
    hf = hf.to(device).eval()  # type: ignore[arg-type]  # transformers' wrapper of .to hides torch's signature
    bridge = TransformerBridge.boot_transformers("tiny-gemma3", hf_model=hf, tokenizer=tok)
    bridge.eval()
    fused_attention.install(bridge)
    return bridge, tok
