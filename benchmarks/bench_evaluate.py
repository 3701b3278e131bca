"""Benchmark the editing evaluation (Chapters 3-6) and causal tracing (Chapter 3), before and after, in one run.

    python benchmarks/bench_evaluate.py [--facts 8] [--trace-facts 2] [--threads 1]

Prints figures:
- ``evaluate_edits`` with ROME on ``--facts`` facts of Chapter 3's evaluation set: generating inside each edit
  (``batch_generations=False``, the code before) against batching every record's generations after the last edit
  (:mod:`editlens.rome.rowwise`), and whether the generated texts are the same;
- ``tracing.trace_fact`` (three kinds, at the subject's last token and the last token, as Chapter 3 averages them)
  through the bridge's full runs (the code before) against running only the blocks above the restoration
  (:mod:`editlens.block_runner`), and the largest difference between their scores.
- ``compare.run_methods`` (Chapter 6) with the four methods on ``--compare-facts`` facts: one
  ``evaluate_edits`` call per (record, method), each generating alone (the code before), against
  ``run_methods`` now, whose generations run in batches of 32 rows over records (left-padded); the largest
  difference between the two tables' probe metrics, and how many rows' generation metrics (GE, RS, SC) differ:
  in bfloat16 a left-padded batch rounds differently from one row, and a greedy continuation that flips one
  token goes its own way from there (in float32 the texts are the same: tests/test_rowwise.py).
Exit status 1 if a "before" and "after" disagree (texts differ, or scores differ by more than 1e-5; for
``run_methods``, probe metrics differ by more than 1e-3).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=8, help="facts for evaluate_edits (0: skip)")
    ap.add_argument("--trace-facts", type=int, default=2, help="facts for causal tracing (0: skip)")
    ap.add_argument("--compare-facts", type=int, default=2,
                    help="facts for run_methods with the four methods of Chapter 6 (0: skip)")
    ap.add_argument("--dtype", default="auto", help="precision of the model (auto, float32, bfloat16)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import editlens
    from editlens import evaluate, tracing
    from editlens.data import (
        as_request,
        load_facts,
        load_object_descriptions,
        spread_over_relations,
    )
    from editlens.rome import get_hparams, rome_editor
    from editlens.rome import key_stats as ks

    model, _ = editlens.load_model(device="cpu", dtype=args.dtype)
    print(f"model {model.cfg.model_name}, {editlens.precision.of(model).describe()}, "
          f"threads {torch.get_num_threads()}")
    ok = True
    facts = spread_over_relations(load_facts(), 50)
    if args.facts:
        hp = get_hparams(model)
        stats = ks.stats_for(model, hp)
        descriptions = load_object_descriptions()
        cases = facts[: args.facts]
        reports, seconds = {}, {}
        for batched in (False, True):
            t = time.perf_counter()
            reports[batched] = evaluate.evaluate_edits(model, cases, rome_editor(hp, stats), baseline=False,
                                                       descriptions=descriptions, progress=False,
                                                       batch_generations=batched)
            seconds[batched] = time.perf_counter() - t
        edit = {b: sum(r["edit_seconds"] for r in rep.records) for b, rep in reports.items()}
        same = all(a["edited"]["generations"] == b["edited"]["generations"]
                   for a, b in zip(reports[False].records, reports[True].records))
        for b, label in ((False, "generations inside each edit (before)"), (True, "batched generations (after)")):
            n = len(cases)
            print(f"evaluate_edits, {label}: {seconds[b]:.1f} s for {n} facts, {seconds[b] / n:.1f} s per fact "
                  f"({edit[b] / n:.1f} s computing the edit, {(seconds[b] - edit[b]) / n:.1f} s measuring it)")
        print(f"evaluate_edits: measuring {((seconds[False] - edit[False]) / (seconds[True] - edit[True])):.1f}x "
              f"faster, whole loop {seconds[False] / seconds[True]:.2f}x; same generated texts: {same}")
        ok = ok and same
    if args.compare_facts:
        ok = bench_run_methods(model, facts[: args.compare_facts]) and ok
    if args.trace_facts:
        results, seconds = {}, {}
        real = tracing.supports_block_runs
        for fast in (False, True):
            tracing.supports_block_runs = real if fast else (lambda model: False)
            t = time.perf_counter()
            results[fast] = [tracing.trace_fact(model, f, k, positions=tracing.traced_positions(model, as_request(f)))
                             .scores for f in facts[: args.trace_facts] for k in tracing.KINDS]
            seconds[fast] = time.perf_counter() - t
        tracing.supports_block_runs = real
        worst = max(float((a - b).abs().max()) for a, b in zip(results[False], results[True]))
        n = args.trace_facts
        print(f"causal tracing, bridge full runs (before): {seconds[False]:.1f} s for {n} facts x 3 kinds; "
              f"blocks from the restored layer up (after): {seconds[True]:.1f} s; "
              f"{seconds[False] / seconds[True]:.2f}x faster; max |score difference| {worst:.2e}")
        ok = ok and worst <= 1e-5
    if not ok:
        raise SystemExit(1)


def bench_run_methods(model, cases) -> bool:
    """Chapter 6's comparison: one evaluate_edits per (record, method) (before) vs run_methods (after)."""
    import numpy as np
    import pandas as pd

    from editlens import compare
    from editlens.data import as_case, as_request, load_facts, load_object_descriptions
    from editlens.evaluate import GenerationSettings, evaluate_edits
    from editlens.rome import get_hparams
    from editlens.rome import key_stats as ks
    from editlens.seeding import seed_everything
    from editlens.steam import AnchorBank

    cases = [as_case(c) for c in cases]
    hp = get_hparams(model)
    bank = AnchorBank(model, load_facts(), n_anchors=8, min_anchors=3)
    bank.precompute([as_request(c).target_new for c in cases])
    editors = compare.build_editors(hp, ks.stats_for(model, hp), list(compare.METHODS), bank=bank,
                                    sadr_gamma=0.01)
    gen = GenerationSettings(n_prompts=1, max_new_tokens=30, seed=0, semantic=True)
    descriptions = load_object_descriptions()
    for editor in editors.values():  # one-time costs paid before either is timed
        with editor(model, cases[0]):
            pass
    t = time.perf_counter()
    rows = []
    for i, case in enumerate(cases):
        for method, editor in editors.items():
            seed_everything(compare.record_seed(0, i))
            rec = evaluate_edits(model, [case], editor, baseline=False, generation=gen, descriptions=descriptions,
                                 progress=False).records[0]
            rows.append({"index": i, "method": method,
                         **{k: rec["edited"][k] for k in compare.ROW_METRICS if k in rec["edited"]}})
    before_s = time.perf_counter() - t
    before = pd.DataFrame(rows)
    t = time.perf_counter()
    after = compare.run_methods(model, cases, editors, generation=gen, descriptions=descriptions, progress=False,
                                warmup=False)
    after_s = time.perf_counter() - t
    generated = ("GE", "RS", "SC")
    cols = [c for c in compare.ROW_METRICS if c in before.columns and c not in generated]
    worst = float(np.nanmax(np.abs(before[cols].to_numpy(float) - after[cols].to_numpy(float))))
    gen_cols = [c for c in generated if c in before.columns]
    moved = int((np.abs(before[gen_cols].to_numpy(float) - after[gen_cols].to_numpy(float)) > 1e-6).any(1).sum())
    n = len(cases) * len(editors)
    print(f"run_methods, {len(cases)} facts x {len(editors)} methods: one evaluate_edits per (record, method) "
          f"(before) {before_s:.1f} s, {before_s / n:.2f} s per edit; generations batched over records (after) "
          f"{after_s:.1f} s, {after_s / n:.2f} s per edit; max |probe metric difference| {worst:.2e}; "
          f"generation metrics differ in {moved} of {n} rows")
    return worst <= 1e-3


if __name__ == "__main__":
    main()
