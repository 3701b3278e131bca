"""What the fused attention path (editlens.fused_attention) buys, and how far it moves the numbers.

The scorer and the generator fuse on their own; each workload below runs once inside
``fused_attention.enabled(model, False)`` (the step-by-step path forced) and once inside ``enabled(model)``.

    .venv/bin/python benchmarks/bench_attention.py [--threads 1] [--repeats 2]

On the embedded model at its default precision, each workload timed with the bridge's step-by-step
attention and with the fused kernel, alternating (``--repeats`` rounds), one thread:
1. scoring: Chapter 2's answers to its test_relations split (108 queries x 7 templates, packed rows,
   ``ROWS_PER_BATCH`` rows per forward);
2. ROME: 4 edits (v* optimisation with gradients, C cached);
3. generation: 32 greedy continuations of 30 tokens, left-padded.
Then, in float32, the largest logit difference between the two paths on the 32 prompts, and on 30
queries how far each path's bf16 answer NLLs sit from a float32 run (mean |difference|) and on how many
prompts the chosen answer differs from float32's.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    import editlens
    from editlens import consistency as C
    from editlens import fused_attention
    from editlens.data.paraphrases import steering_splits
    from editlens.evaluate import generate
    from editlens.rome import compute_rome_edit, get_hparams
    from editlens.rome import key_stats as ks
    from editlens.scoring import ROWS_PER_BATCH

    torch.set_num_threads(args.threads)
    model, _ = editlens.load_model()
    print(editlens.precision.of(model).describe(), f"; {args.threads} thread(s)")
    queries = steering_splits()["test_relations"]
    hp = get_hparams(model)
    stats = ks.stats_for(model, hp, progress=False)
    facts = [("The Eiffel Tower", "{} is located in the city of", "Rome"),
             ("France", "The capital of {} is", "Berlin"),
             ("Tokyo", "{} is a city in the country of", "Italy"),
             ("Germany", "The official language of {} is", "Spanish")]
    prompts = [q.prompts[0] for q in queries[:32]]

    def scoring() -> None:
        C.model_answers(model, queries, rows_per_batch=ROWS_PER_BATCH)

    def rome() -> None:
        for subject, prompt, new in facts:
            compute_rome_edit(model, {"prompt": prompt, "subject": subject, "target_new": new}, hp, stats)

    def generation() -> None:
        generate(model, prompts, max_new_tokens=30)

    work = {"scoring (Ch. 2 test_relations)": scoring, "ROME (4 edits)": rome, "generation (32 x 30)": generation}
    for fn in work.values():  # warm-up: kernels built once per shape, context templates cached
        with fused_attention.enabled(model, True):
            fn()
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for name, fn in work.items():
            for fused in (False, True):
                with fused_attention.enabled(model, fused):
                    t = time.perf_counter()
                    fn()
                    times.setdefault((name, fused), []).append(time.perf_counter() - t)
    print(f"{'workload':<32}{'step by step':>14}{'fused':>10}{'saved':>8}")
    for name in work:
        a, b = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
        print(f"{name:<32}{a:>12.2f} s{b:>8.2f} s{1 - b / a:>8.0%}")

    reference_model, _ = editlens.load_model(dtype="float32")
    tokens = reference_model.to_tokens(prompts, prepend_bos=True)
    with torch.no_grad():
        slow = reference_model(tokens)
        with fused_attention.enabled(reference_model):
            fast = reference_model(tokens)
    print(f"float32, {len(prompts)} prompts: max |logit difference| fused vs step by step "
          f"{float((fast - slow).abs().max()):.1e} (logits up to {float(slow.abs().max()):.0f})")
    sample = queries[:30]
    reference = C.model_answers(reference_model, sample, rows_per_batch=ROWS_PER_BATCH)
    for fused in (False, True):
        with fused_attention.enabled(model, fused):
            got = C.model_answers(model, sample, rows_per_batch=ROWS_PER_BATCH)
        gap = (got.answer_nll - reference.answer_nll).abs().mean()
        print(f"{'fused' if fused else 'step by step':>12}: mean |NLL - float32's| {gap:.4f}; answer differs from "
              f"float32's on {(got.answer != reference.answer).sum()} of {len(got)} prompts")


if __name__ == "__main__":
    main()
