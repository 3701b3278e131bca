"""What bfloat16 matrix products buy and cost on the embedded model (editlens.precision).

    .venv/bin/python benchmarks/bench_precision.py
    .venv/bin/python benchmarks/bench_precision.py --gemm   # only the matrix-product rates (seconds)

Prints, on one thread:
1. forward-pass speed in tokens per second on a 64 x 24 and a 20 x 16 batch of real fact prompts: float32,
   mixed precision (float32 weights, bf16 products: what ``dtype="auto"`` picks on a CPU with AMX or
   AVX512-BF16), and both again with another CPU's kernels (AVX2 only, as ``make check-portable`` sets: bf16
   is then emulated);
2. how far the answers move: over the rewrite, paraphrase and neighbourhood prompts of the first 200 facts,
   the log-probability of the true and of the new object under both precisions (mean, median, 99th
   percentile and largest absolute difference) and how many true-vs-new comparisons change sides.
The figures quoted in book/setup.md ("What the model computes in") come from this script.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def fact_prompts(n_facts: int = 200) -> tuple[list[str], list[str], list[str]]:
    from editlens.data import load_facts

    prompts, true, new = [], [], []
    for r in load_facts(limit=n_facts):
        for p in [r.prompt, *r.paraphrase_prompts, *r.neighborhood_prompts[:2]]:
            prompts.append(p)
            true.append(str(r.target_true))
            new.append(r.target_new)
    return prompts, true, new


def speed() -> dict[str, float]:
    """Tokens per second of both precisions on two batch shapes (this process's kernels)."""
    import torch

    import editlens
    from editlens.precision import full_precision

    torch.set_num_threads(1)
    model, tok = editlens.load_model(dtype="bfloat16")
    prompts, _, _ = fact_prompts()
    out = {}
    for rows, width in ((64, 24), (20, 16)):
        ids = tok(prompts[:rows], return_tensors="pt", padding="max_length", truncation=True, max_length=width)
        tokens = ids["input_ids"]
        for name, ctx in (("float32", full_precision(model)), ("bf16 products", contextlib.nullcontext())):
            with torch.no_grad(), ctx:
                model(tokens)
                t0 = time.perf_counter()
                for _ in range(3):
                    model(tokens)
                out[f"{name} {rows}x{width}"] = 3 * rows * width / (time.perf_counter() - t0)
    return out


def answer_shift() -> str:
    import torch

    import editlens
    from editlens.precision import full_precision

    torch.set_num_threads(1)
    model, tok = editlens.load_model()
    prompts, true, new = fact_prompts()

    def run():
        res = []
        with torch.no_grad():
            for i in range(0, len(prompts), 32):
                batch = prompts[i:i + 32]
                enc = tok(batch, return_tensors="pt", padding=True, padding_side="left")
                lp = model(enc["input_ids"], attention_mask=enc["attention_mask"])[:, -1].float().log_softmax(-1)
                for j in range(len(batch)):
                    t = tok(" " + true[i + j], add_special_tokens=False)["input_ids"][0]
                    n = tok(" " + new[i + j], add_special_tokens=False)["input_ids"][0]
                    res.append((float(lp[j, t]), float(lp[j, n])))
        return torch.tensor(res)

    mixed = run()
    with full_precision(model):
        exact = run()
    d = (mixed - exact).abs()
    flipped = (mixed[:, 0] > mixed[:, 1]) != (exact[:, 0] > exact[:, 1])
    gaps = ", ".join(f"{g:.4f}" for g in (exact[:, 0] - exact[:, 1]).abs()[flipped].tolist())
    return (f"{len(prompts)} prompts, {editlens.precision.of(model).describe()}\n"
            f"|log p(answer)| difference bf16 vs float32: mean {d.mean():.4f}, median {d.median():.4f}, "
            f"99th percentile {d.quantile(0.99):.4f}, largest {d.max():.4f}\n"
            f"true-vs-new comparisons that change sides: {int(flipped.sum())} of {len(prompts)} "
            f"(their float32 gaps in nats: {gaps or 'none'})")


def gemm() -> None:
    """GFLOP/s of one float32 and one bfloat16 matrix product at the embedded model's shapes, one thread: whether
    this CPU's bf16 is native (faster than float32) or emulated (far slower), and how near float32 runs to peak."""
    import torch

    torch.set_num_threads(1)
    print("Matrix products, one thread, GFLOP/s (float32 / bfloat16):")
    for m, k, n in ((1536, 576, 1536), (1536, 1536, 576), (24, 576, 1536)):  # MLP in, MLP out, one short row
        rates = []
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b
            t0, runs = time.perf_counter(), 0
            while time.perf_counter() - t0 < 1.0:
                a @ b
                runs += 1
            rates.append(2 * m * k * n * runs / (time.perf_counter() - t0) / 1e9)
        print(f"  {m} x {k} @ {k} x {n}: {rates[0]:.1f} / {rates[1]:.1f}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--gemm":
        gemm()
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--speed-json":
        print(json.dumps(speed()))
        return 0
    print("Forward passes, one thread, tokens per second:")
    for label, env in (("this CPU's kernels", {}), ("AVX2 kernels only (another CPU)", AVX2)):
        proc = subprocess.run([sys.executable, __file__, "--speed-json"], env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, check=True)
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {label}: " + ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()))
    print(answer_shift())
    return 0


if __name__ == "__main__":
    sys.exit(main())
