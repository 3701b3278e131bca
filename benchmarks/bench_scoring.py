"""Scoring throughput: the packed prefix-tree scorer vs the plain one, in one run, same machine.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_scoring.py [--split validation] [--repeats 1]
       [--row-tokens 64 128 256] [--hooked]

Scores every (prompt, candidate) pair of one of Chapter 2's splits with
``editlens.scoring.score_candidates`` twice: ``packed=False`` (each prompt once, multi-token
candidates continued from its key/value cache: the scorer before the prefix tree) and
``packed=True`` at each ``--row-tokens``; then Chapter 1's last-token ``hook_z`` of the same
prompts both ways. Prints pairs per second, the speed-up and the largest NLL difference between
the two paths. ``--hooked`` adds Chapter 2's all-position steering hooks (64 heads), as its sweep
runs. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="validation", help="a split of steering_splits() (Chapter 2)")
    ap.add_argument("--repeats", type=int, default=1, help="time each path this many times (best is kept)")
    ap.add_argument("--row-tokens", type=int, nargs="+", default=[256], help="packed row sizes to try")
    ap.add_argument("--hooked", action="store_true", help="score under all-position steering hooks")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import editlens
    from editlens import scoring
    from editlens.data.paraphrases import steering_splits
    from editlens.localize import last_token_z

    model, _ = editlens.load_model()
    queries = steering_splits()[args.split]
    prompts, cands = [], []
    for q in queries:
        cs = list(q.candidates) + ([q.object] if q.object not in q.candidates else [])
        for p in q.prompts:
            prompts.append(p); cands.append(cs)
    n_pairs = sum(map(len, cands))
    hooks = []
    if args.hooked:
        L, H, d = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
        gen = torch.Generator().manual_seed(0)
        heads = sorted({(int(i) // H, int(i) % H) for i in torch.randperm(L * H, generator=gen)[:64]})
        shift = torch.randn(d, generator=gen) * 0.1
        for layer in sorted({l for l, _ in heads}):
            hs = [h for l, h in heads if l == layer]

            def hook(z, hook=None, hs=hs):
                z = z.clone()
                z[:, :, hs] += shift
                return z

            hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"split {args.split!r}: {len(queries)} queries, {len(prompts)} prompts, {n_pairs} prompt-candidate pairs"
          f"{', steering hooks on 64 heads' if hooks else ''}")

    def timed(fn):
        best, out = float("inf"), None
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
        return best, out

    scoring.packing_supported(model)  # the one-time check, outside the timings
    t_plain, plain = timed(lambda: scoring.score_candidates(model, prompts, cands, fwd_hooks=hooks, packed=False))
    print(f"  plain (KV-cache continuations): {t_plain:7.1f} s  {n_pairs / t_plain:7.0f} pairs/s")
    for rt in args.row_tokens:
        t_packed, packed = timed(lambda: scoring.score_candidates(model, prompts, cands, fwd_hooks=hooks,
                                                                  packed=True, row_tokens=rt))
        diff = max(float(np.abs(a - b).max()) for a, b in zip(plain, packed))
        agree = np.mean([np.argmin(a) == np.argmin(b) for a, b in zip(plain, packed)])
        print(f"  packed, rows of {rt:4d} tokens:    {t_packed:7.1f} s  {n_pairs / t_packed:7.0f} pairs/s  "
              f"x{t_plain / t_packed:.2f}; max |NLL diff| {diff:.1e}; same answer {agree:.1%}")
    t_zp, zp = timed(lambda: last_token_z(model, prompts, packed=False))
    t_zk, zk = timed(lambda: last_token_z(model, prompts, packed=True))
    print(f"last-token hook_z of {len(prompts)} prompts: plain {t_zp:.1f} s, packed {t_zk:.1f} s "
          f"(x{t_zp / t_zk:.2f}); max |diff| {float((zp - zk).abs().max()):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
