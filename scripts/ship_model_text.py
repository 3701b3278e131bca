"""Sample the embedded model's own text once and ship it with the book (editlens/data/model_text).

Chapter 3 estimates ROME's key statistics C from text the model writes itself (65,536 tokens for
its convergence figure, the first 8,192 of them for the edits). Sampling is about ten minutes of
one CPU thread and gives the same tokens on every machine up to float noise in the sampler, so
it is done here once; `editlens.rome.key_stats.sample_tokens` reads the shipped file for the
embedded weights (same fingerprint, seed and length) and samples anything else itself.

    .venv/bin/python scripts/ship_model_text.py            # 65,536 tokens, seed 0, 128 per row
    .venv/bin/python scripts/ship_model_text.py --model gemma3-270m --tokens 8192   # the second model's C
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--model", default=None, help="an embedded model (default: SmolLM2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import editlens
    from editlens.fingerprint import weights_fingerprint
    from editlens.rome import key_stats as ks
    from safetensors.torch import save_file

    from editlens import embedded

    model, _ = editlens.load_model(args.model, device="cpu")
    tokens = ks.sample_tokens(model, args.tokens, seed=args.seed, seq_len=args.seq_len, progress=True)
    n_seq = tokens.shape[0]
    out = ks.shipped_text_dir() / f"samples_{weights_fingerprint(model)}_s{args.seed}_L{args.seq_len}_n{n_seq}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    assert int(tokens.max()) < 2**31
    save_file({"tokens": tokens.to(torch.int32).contiguous()}, str(out),
              metadata={"model": f"{embedded.spec(args.model).title} (embedded)", "seed": str(args.seed),
                        "sampler": "temperature 1, top_k 0, top_p 1; rows start with BOS + a start word"})
    print(f"wrote {out} ({n_seq} rows x {tokens.shape[1]} tokens, {out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
