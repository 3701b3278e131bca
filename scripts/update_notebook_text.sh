#!/usr/bin/env bash
# Update a chapter notebook's cells from its jupytext source WITHOUT re-executing: outputs of cells
# whose code is unchanged are kept. Use it for prose edits only; change code -> scripts/build_notebook.sh.
#   scripts/update_notebook_text.sh 02_consistency_steering
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
.venv/bin/jupytext -q --update --to ipynb -o "notebooks/$name.ipynb" "notebooks/src/$name.py"
.venv/bin/python scripts/normalise_notebook.py "notebooks/$name.ipynb"
echo "updated $name (outputs kept)"
