"""Two kernel choices of the package, timed against what they replace on the embedded model, one thread.

    .venv/bin/python benchmarks/bench_kernels.py [--threads 1] [--repeats 2] [--dtype auto]

1. Grouped-query attention in the fused kernel (``editlens.fused_attention``): the embedded model has 9
   query heads and 3 KV heads. Repeating each KV head for its 3 query heads copies the keys and values
   (the whole KV cache at every generated token); ``enable_gqa`` lets the kernel read them in place.
   Timed on Chapter 2's side-effect generations (60 open-ended questions, 24 tokens, one left-padded
   batch) and on its test_relations answers (756 prompts, packed rows); the outputs must agree bit for bit.
2. AdamW for full fine-tuning (``editlens.sft``, Chapter 2's SFT baseline): the per-tensor loop against
   the fused kernel, one step over the model's float32 weights with fixed random gradients; then the
   largest weight difference between the two after 5 steps (the same update, rounded in another order).
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    import numpy as np
    import torch

    import editlens
    from editlens import fused_attention
    from editlens.consistency import model_answers
    from editlens.data import load_openended
    from editlens.data.paraphrases import steering_splits
    from editlens.scoring import ROWS_PER_BATCH
    from editlens.steering import side_effects

    torch.set_num_threads(args.threads)
    model, _ = editlens.load_model(None, dtype=args.dtype)
    print(editlens.precision.of(model).describe())
    questions = load_openended()
    queries = steering_splits()["test_relations"]

    def generation():
        with torch.no_grad():
            return side_effects.generation_consistency(model, questions, return_answers=True)["answers"]

    def scoring():
        frame = model_answers(model, queries, rows_per_batch=ROWS_PER_BATCH)
        return frame[["answer_nll", "gold_nll"]].to_numpy()

    print("\n1. grouped-query attention: KV heads repeated vs read in place by the kernel")
    for name, fn in [("generation (60 x 24 tokens)", generation), ("scoring (756 prompts)", scoring)]:
        times = {"repeated": [], "in kernel": []}
        outputs = {}
        for _ in range(args.repeats):
            for label, flag in [("repeated", False), ("in kernel", True)]:
                with mock.patch.object(fused_attention, "_SDPA_GQA", flag):
                    start = time.perf_counter()
                    outputs[label] = fn()
                    times[label].append(time.perf_counter() - start)
        a, b = outputs["repeated"], outputs["in kernel"]
        same = a == b if isinstance(a, list) else np.array_equal(a, b)
        rep, ker = statistics.median(times["repeated"]), statistics.median(times["in kernel"])
        print(f"  {name}: repeated {rep:.1f} s, in kernel {ker:.1f} s ({rep / ker:.2f}x); bit for bit the same: {same}")

    print("\n2. AdamW over the model's float32 weights: per-tensor loop vs fused kernel")
    params = [p for p in model.parameters() if p.dtype == torch.float32]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]
    start_values = [p.detach().clone() for p in params]
    after = {}
    for label, fused in [("loop", False), ("fused", True)]:
        work = [torch.nn.Parameter(v.clone()) for v in start_values]
        for w, g in zip(work, grads):
            w.grad = g.clone()
        opt = torch.optim.AdamW(work, lr=2e-5, fused=fused)
        opt.step()  # the optimiser state is created at the first step
        steps = []
        for _ in range(4):
            start = time.perf_counter()
            opt.step()
            steps.append(time.perf_counter() - start)
        after[label] = work
        n = sum(w.numel() for w in work)
        print(f"  {label}: {statistics.median(steps):.3f} s per step ({n / 1e6:.0f}M weights)")
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(after["loop"], after["fused"]))
    print(f"  after 5 steps the largest weight difference between the two: {diff:.2e}")


if __name__ == "__main__":
    main()
