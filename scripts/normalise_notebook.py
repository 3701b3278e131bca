"""Normalise a chapter notebook written by jupytext: kernelspec set, jupytext metadata dropped,
every cell has an id. Used by scripts/build_notebook.sh and scripts/update_notebook_text.sh."""

import sys
import uuid

import nbformat

path = sys.argv[1]
nb = nbformat.read(path, 4)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nb.metadata.pop("jupytext", None)
for cell in nb.cells:
    cell.metadata.pop("lines_to_next_cell", None)
    if not cell.get("id"):
        cell["id"] = uuid.uuid4().hex[:8]
nbformat.validate(nb)
nbformat.write(nb, path)
