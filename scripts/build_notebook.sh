#!/usr/bin/env bash
# Regenerate a chapter notebook from its jupytext source and execute it in place, storing outputs.
#   scripts/build_notebook.sh 00_meet_the_model      # notebooks/src/00_meet_the_model.py -> notebooks/00_meet_the_model.ipynb
# One torch thread (as `make test`), so stored outputs match what nbval recomputes.
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
src="notebooks/src/$name.py"
out="notebooks/$name.ipynb"
[[ -f "$src" ]] || { echo "no $src" >&2; exit 1; }
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Progress bars as wide as the book's monospace column (editlens.display.LINE_WIDTH), so the page cuts none.
export TQDM_NCOLS="${TQDM_NCOLS:-76}"
.venv/bin/jupytext -q --to ipynb -o "$out" "$src"
.venv/bin/python scripts/normalise_notebook.py "$out"
.venv/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=3600 "$out"
# One stored output per progress-bar redraw -> the bar's final state (see scripts/collapse_progress.py).
.venv/bin/python scripts/collapse_progress.py "$out"
echo "executed $out"
