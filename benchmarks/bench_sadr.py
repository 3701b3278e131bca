"""Benchmark ROME+SADR's v* optimisation (Chapter 5): seconds per edit, one fact at a time and batched.

    python benchmarks/bench_sadr.py [--facts 8] [--steps 80] [--threads 1] [--skip-single]

On the embedded model (C cached), for the first ``--facts`` of Chapter 5's facts, under the authors' early stop
(which does not fire on this model: every edit runs all its steps), prints the seconds per edit of

- ROME+SADR (gamma 0.01, ``--steps`` v* steps: 80 is the authors' count, Chapter 5's SADR-80) and ROME
  (20 steps), one fact at a time (``compute_v``) and all the facts in one batched optimisation
  (``compute_vs``, as Chapter 5's ``PrecomputedEdits`` runs them), with the seconds per fact-step;
- whether gamma = 0 gives ROME's v* bit for bit in the batched run.

It uses only ``compute_v``/``compute_vs``, so the same script measures an older checkout of the package
(``PYTHONPATH=<other checkout>/src``). Run it on one thread inside a CPU slot: ``/work/runs/cpu``-style.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=8, help="facts (the first of Chapter 5's 50)")
    ap.add_argument("--steps", type=int, default=80, help="ROME+SADR's v* steps (the authors' 80)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--skip-single", action="store_true", help="only the batched run")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import editlens
    from editlens.data import as_case, as_request, load_facts, spread_over_relations
    from editlens.rome import compute_v, compute_vs, get_hparams, stats_for
    from editlens.sadr import DEFAULT_GAMMA, ROME_STEPS, AttentionDriftTerm

    model, _ = editlens.load_model(device="cpu")
    precision = getattr(editlens, "precision", None)
    hp = get_hparams(model).replace(v_early_stop_on="loss")
    stats_for(model, hp, progress=False)
    facts = [as_request(as_case(f)) for f in spread_over_relations(load_facts(), 50)[: args.facts]]
    print(f"model {model.cfg.model_name}, layer {hp.layer}, threads {torch.get_num_threads()}, "
          f"{precision.of(model).describe() if precision else 'float32 (no editlens.precision)'}")
    compute_v(model, facts[0], hp.layer, hp.replace(v_num_grad_steps=2))  # warm-up

    def sadr() -> list:
        return [AttentionDriftTerm(DEFAULT_GAMMA)]

    runs = [(f"ROME+SADR {args.steps} steps", args.steps, sadr), (f"ROME {ROME_STEPS} steps", ROME_STEPS, list)]
    for label, steps, terms in runs:
        hps = hp.replace(v_num_grad_steps=steps)
        if not args.skip_single:
            t = time.perf_counter()
            for f in facts:
                compute_v(model, f, hp.layer, hps, terms())
            single = (time.perf_counter() - t) / len(facts)
            print(f"{label:<22} one at a time: {single:6.2f} s per edit ({1000 * single / steps:5.1f} ms per "
                  "fact-step)")
        t = time.perf_counter()
        batched = compute_vs(model, facts, hp.layer, hps, [terms() for _ in facts])
        per_edit = (time.perf_counter() - t) / len(facts)
        print(f"{label:<22} {len(facts)} batched:   {per_edit:6.2f} s per edit ({1000 * per_edit / steps:5.1f} ms per "
              "fact-step)")
        if terms is list:
            zero = compute_vs(model, facts, hp.layer, hps, [[AttentionDriftTerm(0.0)] for _ in facts])
            same = all(torch.equal(a.v_star, b.v_star) for a, b in zip(batched, zero))
            print(f"gamma = 0 gives ROME's v* bit for bit (batched): {same}")


if __name__ == "__main__":
    main()
