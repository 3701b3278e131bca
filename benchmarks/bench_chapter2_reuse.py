"""What Chapter 2 saves by doing its work once: the same results computed again vs reused.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_chapter2_reuse.py [--steps 20] [--eval-every 10]
       [--lr 2e-5] [--sizes 25,111] [--seed 0]

Prints two comparisons on the embedded model, each time measured in this one run:

1. One fine-tuning run on all training queries (SFT, ``--steps`` steps, validation every
   ``--eval-every``), as it was: majority targets from scoring the training answers again and a
   step-0 validation pass; and as Chapter 2 now runs it: targets from the answers it already has
   (:func:`editlens.sft.majority_targets`) and the unsteered validation scores as step 0
   (``initial_eval``). The histories must be equal (exit status 1 if not).
2. The cost curve (:func:`editlens.steering.fair.cost_by_train_size`, steering and SFT) trained at
   every size, and with the full-size point taken from run 1 (``full_runs``,
   :meth:`editlens.sft.SFTResult.first_steps`) and the baseline passed in. The validation
   consistency and best step of every row must be equal (exit status 1 if not).

Prints figures; the default run took 16 minutes on one CPU thread with the other core busy (float32).
"""

from __future__ import annotations

import argparse
import math
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="fine-tuning steps (Chapter 2's COST_STEPS)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--sizes", default="25,111", help="training-set sizes of the cost curve")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    import editlens
    from editlens import sft
    from editlens.data.paraphrases import steering_splits
    from editlens.steering import collect_training_activations, cost_by_train_size, evaluate_state

    torch.set_num_threads(1)
    editlens.seed_everything(args.seed)
    model, _ = editlens.load_model(None)
    splits = steering_splits()
    train, val = splits["train"], splits["validation"]

    def val_metrics(m) -> dict[str, float]:
        row = evaluate_state(m, {"v": val})
        return {"consistency": row["v_consistency"]}

    # What Chapter 2 has before it fine-tunes (sections 2 and 6); not part of either side.
    from editlens.scoring import ROWS_PER_BATCH

    _, _, train_answers = collect_training_activations(model, train, rows_per_batch=ROWS_PER_BATCH)
    base = val_metrics(model)
    kw = dict(lr=args.lr, steps=args.steps, eval_every=args.eval_every, batch_size=16, seed=args.seed,
              eval_fn=val_metrics, progress=False)

    t0 = time.perf_counter()
    again = sft.finetune_consistency(model, train, "majority", **kw)
    t_again = time.perf_counter() - t0
    t0 = time.perf_counter()
    once = sft.finetune_consistency(model, train, sft.majority_targets(train_answers), initial_eval=base, **kw)
    t_once = time.perf_counter() - t0

    def row_key(r: dict) -> tuple:  # the loss is NaN at step 0, and NaN != NaN
        return r["step"], r["consistency"], None if math.isnan(r["loss"]) else r["loss"]

    same_run = [row_key(r) for r in again.history] == [row_key(r) for r in once.history]

    sizes = [int(s) for s in args.sizes.split(",")]
    curve_kw = dict(sizes=sizes, alpha=1.0, methods=("steering", "sft"), seed=args.seed,
                    sft_kwargs=dict(lr=args.lr, steps=args.steps, eval_every=args.eval_every))
    heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)][:8]
    t0 = time.perf_counter()
    trained = cost_by_train_size(model, train, val, heads, **curve_kw)
    t_trained = time.perf_counter() - t0
    t0 = time.perf_counter()
    reused = cost_by_train_size(model, train, val, heads, base_consistency=base["consistency"],
                                full_runs={"sft": once}, **curve_kw)
    t_reused = time.perf_counter() - t0
    cols = ["n_train", "method", "val_consistency", "best_step"]
    same_curve = trained[cols].equals(reused[cols])

    print(f"torch threads: {torch.get_num_threads()}; {len(train)} training queries, {len(val)} validation")
    print(f"1. fine-tuning run ({args.steps} steps, validation every {args.eval_every}):")
    print(f"   targets scored again + step-0 validation: {t_again:7.1f} s")
    print(f"   targets and step 0 reused (Chapter 2):    {t_once:7.1f} s   "
          f"saved {t_again - t_once:.1f} s; same history: {same_run}")
    print(f"2. cost curve (sizes {sizes}, steering + SFT):")
    print(f"   every size trained:                       {t_trained:7.1f} s")
    print(f"   full size from run 1, baseline passed:    {t_reused:7.1f} s   "
          f"saved {t_trained - t_reused:.1f} s; same rows: {same_curve}")
    print(trained[cols + ["seconds"]].to_string(index=False))
    return 0 if same_run and same_curve else 1


if __name__ == "__main__":
    raise SystemExit(main())
