"""Collapse progress-bar updates in a notebook's stored stream outputs to their final state.

tqdm redraws its bar by writing '\\r' + the new state, without a newline. The kernel sends each
redraw as its own stream message, so an executed notebook stores one stream output per update
(e.g. 30 outputs '\\rablating heads:  3%|...' ... '\\rablating heads: 100%|...', then one '\\n');
rendered, that is a staircase of bars. This step rewrites the outputs as a terminal would show them:

1. consecutive stream outputs of the same stream (stdout or stderr, nothing in between) are merged
   into one output;
2. in each stream text, '\\r\\n' (and '\\r\\r\\n' ...) is a newline; on every line, the text after
   the last '\\r' wins (a trailing '\\r' with nothing after it overwrites nothing); ordinary lines
   are kept as they are;
3. a stream output left empty is dropped, and so is a stderr output of only whitespace (tqdm's
   closing '\\n' when stdout was printed between its last redraw and its close: rendered, an
   empty stderr box under the bar).

Outputs of other types (results, figures, errors) and their order are untouched.

    python scripts/collapse_progress.py NOTEBOOK.ipynb [...]    # rewrites the files in place

Used by scripts/normalise_notebook.py, scripts/build_notebook.sh (after execution) and
scripts/stage_book.py (`make book`); tested in tests/test_notebook_tools.py.
"""

from __future__ import annotations

import re
import sys

_CR_NEWLINE = re.compile(r"\r+\n")


def collapse_carriage_returns(text: str) -> str:
    """Terminal view of `text`: on each line, what follows the last '\\r' replaces what precedes it."""
    if "\r" not in text:
        return text
    text = _CR_NEWLINE.sub("\n", text)
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "\r" in line:
            segments = [s for s in line.split("\r") if s]
            lines[i] = segments[-1] if segments else ""
    return "\n".join(lines)


def _text(output) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


def collapse_outputs(outputs: list) -> list:
    """New list of outputs: same-stream neighbours merged, '\\r' updates collapsed, empty streams dropped.

    Accepts nbformat NotebookNodes or plain dicts (as in the notebook's JSON); the non-stream
    outputs are returned as they are (same objects)."""
    merged: list = []
    for output in outputs:
        if (
            output.get("output_type") == "stream"
            and merged
            and merged[-1].get("output_type") == "stream"
            and merged[-1].get("name") == output.get("name")
        ):
            merged[-1]["text"] = _text(merged[-1]) + _text(output)
            continue
        if output.get("output_type") == "stream":
            output = type(output)(output)  # shallow copy: never mutate the caller's output
            output["text"] = _text(output)
        merged.append(output)
    result = []
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = collapse_carriage_returns(output["text"])
            if not output["text"] or (output.get("name") == "stderr" and not output["text"].strip()):
                continue
        result.append(output)
    return result


def collapse_notebook(nb) -> int:
    """Collapse the stream outputs of every code cell of `nb` in place; returns how many outputs
    were removed (0: nothing to do)."""
    removed = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code" or not cell.get("outputs"):
            continue
        outputs = cell["outputs"]
        if not any(o.get("output_type") == "stream" for o in outputs):
            continue
        new = collapse_outputs(outputs)
        removed += len(outputs) - len(new)
        cell["outputs"] = new
    return removed


def main(paths: list[str]) -> None:
    import nbformat

    for path in paths:
        nb = nbformat.read(path, 4)
        before = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        removed = collapse_notebook(nb)
        after = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        if removed or before != after:
            nbformat.write(nb, path)
        print(f"{path}: {len(before)} -> {len(after)} outputs")


if __name__ == "__main__":
    main(sys.argv[1:])
