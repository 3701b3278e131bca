"""Wall-clock of consistency steering vs supervised fine-tuning (SFT) to its best validation consistency.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_steering.py [--train N] [--val N] [--k 8] [--alpha 5]
       [--position all] [--sft-steps 50] [--eval-every 10] [--batch-size 16] [--lr 2e-5]
       python benchmarks/bench_steering.py --cost-sizes 25,50,100,200 [--lora-r 8] [--lora-lr 1e-3]

(On a CPU shared with other jobs, one thread per process is much faster than torch's default.)

Both methods start from the same answers of the unedited model on the training prompts (the
labels for steering, the majority-answer targets for SFT); that shared step is timed once and
counted in both costs.
- Steering cost: training answers + last-token hook_z of the training prompts + ranking the
  heads by attribution patching on training pairs (as Chapter 2) + fitting mass-mean directions
  for the top-K heads + baking the shift into o_proj biases.
- SFT cost: training answers + optimisation time (evaluation excluded) until the history row
  with the best validation consistency, on a seeded subsample of ``--val`` validation queries
  (the same subsample scores steering).
Prints figures only; asserts nothing. The default run takes about 7-8 minutes on one CPU thread.

``--cost-sizes N1,N2,...`` instead prints the cost of steering, full SFT and LoRA (``peft``) as the
training set grows (:func:`editlens.steering.fair.cost_by_train_size`, the figure of Chapter 2):
heads are ranked once by attribution patching on the largest subset and held fixed, SFT and LoRA
run ``--sft-steps`` steps and are charged up to their best validation checkpoint.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=None, help="training queries (seeded subset; default all)")
    ap.add_argument("--val", type=int, default=38, help="validation queries scored during SFT and for steering")
    ap.add_argument("--k", type=int, default=64, help="top-K heads of the attribution ranking (Chapter 2's choice)")
    ap.add_argument("--alpha", type=float, default=1.0, help="strength (Chapter 2's choice on validation)")
    ap.add_argument("--attr-pairs", type=int, default=64, help="training pairs for the attribution ranking")
    ap.add_argument("--position", choices=("all", "last"), default="all")
    ap.add_argument("--sft-steps", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost-sizes", default=None,
                    help="comma-separated training-set sizes: print the cost-vs-size table (steering, SFT, LoRA)")
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank (q_proj, v_proj, o_proj) for --cost-sizes")
    ap.add_argument("--lora-lr", type=float, default=1e-3, help="LoRA learning rate for --cost-sizes")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.cost_sizes:
        return cost_table(args)

    import editlens
    from editlens.consistency import model_answers, query_consistency, summary
    from editlens.scoring import ROWS_PER_BATCH
    from editlens import localize as LZ
    from editlens.data.paraphrases import steering_splits
    from editlens.localize.activations import last_token_z
    from editlens.sft import finetune_consistency
    from editlens.steering import bake_bias, fit_directions, labels_from_answers, steering_hooks

    editlens.seed_everything(args.seed)
    t = time.perf_counter()
    model, _ = editlens.load_model(device="cpu")
    print(f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"model load {time.perf_counter() - t:.1f}s")
    rng = np.random.default_rng(args.seed)
    splits = steering_splits()
    train = splits["train"]
    if args.train is not None and args.train < len(train):
        train = [train[i] for i in sorted(rng.choice(len(train), args.train, replace=False))]
    val_all = splits["validation"]
    val = [val_all[i] for i in sorted(rng.choice(len(val_all), min(args.val, len(val_all)), replace=False))]
    print(f"# {len(train)} training queries ({sum(len(q.prompts) for q in train)} prompts), "
          f"{len(val)} validation queries, K={args.k} heads, alpha={args.alpha}, position={args.position}")

    # shared: the unedited model's answers on the training prompts
    t = time.perf_counter()
    answers = model_answers(model, train, rows_per_batch=ROWS_PER_BATCH)
    t_answers = time.perf_counter() - t

    # steering
    t = time.perf_counter()
    z = last_token_z(model, list(answers["prompt"]))
    t_z = time.perf_counter() - t
    t = time.perf_counter()
    attribution = LZ.attribution_patching(model, LZ.patch_set(LZ.make_pairs(answers), max_pairs=args.attr_pairs,
                                                              seed=args.seed))
    heads = LZ.select_heads(attribution.effect, args.k)
    t_rank = time.perf_counter() - t
    t = time.perf_counter()
    directions = fit_directions(z, labels_from_answers(answers), heads=heads, method="mass_mean")
    shifts = directions.shift(heads, args.alpha)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    handle = bake_bias(model, shifts)
    t_bake = time.perf_counter() - t
    handle.remove()
    steer_cost = t_answers + t_z + t_rank + t_fit + t_bake

    t = time.perf_counter()
    base = summary(model_answers(model, val, rows_per_batch=ROWS_PER_BATCH))
    t_eval = time.perf_counter() - t
    steered = summary(model_answers(model, val, fwd_hooks=steering_hooks(shifts, args.position, model=model),
                                    rows_per_batch=ROWS_PER_BATCH))

    # SFT on the same training queries, majority-answer targets
    per_query = query_consistency(answers)
    targets = {int(q): m for q, m in zip(per_query["query_id"], per_query["majority"])}

    def eval_fn(m):
        s = summary(model_answers(m, val, rows_per_batch=ROWS_PER_BATCH))
        return {"consistency": s["consistency"], "accuracy": s["accuracy"]}

    res = finetune_consistency(model, train, targets, lr=args.lr, steps=args.sft_steps, batch_size=args.batch_size,
                               eval_fn=eval_fn, eval_every=args.eval_every, seed=args.seed, progress=False)
    best = res.best("consistency")
    sft_cost = t_answers + best["train_seconds"]

    print(f"\nshared: answers on training prompts      {t_answers:8.1f} s")
    print(f"steering: hook_z on training prompts     {t_z:8.1f} s")
    print(f"steering: rank heads (attribution)       {t_rank:8.1f} s")
    print(f"steering: fit {len(heads)} mass-mean directions    {t_fit:8.2f} s")
    print(f"steering: bake bias                      {t_bake:8.3f} s")
    print(f"validation scoring ({len(val)} queries), once  {t_eval:8.1f} s")
    print(f"SFT: {res.steps} steps of {args.batch_size}, {res.train_seconds / max(res.steps, 1):.2f} s/step (training only)")
    print("\nstep  train_s  loss    val_consistency  val_accuracy")
    for r in res.history:
        print(f"{r['step']:4d} {r['train_seconds']:8.1f} {r['loss']:7.4f} {r['consistency']:16.4f} {r['accuracy']:13.4f}")
    print(f"\nunedited:  consistency {base['consistency']:.4f}  accuracy {base['accuracy']:.4f}")
    print(f"steering:  consistency {steered['consistency']:.4f}  accuracy {steered['accuracy']:.4f}  "
          f"(gain {steered['consistency'] - base['consistency']:+.4f}), cost {steer_cost:.1f} s")
    print(f"SFT best:  consistency {best['consistency']:.4f}  accuracy {best['accuracy']:.4f}  "
          f"(gain {best['consistency'] - base['consistency']:+.4f}) at step {best['step']}, cost {sft_cost:.1f} s")
    print(f"SFT cost / steering cost: {sft_cost / steer_cost:.2f}x "
          f"(without the shared answers: {best['train_seconds'] / (steer_cost - t_answers):.2f}x)")
    gain = best["consistency"] - base["consistency"]
    if gain > 0:
        first = next(r for r in res.history if r["consistency"] - base["consistency"] >= 0.9 * gain)
        print(f"SFT first reaches 90% of its best gain at step {first['step']}: cost {t_answers + first['train_seconds']:.1f} s "
              f"({(t_answers + first['train_seconds']) / steer_cost:.2f}x steering)")
    s_gain = steered["consistency"] - base["consistency"]
    match = next((r for r in res.history if r["consistency"] - base["consistency"] >= s_gain), None)
    if s_gain > 0 and match is not None:
        print(f"SFT first matches steering's gain at step {match['step']}: cost {t_answers + match['train_seconds']:.1f} s "
              f"({(t_answers + match['train_seconds']) / steer_cost:.2f}x steering)")
    if best["step"] == 0:
        print("note: SFT never beat the unedited model on validation consistency within these steps.")
    return 0


def cost_table(args) -> int:
    """Print the cost of steering, SFT and LoRA for each training-set size in ``--cost-sizes``."""
    import editlens
    from editlens import localize as LZ
    from editlens.consistency import model_answers
    from editlens.scoring import ROWS_PER_BATCH
    from editlens.data.paraphrases import steering_splits
    from editlens.sft import LoraSpec
    from editlens.steering.fair import cost_by_train_size

    try:
        sizes = sorted(int(x) for x in args.cost_sizes.split(","))
    except ValueError:
        raise SystemExit(f"--cost-sizes must be comma-separated integers, got {args.cost_sizes!r}") from None
    editlens.seed_everything(args.seed)
    model, _ = editlens.load_model(device="cpu")
    rng = np.random.default_rng(args.seed)
    splits = steering_splits()
    train = splits["train"]
    val_all = splits["validation"]
    val = [val_all[i] for i in sorted(rng.choice(len(val_all), min(args.val, len(val_all)), replace=False))]
    # one fixed ranking (not charged to any size): attribution patching on the largest subset
    order = np.random.default_rng(args.seed).permutation(len(train))
    largest = [train[i] for i in sorted(order[: max(sizes)])]
    t = time.perf_counter()
    ps = LZ.patch_set(LZ.make_pairs(model_answers(model, largest, rows_per_batch=ROWS_PER_BATCH)), max_pairs=args.attr_pairs, seed=args.seed)
    heads = LZ.select_heads(LZ.attribution_patching(model, ps).effect, args.k)
    print(f"# {len(val)} validation queries, K={args.k}, alpha={args.alpha}; ranking (not charged) "
          f"{time.perf_counter() - t:.1f}s")
    kw = dict(steps=args.sft_steps, eval_every=args.eval_every, batch_size=args.batch_size)
    table = cost_by_train_size(model, train, val, heads, sizes=sizes, alpha=args.alpha,
                               sft_kwargs=dict(kw, lr=args.lr), lora_kwargs=dict(kw, lr=args.lora_lr),
                               lora_spec=LoraSpec(r=args.lora_r, seed=args.seed), seed=args.seed)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
