"""Chapters run with parameters other than their defaults (papermill), as a reader would run them.

For each chapter in OVERRIDES: read its `parameters` cell, override the names it defines, execute
it with papermill on the embedded model, and check that papermill injected the new values right
after the parameters cell, that every cell ran, and that the new values were still in force at the
end of the notebook (a chapter that silently resets a parameter fails here).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from conftest import REPO_ROOT, parameters_cell

NOTEBOOKS = REPO_ROOT / "notebooks"

# Chapter stem -> values to inject. Only names that the chapter's parameters cell defines are used
# (so a renamed parameter is reported, not silently ignored). Keep the runs short: smaller sizes.
OVERRIDES: dict[str, dict] = {
    "00_meet_the_model": {
        "PROMPT": "The Colosseum is located in the city of",
        "ANSWER": " Rome",
        "DISTRACTOR": " Paris",
        "LAYER_TO_PLOT": 3,
        "SEED": 1,
    },
    # Chapter 6 at other sizes than its stored run (which `make test` replays with nbval at its
    # defaults): every section end to end on 4 facts and 2 sequential edits, a few minutes.
    "06_synthesis": {
        "N_FACTS": 4,
        "EDIT_BATCH": 3,  # a full batch of 3 facts, then one alone
        "N_ATTR_PAIRS": 16,
        "N_SEQUENTIAL": 2,
        "N_UNRELATED": 3,
        "N_BOOT": 200,
    },
}

PROBE_MARKER = "EDITLENS_PARAMETER_PROBE:"


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(OVERRIDES))
def test_chapter_runs_with_overridden_parameters(stem: str, tmp_path: Path):
    import papermill

    source = NOTEBOOKS / f"{stem}.ipynb"
    assert source.exists(), f"{source} does not exist; update OVERRIDES in {__file__} if it was renamed."
    nb = nbformat.read(source, as_version=4)
    index, defaults = parameters_cell(nb)

    unknown = sorted(set(OVERRIDES[stem]) - set(defaults))
    assert not unknown, f"{stem}: {unknown} are not in its parameters cell (has {sorted(defaults)}); update OVERRIDES."
    params = dict(OVERRIDES[stem])
    assert any(params[k] != defaults[k] for k in params), "the overrides equal the defaults: nothing is tested"

    # A last cell that reports the parameters' values at the end of the run.
    probe = f"import json\nprint({PROBE_MARKER!r} + json.dumps({{k: repr(globals()[k]) for k in {sorted(params)!r}}}))"
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    instrumented = tmp_path / f"{stem}.in.ipynb"
    nbformat.write(nb, instrumented)

    executed_path = tmp_path / f"{stem}.out.ipynb"
    papermill.execute_notebook(
        str(instrumented),
        str(executed_path),
        parameters=params,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),  # as in Jupyter, nbval and the book build
        progress_bar=False,
        execution_timeout=1200,
    )
    executed = nbformat.read(executed_path, as_version=4)

    injected = executed.cells[index + 1]
    assert "injected-parameters" in injected.metadata.get("tags", []), (
        "papermill did not insert an `injected-parameters` cell after the parameters cell"
    )
    injected_values = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(injected.source).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert injected_values == params, f"the injected cell does not hold the overrides:\n{injected.source}"

    errors = [c for c in executed.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    assert not errors, f"{stem}: cells raised errors:\n{errors[0].source[:500]}"
    unexecuted = [c.source[:80] for c in executed.cells if c.cell_type == "code" and c.source.strip() and c.execution_count is None]
    assert not unexecuted, f"{stem}: cells did not run: {unexecuted}"

    report = "".join(o.get("text", "") for o in executed.cells[-1].outputs if o.output_type == "stream")
    assert PROBE_MARKER in report, f"the probe cell printed nothing: {report!r}"
    final = json.loads(report.split(PROBE_MARKER, 1)[1])
    for name, value in params.items():
        assert final[name] == repr(value), (
            f"{stem}: {name} was injected as {value!r} but is {final[name]} at the end of the notebook: "
            "a cell after the parameters cell overwrites it"
        )
