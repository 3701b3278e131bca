"""Benchmark ROME vs ROME+SADR (Chapter 5): seconds per edit and per v* step on the embedded model, C cached.

    python benchmarks/bench_sadr.py [--facts 3] [--threads 1] [--gamma 0.01]

Prints, per method (ROME 20 steps, ROME+SADR 20 steps, ROME+SADR 80 steps: the authors' count), the median
seconds per edit, the v* steps run and the seconds per step. The edits stop early by the registry's rule
(``v_early_stop_on="nll+extra"``), so also compare the seconds per step: SADR's extra cost per step is reading
the attention patterns of the layers above the edit layer and its KL. Then, under the authors' early stop (which
does not fire on this model), what Chapter 5 saves by taking SADR-20's edit from the SADR-80 run
(``also_steps``), and whether it is the same edit, bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import time

FACTS = [("The Eiffel Tower", "{} is located in the city of", "Rome"),
         ("France", "The capital of {} is", "Berlin"),
         ("Tokyo", "{} is a city in the country of", "Italy"),
         ("Germany", "The official language of {} is", "Spanish")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=3, help="facts to edit (2-4)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--gamma", type=float, default=None, help="SADR's gamma (default: the authors' 0.01)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import editlens
    from editlens.rome import compute_rome_edit, get_hparams, stats_for
    from editlens.sadr import (
        AUTHORS_STEPS,
        DEFAULT_GAMMA,
        ROME_STEPS,
        AttentionDriftTerm,
    )

    gamma = DEFAULT_GAMMA if args.gamma is None else args.gamma
    model, _ = editlens.load_model(device="cpu")
    hp = get_hparams(model)
    stats = stats_for(model, hp, progress=False)
    print(f"model {model.cfg.model_name}, layer {hp.layer} of {model.cfg.n_layers}, threads {torch.get_num_threads()}, "
          f"gamma {gamma}, early stop on {hp.v_early_stop_on!r}")
    facts = FACTS[: args.facts]
    req = lambda f: {"prompt": f[1], "subject": f[0], "target_new": f[2]}
    compute_rome_edit(model, req(facts[0]), hp.replace(v_num_grad_steps=1), stats)  # warm-up: context templates
    runs = [("ROME", ROME_STEPS, []), ("ROME+SADR", ROME_STEPS, "sadr"), ("ROME+SADR", AUTHORS_STEPS["rome"], "sadr")]
    for label, steps, sadr in runs:
        times, n_steps, final = [], [], []
        for f in facts:
            terms = [AttentionDriftTerm(gamma)] if sadr else []
            t = time.perf_counter()
            e = compute_rome_edit(model, req(f), hp.replace(v_num_grad_steps=steps), stats, terms)
            times.append(time.perf_counter() - t)
            n_steps.append(e.info["steps"])
            final.append(e.v_result.history[-1].get("sadr", 0.0))
        per_step = sum(times) / sum(n_steps)
        print(f"{label:<10} {steps:>3} steps max: median {statistics.median(times):6.2f} s per edit "
              f"(min {min(times):.2f}, max {max(times):.2f}); steps run {n_steps}; {per_step:.3f} s per step; "
              f"final sadr term {[f'{x:.2e}' for x in final]}")

    # Chapter 5 under the authors' early stop (which does not fire on this model): SADR-20 and SADR-80 as two runs
    # (before), or SADR-80 keeping its step-20 edit (also_steps, after); the kept edit must equal the 20-step run's.
    short, long = ROME_STEPS, AUTHORS_STEPS["rome"]
    authors = hp.replace(v_early_stop_on="loss")
    sep, one, same = [], [], []
    for f in facts:
        t = time.perf_counter()
        e_short = compute_rome_edit(model, req(f), authors.replace(v_num_grad_steps=short), stats,
                                    [AttentionDriftTerm(gamma)])
        compute_rome_edit(model, req(f), authors.replace(v_num_grad_steps=long), stats, [AttentionDriftTerm(gamma)])
        sep.append(time.perf_counter() - t)
        t = time.perf_counter()
        e_long = compute_rome_edit(model, req(f), authors.replace(v_num_grad_steps=long), stats,
                                   [AttentionDriftTerm(gamma)], also_steps=[short])
        one.append(time.perf_counter() - t)
        same.append(torch.equal(e_long.earlier[short].delta, e_short.delta))
    print(f"authors' rule, SADR-{short} and SADR-{long} per fact: two runs {statistics.median(sep):6.2f} s (before), "
          f"one run keeping step {short} {statistics.median(one):6.2f} s (after); kept edit == {short}-step edit: "
          f"{same}")


if __name__ == "__main__":
    main()
