#!/usr/bin/env bash
# Do the chapters pass on another CPU? Re-execute them as a laptop without bf16 units would run them, and
# compare every checked output (cells marked NBVAL_CHECK_OUTPUT) and every exercise check with the stored run.
#
# The stored outputs come from this machine: one torch thread, bfloat16 matrix products (AMX; see
# editlens.precision). Here torch is limited to AVX2 kernels (ATEN_CPU_CAPABILITY, oneDNN's and MKL's
# instruction sets), so editlens.precision's "auto" finds no native bf16 and the chapters run in float32,
# with THREADS threads (default 2): another precision, other kernels and another summation order at once.
# A checked cell must hold only what survives all three (rounded figures, sets, claims with a margin).
#   scripts/check_portable.sh                                        # every chapter
#   THREADS=1 scripts/check_portable.sh notebooks/01_consistency_heads.ipynb
#   PORTABLE_ENV=native scripts/check_portable.sh                    # this CPU's kernels, THREADS threads only
# Exit status 0: every checked cell matched and every cell ran. Takes as long as executing the chapters in
# float32 on AVX2 (one after another, so that the kernels are what is tested, not a loaded CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
if [[ $# -eq 0 ]]; then set -- notebooks/[0-9][0-9]_*.ipynb; fi
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ "${PORTABLE_ENV:-avx2}" == avx2 ]]; then
    export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
fi
.venv/bin/python -c 'import editlens, torch; p = editlens.precision.resolve("auto");
print(f"[check-portable] torch kernels {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s); chapters compute in {p.describe()}")'
echo "[check-portable] $*"
exec .venv/bin/python -m pytest "$@" --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg \
    --nbval-cell-timeout 3600 -p no:xdist -ra --durations=10
