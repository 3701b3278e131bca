"""Wall-clock of per-head activation patching vs attribution patching on the same pairs.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_localize.py [--pairs 16] [--batch-size 16] [--heads N] [--toy]

(On a CPU shared with other jobs, one thread per process is much faster than torch's default.)

Both methods get the same inconsistent pairs of the training split (oriented towards the majority
answer). Activation patching needs one forward pass per head (270 on SmolLM2) plus two; attribution
patching one forward on the source prompts and one forward + backward on the target prompts. With
``--heads N`` only N heads spread evenly over the layers are swept and the full sweep is
extrapolated linearly (printed as such; a patched run starts at its head's layer, so a head's cost
depends on its layer). ``--compare-full-runs`` also times activation patching the way it ran before
(every patched run a whole forward pass) on the same heads, and checks that the effects agree. ``--toy`` runs on the tiny random Llama instead (no data needed).
Prints figures only; the book's target is a ratio of at least 10x.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch


def _toy_pairs(model):
    sys.path.insert(0, "tests")
    from test_consistency import toy_queries

    from editlens import consistency as C
    from editlens import localize as LZ

    return LZ.make_pairs(C.model_answers(model, toy_queries()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16, help="inconsistent pairs to patch (seeded subset)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--heads", type=int, default=None, help="sweep only this many heads and extrapolate")
    ap.add_argument("--toy", action="store_true", help="tiny random model instead of the embedded one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-full-runs", action="store_true",
                    help="also time patched runs as whole forward passes (the code before) and compare")
    ap.add_argument("--data", default=None, help="paraphrases json (default: the packaged one)")
    args = ap.parse_args(argv)

    import editlens
    from editlens import consistency as C
    from editlens import localize as LZ

    editlens.seed_everything(args.seed)
    if args.toy:
        from editlens.localize.toy import tiny_llama

        model, _ = tiny_llama(args.seed)
        pairs = _toy_pairs(model)
    else:
        from editlens.data import load_paraphrases

        model, _ = editlens.load_model()
        queries = load_paraphrases("train", path=args.data)
        t = time.perf_counter()
        pairs = LZ.make_pairs(C.model_answers(model, queries))
        print(f"answers for {len(queries)} training queries: {time.perf_counter() - t:.1f} s")
    ps = LZ.patch_set(pairs, max_pairs=args.pairs, seed=args.seed)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    all_heads = [(l, h) for l in range(L) for h in range(H)]
    heads = all_heads if args.heads is None else [all_heads[i] for i in
                                                  np.linspace(0, len(all_heads) - 1, args.heads).round().astype(int)]
    print(f"device {next(model.parameters()).device}, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"{len(ps)} inconsistent pairs, {L} layers x {H} heads = {L * H} heads, batch size {args.batch_size}")

    attr = LZ.attribution_patching(model, ps, batch_size=args.batch_size)
    act = LZ.activation_patching(model, ps, batch_size=args.batch_size, heads=heads)
    act_full = act.seconds * (len(all_heads) + 2) / (len(heads) + 2)
    label = "measured" if len(heads) == len(all_heads) else f"extrapolated from {len(heads)} heads"
    print(f"activation patching  : {act_full:8.1f} s  ({label}; {act.seconds:.1f} s measured)")
    print(f"attribution patching : {attr.seconds:8.1f} s  (1 clean forward + 1 forward/backward per batch)")
    print(f"speed-up             : {act_full / attr.seconds:8.1f} x")
    if args.compare_full_runs:
        from editlens.localize import patching

        real = patching.supports_block_runs
        patching.supports_block_runs = lambda model: False
        try:
            before = LZ.activation_patching(model, ps, batch_size=args.batch_size, heads=heads)
        finally:
            patching.supports_block_runs = real
        same = np.allclose(np.nan_to_num(before.effect), np.nan_to_num(act.effect), rtol=1e-5, atol=1e-6)
        print(f"activation patching, whole forward per patched run (before): {before.seconds:.1f} s; from the "
              f"patched layer up (after): {act.seconds:.1f} s; {before.seconds / act.seconds:.2f}x faster; "
              f"same effects: {same}")
        if not same:
            return 1
    ok = ~np.isnan(act.effect)
    if ok.sum() > 2:
        r = np.corrcoef(act.effect[ok], attr.effect[ok])[0, 1]
        print(f"agreement on the swept heads: Pearson {r:.3f}, Spearman {LZ.rank_correlation(np.where(ok, act.effect, np.nan), attr.effect):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
