"""What the one weight fingerprint (editlens.fingerprint.weights_fingerprint) costs on the embedded model.

    OMP_NUM_THREADS=1 /work/runs/cpu .venv/bin/python benchmarks/bench_fingerprint.py

Prints, on one thread: how many bytes the print hashes, the seconds of a full hash (``recompute=True``, best of
``--repeat``), of a memo hit (no weight changed), and of the first print after a one-weight in-place edit (the
memo sees the version counter move and hashes again). The figure in the module docstring comes from here.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import editlens
    from editlens.fingerprint import weights_fingerprint

    model, _ = editlens.load_model(device="cpu")
    entries = model.original_model.state_dict()
    n_bytes = sum(t.numel() * t.element_size() for t in entries.values())
    print(f"threads {torch.get_num_threads()}; {len(entries)} state_dict entries, {n_bytes / 1e6:.0f} MB hashed")
    print_ = weights_fingerprint(model)
    full = best_of(args.repeat, lambda: weights_fingerprint(model, recompute=True))
    hit = best_of(args.repeat, lambda: weights_fingerprint(model))
    W = model.blocks[3].mlp.W_out
    with torch.no_grad():
        old = W[0, 0].item()
        W[0, 0] += 1.0
        t0 = time.perf_counter()
        edited = weights_fingerprint(model)
        after_edit = time.perf_counter() - t0
        W[0, 0] = old
    assert edited != print_ and weights_fingerprint(model) == print_
    print(f"print {print_}")
    print(f"full hash {full:.2f} s; memo hit {hit * 1e3:.0f} ms; after a one-weight edit {after_edit:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
