"""Each chapter's time at its default parameters, in float32 and in bfloat16, in one run.

    .venv/bin/python benchmarks/bench_chapters.py                 # every chapter, both precisions
    .venv/bin/python benchmarks/bench_chapters.py --jobs 2 --precisions bfloat16 03_rome 04_steam

Executes each chapter with papermill (``-p DTYPE float32`` / ``bfloat16``; one torch thread per chapter,
``--jobs`` chapters at a time, longest first) into ``benchmarks/results/chapters/`` and prints one row per
chapter: minutes of wall-clock time per precision and their ratio. The budget is 10 minutes per chapter on one
thread at the default precision (``auto``: bfloat16 where the CPU has AMX or AVX512-BF16) and 60 CPU-minutes
for all of them. Run with ``--jobs`` at most the number of idle cores: each job is one thread, so its wall-clock
time is its CPU time only when it has a core to itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "chapters"
sys.path.insert(0, str(ROOT / "scripts"))
import stage_book  # noqa: E402  (the chapters of _toc.yml, as make book reads them)

# The chapters of _toc.yml, longest stored run first (as make book orders them), so that --jobs 2 ends close together
ORDER = [p.stem for p in stage_book.chapter_notebooks()]


def run(chapter: str, precision: str) -> tuple[str, str, float, int]:
    """Execute one chapter; returns (chapter, precision, wall-clock seconds, exit code)."""
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TQDM_NCOLS": "76"}
    cmd = [sys.executable, "-m", "papermill", "--no-progress-bar", "-k", "python3", "--cwd", str(ROOT / "notebooks"),
           str(ROOT / "notebooks" / f"{chapter}.ipynb"), str(OUT / f"{chapter}.{precision}.ipynb"),
           "-p", "DTYPE", precision]
    t0 = time.perf_counter()
    with open(OUT / f"{chapter}.{precision}.log", "w") as log:
        rc = subprocess.run(cmd, check=False, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return chapter, precision, time.perf_counter() - t0, rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chapters", nargs="*", help="chapter stems (default: every chapter of _toc.yml)")
    ap.add_argument("--precisions", default="float32,bfloat16")
    ap.add_argument("--jobs", type=int, default=1, help="chapters executed at a time (one thread each)")
    args = ap.parse_args()
    chapters = [c for c in ORDER if not args.chapters or c in args.chapters]
    unknown = set(args.chapters) - set(ORDER)
    if unknown:
        ap.error(f"unknown chapters {sorted(unknown)}; choose from {ORDER}")
    precisions = args.precisions.split(",")
    jobs = [(c, p) for p in precisions for c in chapters]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda cp: run(*cp), jobs))
    by = {(c, p): (w, rc) for c, p, w, rc in results}
    print(f"{'chapter':26s}" + "".join(f"{p + ' min':>16s}" for p in precisions)
          + ("   float32/bf16" if set(precisions) >= {"float32", "bfloat16"} else ""))
    for c in chapters:
        cells = []
        for p in precisions:
            w, rc = by[(c, p)]
            cells.append(f"{w / 60:13.1f}{'  !' if rc else '   '}")
        ratio = ""
        if set(precisions) >= {"float32", "bfloat16"}:
            ratio = f"{by[(c, 'float32')][0] / by[(c, 'bfloat16')][0]:14.1f}x"
        print(f"{c:26s}" + "".join(cells) + ratio)
    for p in precisions:
        print(f"all chapters, {p}: {sum(by[(c, p)][0] for c in chapters) / 60:.1f} minutes of wall-clock time "
              f"(one thread each, {args.jobs} at a time)")
    failed = [f"{c} ({p})" for (c, p), (_, rc) in by.items() if rc]
    if failed:
        print(f"FAILED (see {OUT}/*.log): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
