#!/usr/bin/env bash
# Update a chapter notebook's cells from its jupytext source WITHOUT re-executing: outputs of cells
# whose code is unchanged are kept. Use it for prose edits only; change code -> scripts/build_notebook.sh.
#   scripts/update_notebook_text.sh 02_consistency_steering
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
.venv/bin/jupytext -q --update --to ipynb -o "notebooks/$name.ipynb" "notebooks/src/$name.py"
.venv/bin/python - "notebooks/$name.ipynb" <<'PY'
import sys, nbformat
path = sys.argv[1]
nb = nbformat.read(path, 4)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nb.metadata.pop("jupytext", None)
for cell in nb.cells:
    cell.metadata.pop("lines_to_next_cell", None)
nbformat.write(nb, path)
PY
echo "updated $name (outputs kept)"
