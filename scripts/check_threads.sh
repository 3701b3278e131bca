#!/usr/bin/env bash
# Do the chapters' checked outputs survive another torch thread count? (What a new CPU does to
# them: float sums in another order.) The stored outputs are made with one thread
# (scripts/build_notebook.sh, as `make test` checks them); this re-executes the chapters under
# THREADS threads (default 2) and compares every NBVAL_CHECK_OUTPUT cell with nbval, using the
# same sanitizers as `make test`.
#   scripts/check_threads.sh                                   # every chapter, 2 threads
#   THREADS=2 scripts/check_threads.sh notebooks/01_consistency_heads.ipynb
# Exit status 0: every checked cell matched. Takes as long as executing the chapters (one after
# another, so the thread count is what is tested, not a loaded CPU's).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
if [[ $# -eq 0 ]]; then set -- notebooks/[0-9][0-9]_*.ipynb; fi
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "[check-threads] $THREADS torch thread(s): $*"
exec .venv/bin/python -m pytest "$@" --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg \
    --nbval-cell-timeout 3600 -p no:xdist -ra
