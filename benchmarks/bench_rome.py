"""Benchmark ROME on this machine (Chapter 3): seconds per edit with C cached, and time to compute C.

    python benchmarks/bench_rome.py [--edits 5] [--tokens N] [--threads T] [--compare] [--cached-c] [--flops]
                                    [--batch 8]

Prints figures. Targets on a laptop CPU: <= 4 s per edit, <= 3 min for C. ``--compare`` also times the
plain path (a full forward with all logits at every v* step, ``v_fast_forward=False``) and the fast path without
prefix reuse (``v_reuse_prefix=False``) on the same edits, and checks that all give the same v* (allclose,
rtol 1e-4) after the same number of steps (exit status 1 if not).
``--cached-c`` reuses the cached C instead of timing it. ``--flops`` also counts each edit's floating-point
operations (``torch.utils.flop_counter``: the matrix products and attention of v*'s forwards and backwards and of
the update) on a second run of the same edit, and prints the rate they ran at: set beside
``benchmarks/bench_precision.py --gemm`` (one matrix product's rate on this CPU), it says how much of an edit's time
is arithmetic at the processor's peak, which no code change short of doing fewer operations can remove.
``--batch N`` also times the first N facts of the book's set edited together, as the chapters edit them (on a
2-core AMD EPYC, float32, one thread: 46.6 GFLOP/s one fact at a time, 66.0 for 8 together, against 86-92 for one
large matrix product).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable


def counted_flops(run: Callable[[], object]) -> int:
    """Floating-point operations of ``run()`` (torch's flop counter: matrix products and attention, forward and
    backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=None, help="tokens behind C (default: the registry's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--fresh-cache", action="store_true", help="time C from scratch (sampling included) in a temp cache")
    ap.add_argument("--compare", action="store_true", help="also time the plain full-forward v* path and compare v*")
    ap.add_argument("--cached-c", action="store_true", help="use the cached C (do not time computing it)")
    ap.add_argument("--flops", action="store_true", help="count each edit's FLOPs and print the rate they ran at")
    ap.add_argument("--batch", type=int, default=0,
                    help="also time the first N facts of the book's set edited together (compute_rome_edits, as "
                         "Chapters 3-6 do with EDIT_BATCH 8-25), with --flops their rate")
    args = ap.parse_args()

    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fresh_cache:  # an empty statistics cache; the model files are linked from the real cache
        from editlens.paths import cache_dir

        real, fresh = cache_dir(), tempfile.mkdtemp(prefix="editlens-bench-")
        for sub in ("models", "gguf"):
            os.symlink(real / sub, os.path.join(fresh, sub))
        os.environ["EDITLENS_CACHE"] = fresh
    import editlens
    from editlens.rome import compute_rome_edit, get_hparams
    from editlens.rome import key_stats as ks

    model, _ = editlens.load_model(device="cpu") if not args.fresh_cache else editlens.load_model(device="cpu")
    hp = get_hparams(model)
    n = args.tokens or hp.mom2_n_tokens
    print(f"model {model.cfg.model_name}, layer {hp.layer}, threads {torch.get_num_threads()}, C from {n} tokens")

    if args.cached_c:
        stats = ks.stats_for(model, hp, progress=True)
        print(f"C: cached, {stats.n_tokens} tokens")
    else:
        t0 = time.perf_counter()
        ks.sample_tokens(model, n, progress=True)
        t1 = time.perf_counter()
        stats = ks.get_key_stats(model, hp.layer, n, use_cache=False, progress=True)
        t2 = time.perf_counter()
        print(f"C: sampling text {t1 - t0:.1f} s (0 if cached), keys + C {t2 - t1:.1f} s, total {t2 - t0:.1f} s; "
              f"{stats.n_tokens} tokens, rank {stats.rank()} of {stats.C.shape[0]}")

    facts = [("The Eiffel Tower", "{} is located in the city of", "Rome"),
             ("France", "The capital of {} is", "Berlin"),
             ("Tokyo", "{} is a city in the country of", "Italy"),
             ("Germany", "The official language of {} is", "Spanish"),
             ("Madrid", "{} is a city in the country of", "Japan"),
             ("Italy", "The capital of {} is", "London")]
    compute_rome_edit(model, {"prompt": facts[0][1], "subject": facts[0][0], "target_new": facts[0][2]}, hp, stats)  # warm-up: context templates
    phases = [("plain (full forward, all logits)", hp.replace(v_fast_forward=False)),
              ("fast (from the edit layer, scored logits only)", hp.replace(v_fast_forward=True,
                                                                            v_reuse_prefix=False))] \
        if args.compare else []
    phases.append(("prefix (the default: fast, and only the positions from the subject on)",
                   hp.replace(v_fast_forward=True, v_reuse_prefix=True)))
    results = {}
    for label, php in phases:
        times, steps, v_stars = [], [], []
        for subject, prompt, new in (facts * 3)[: args.edits]:
            t = time.perf_counter()
            e = compute_rome_edit(model, {"prompt": prompt, "subject": subject, "target_new": new}, php, stats)
            times.append(time.perf_counter() - t)
            steps.append(e.info["steps"])
            v_stars.append(e.v_star)
        results[label] = (steps, v_stars)
        print(f"edit [{label}]: median {statistics.median(times):.2f} s per edit over {len(times)} edits "
              f"(min {min(times):.2f}, max {max(times):.2f}; v* steps {steps})")
        if args.flops:  # the same edits again: the same steps
            requests = [{"prompt": p, "subject": s, "target_new": n} for s, p, n in (facts * 3)[: args.edits]]
            flops = [counted_flops(lambda r=r, h=php: compute_rome_edit(model, r, h, stats)) for r in requests]
            rate = sum(flops) / sum(times) / 1e9
            print(f"  arithmetic: {statistics.median(flops) / 1e9:.1f} GFLOP per edit (median), "
                  f"{rate:.1f} GFLOP/s over the timed edits (compare: bench_precision.py --gemm)")
    if args.batch:
        from editlens.data import load_facts
        from editlens.rome import compute_rome_edits

        batch = load_facts()[: args.batch]
        t = time.perf_counter()
        edits = compute_rome_edits(model, batch, hp, stats)
        seconds = time.perf_counter() - t
        line = (f"batch of {len(batch)} facts edited together: {seconds:.1f} s, {seconds / len(batch):.2f} s per edit "
                f"(v* steps {[e.info['steps'] for e in edits]})")
        if args.flops:
            n = counted_flops(lambda: compute_rome_edits(model, batch, hp, stats))
            line += f"; {n / 1e9:.0f} GFLOP, {n / seconds / 1e9:.1f} GFLOP/s"
        print(line)
    if args.compare:
        (s_plain, v_plain), *others = results.values()
        ok = True
        for label, (s_fast, v_fast) in zip(list(results)[1:], others):
            # float noise: elementwise rtol 1e-4 with atol 1e-4 * max|v*| (near-zero entries of v* carry the noise
            # of ~10-20 Adam steps; the plain path differs from the code before the fast path by as much)
            same_v = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
                         for a, b in zip(v_fast, v_plain))
            worst = max(float((a - b).norm() / b.norm()) for a, b in zip(v_fast, v_plain))
            print(f"{label.split(' ')[0]} vs plain: same steps {s_plain == s_fast}, v* allclose (rtol 1e-4, atol 1e-4 "
                  f"max|v*|) {same_v}, max ||v* - v*_plain|| / ||v*_plain|| {worst:.2e}")
            ok = ok and same_v and s_plain == s_fast
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
