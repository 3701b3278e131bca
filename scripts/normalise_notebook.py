"""Normalise a chapter notebook written by jupytext: kernelspec set, jupytext metadata dropped,
every cell has an id, progress-bar updates in stored stream outputs collapsed to their final state
(scripts/collapse_progress.py). Used by scripts/build_notebook.sh and scripts/update_notebook_text.sh."""

import sys
import uuid
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collapse_progress import collapse_notebook  # noqa: E402

path = sys.argv[1]
nb = nbformat.read(path, 4)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nb.metadata.pop("jupytext", None)
for cell in nb.cells:
    cell.metadata.pop("lines_to_next_cell", None)
    if not cell.get("id"):
        cell["id"] = uuid.uuid4().hex[:8]
collapse_notebook(nb)
nbformat.validate(nb)
nbformat.write(nb, path)
