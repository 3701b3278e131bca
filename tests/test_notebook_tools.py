"""The notebook tools in scripts/ and the code width of the chapter sources (fast; no model).

- scripts/collapse_progress.py: progress-bar updates stored one output per redraw are collapsed to
  what a terminal shows (tested on synthetic outputs shaped like the stored tqdm bars).
- scripts/stage_book.py: the staged book renders with execution off and collapsed bars.
- Code width: every line of every code cell of notebooks/src/*.py fits the book's code column
  (CODE_WIDTH characters; scripts/format_notebooks.sh formats to it).
"""

from __future__ import annotations

import re
import sys

import nbformat
import pytest
import yaml

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import collapse_progress  # noqa: E402
import stage_book  # noqa: E402
from collapse_progress import collapse_carriage_returns, collapse_notebook, collapse_outputs  # noqa: E402

# The rendered code column at the build test's 1280 px viewport (sphinx-book-theme 1.3, 14 px
# monospace, 8.43 px a character) holds 77 characters; 76 leaves a character of margin.
# Keep in step with WIDTH in scripts/format_notebooks.sh.
CODE_WIDTH = 76

# Chapter sources not yet formatted to CODE_WIDTH (scripts/format_notebooks.sh NAME, then wrap the
# long strings and comments by hand). Remove a name once its chapter passes.
PENDING: set[str] = set()


def stream(text, name="stderr"):
    return nbformat.v4.new_output("stream", name=name, text=text)


def bar(n, total=3, label="ablating heads"):
    return f"\r{label}: {100 * n // total:3d}%|{'#' * n}{' ' * (total - n)}| {n}/{total}"


# --- collapse_progress ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plain line\nanother\n", "plain line\nanother\n"),
        ("", ""),
        ("\r 0%\r50%\r100%", "100%"),
        ("\r 0%\r100%\n", "100%\n"),
        ("a\r\nb\r\n", "a\nb\n"),  # \r\n is a newline
        ("a\r\r\nb", "a\nb"),
        ("before\n\r1/2\r2/2\nafter\n", "before\n2/2\nafter\n"),
        ("done\r", "done"),  # a trailing \r overwrites nothing
        ("x\ry\nz\rw\n", "y\nw\n"),  # per line
    ],
)
def test_collapse_carriage_returns(text, expected):
    assert collapse_carriage_returns(text) == expected


def test_one_output_per_redraw_becomes_one_line():
    """The shape stored today: one stderr output per tqdm redraw, then tqdm's closing '\\n'."""
    redraws = [stream(bar(n)) for n in range(4)] + [stream(bar(3)), stream("\n")]
    result = collapse_outputs(redraws)
    assert len(result) == 1
    assert result[0]["name"] == "stderr"
    assert result[0]["text"] == bar(3)[1:] + "\n"


def test_other_outputs_and_their_order_are_kept():
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})
    result_output = nbformat.v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=1)
    outputs = [
        stream("1352 pairs\n", "stdout"),
        *[stream(bar(n)) for n in range(4)],
        stream("\n"),
        figure,
        stream("traced 6 facts in 305 s\n", "stdout"),
        result_output,
    ]
    result = collapse_outputs(outputs)
    assert [o["output_type"] for o in result] == ["stream", "stream", "display_data", "stream", "execute_result"]
    assert [o.get("text") for o in result if o["output_type"] == "stream"] == [
        "1352 pairs\n",
        bar(3)[1:] + "\n",
        "traced 6 facts in 305 s\n",
    ]
    assert result[2] is figure and result[4] is result_output


def test_interleaved_stdout_splits_the_streams():
    """Chapter 3's evaluation cell: stdout printed between the last redraw and tqdm's '\\n'. The lone
    '\\n' on stderr is dropped (rendered, it would be an empty stderr box); a blank stdout line is kept."""
    outputs = [stream(bar(n)) for n in range(4)] + [stream("50 edits evaluated\n", "stdout"), stream("\n")]
    result = collapse_outputs(outputs)
    assert [(o["name"], o["text"]) for o in result] == [
        ("stderr", bar(3)[1:]),
        ("stdout", "50 edits evaluated\n"),
    ]
    assert [o["text"] for o in collapse_outputs([stream("\n", "stdout")])] == ["\n"]


def test_stdout_and_stderr_are_not_merged():
    result = collapse_outputs([stream("a\n", "stdout"), stream("b\n", "stderr"), stream("c\n", "stdout")])
    assert [(o["name"], o["text"]) for o in result] == [("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n")]


def test_inputs_are_not_mutated_and_list_text_is_accepted():
    first = {"output_type": "stream", "name": "stderr", "text": ["\r 0%", "|"]}
    second = {"output_type": "stream", "name": "stderr", "text": "\r100%|\n"}
    result = collapse_outputs([first, second])
    assert result == [{"output_type": "stream", "name": "stderr", "text": "100%|\n"}]
    assert first["text"] == ["\r 0%", "|"] and second["text"] == "\r100%|\n"


def test_empty_streams_are_dropped():
    assert collapse_outputs([stream("\r")]) == []


def test_collapse_notebook_and_cli(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("for _ in tqdm(range(3)): pass")
    cell.outputs = [stream(bar(n)) for n in range(4)] + [stream("\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), cell, nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "synthetic.ipynb"
    nbformat.write(nb, path)

    collapse_progress.main([str(path)])
    assert "5 -> 1 outputs" in capsys.readouterr().out
    again = nbformat.read(path, 4)
    nbformat.validate(again)
    assert [o["text"] for o in again.cells[1].outputs] == [bar(3)[1:] + "\n"]
    assert collapse_notebook(again) == 0  # idempotent


def test_normalise_collapses_stored_outputs(tmp_path):
    """scripts/normalise_notebook.py (used by update_notebook_text.sh) collapses bars too."""
    import subprocess

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [stream(bar(n)) for n in range(4)] + [stream("\n")]
    nb.cells = [cell]
    path = tmp_path / "synthetic.ipynb"
    nbformat.write(nb, path)
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "normalise_notebook.py"), str(path)], check=True)
    assert [o["text"] for o in nbformat.read(path, 4).cells[0].outputs] == [bar(3)[1:] + "\n"]


_BAR_COUNT = re.compile(r"\| *(\d+)/(\d+) \[")  # tqdm's "| n/total [elapsed<remaining" on a bar line


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_stored_progress_bars_are_one_final_line(path):
    """Each progress bar of a stored chapter is stored as a terminal shows it when done: one line at n/total. A bar
    stored one update per output, or one update per line, renders as a staircase."""
    nb = nbformat.read(path, as_version=4)
    not_collapsed, unfinished = [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if collapse_outputs(cell.outputs) != cell.outputs:
            not_collapsed.append(index)
        for out in cell.outputs:
            if out.get("output_type") == "stream":
                unfinished += [(index, line[:60]) for line in out["text"].split("\n")
                               if (m := _BAR_COUNT.search(line)) and m.group(1) != m.group(2)]
    assert not not_collapsed, (f"{path.name}: cells {not_collapsed} store progress updates one per output or "
                               f"with \\r. Fix: python scripts/collapse_progress.py notebooks/{path.name}")
    assert not unfinished, f"{path.name}: progress lines short of their total (a staircase?): {unfinished[:5]}"


# --- stage_book ----------------------------------------------------------------------------------


def test_staged_book_renders_without_execution(tmp_path):
    staged = stage_book.stage(tmp_path / "book-src")
    config = yaml.safe_load((staged / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    for relative in ["_toc.yml", "book/references.bib", "book/_static/custom.css"]:
        assert (staged / relative).exists(), f"{relative} not staged"
    for doc in stage_book.toc_documents():
        source = stage_book.source_of(doc)
        assert (staged / source.relative_to(REPO_ROOT)).exists(), f"{doc} not staged"
        if source.suffix != ".ipynb":
            continue
        nb = nbformat.read(staged / source.relative_to(REPO_ROOT), 4)
        stored = nbformat.read(source, 4)
        assert len(nb.cells) == len(stored.cells)
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                if output["output_type"] == "stream":
                    assert "\r" not in output["text"], f"{doc}: a progress bar was not collapsed"


def test_chapters_are_listed_longest_first():
    chapters = stage_book.chapter_notebooks()
    toc_notebooks = {p for p in map(stage_book.source_of, stage_book.toc_documents()) if p.suffix == ".ipynb"}
    assert set(chapters) == toc_notebooks
    seconds = [stage_book.stored_run_seconds(p) for p in chapters]
    assert seconds == sorted(seconds, reverse=True)


# --- code width ----------------------------------------------------------------------------------

CELL_MARKER = re.compile(r"^# %%")


def code_lines(path):
    """(line number, line) of every line in the code cells of a jupytext percent script."""
    in_markdown = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if CELL_MARKER.match(line):
            in_markdown = "[markdown]" in line or "[md]" in line
            continue
        if not in_markdown:
            yield number, line


def chapter_sources():
    return sorted((REPO_ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))


def test_pending_lists_only_existing_chapters():
    names = {p.stem for p in chapter_sources()}
    assert PENDING <= names, f"PENDING names chapters that do not exist: {PENDING - names}"


def width_cases():
    pending = pytest.mark.xfail(strict=True, reason=f"in PENDING: not formatted to {CODE_WIDTH} columns yet")
    return [pytest.param(p, id=p.stem, marks=[pending] if p.stem in PENDING else []) for p in chapter_sources()]


# A PENDING chapter that passes fails (strict xfail): then remove it from PENDING.
@pytest.mark.parametrize("path", width_cases())
def test_code_lines_fit_the_rendered_column(path):
    too_wide = [f"{path.name}:{n}: {len(line)} characters: {line.strip()[:60]}..."
                for n, line in code_lines(path) if len(line) > CODE_WIDTH]
    assert not too_wide, (
        f"{len(too_wide)} code lines wider than the book's code column ({CODE_WIDTH} characters); run "
        f"scripts/format_notebooks.sh {path.stem} and wrap long strings and comments by hand:\n"
        + "\n".join(too_wide[:30])
    )


@pytest.mark.parametrize("path", chapter_sources() + sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")),
                         ids=lambda p: p.name)
def test_no_control_characters_in_chapters(path):
    """A stray control character (a Python "\\a" in "\\alpha" written without a raw string) breaks MathJax in the
    rendered page; tabs and newlines are the only ones allowed. Lines are split on "\\n" only: ``splitlines`` would
    also split on \\x0b, \\x0c and \\x1c-\\x1e and so hide them."""
    bad = [(n, repr(line.strip())[:70]) for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1)
           if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", line)]
    assert not bad, f"{path.name}: control characters on lines {bad[:5]}"


def test_format_script_uses_the_tested_width():
    script = (REPO_ROOT / "scripts" / "format_notebooks.sh").read_text()
    assert re.search(rf"^WIDTH=\"?\$\{{WIDTH:-{CODE_WIDTH}\}}\"?$", script, re.M), (
        f"scripts/format_notebooks.sh must default to WIDTH={CODE_WIDTH}, the width this test checks"
    )


# Chapters whose stored outputs still print lines wider than the column (issue: the rendered book as a reader
# sees it). Remove a name once its re-executed chapter passes.
OUTPUT_PENDING: set[str] = set()


def printed_text(output) -> str:
    """What the rendered page shows as monospace text: streams, and text/plain when nothing richer exists."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    if "text/plain" in data and not any(k in data for k in ("text/html", "text/markdown", "image/png")):
        return data["text/plain"]
    return ""


def output_cases():
    pending = pytest.mark.xfail(strict=True, reason="in OUTPUT_PENDING: not re-executed with fitted outputs yet")
    return [pytest.param(p, id=p.stem, marks=[pending] if p.stem in OUTPUT_PENDING else [])
            for p in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]


# An OUTPUT_PENDING chapter that passes fails (strict xfail): then remove it from OUTPUT_PENDING.
@pytest.mark.parametrize("path", output_cases())
def test_printed_outputs_fit_the_rendered_column(path):
    """Every printed line (progress bars included: make and the build scripts set TQDM_NCOLS) fits the column that
    the code fits, so the rendered page cuts nothing (editlens.display.LINE_WIDTH)."""
    from editlens.display import LINE_WIDTH, fits_the_column

    assert LINE_WIDTH == CODE_WIDTH, "outputs and code share the page's monospace column"
    nb = nbformat.read(path, as_version=4)
    wide = [f"cell {i}: {len(line)} characters: {line[:60]}..."
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.get("outputs", []) for line in fits_the_column(printed_text(out))]
    assert not wide, f"{path.name}: {len(wide)} printed lines wider than {LINE_WIDTH} characters:\n" + "\n".join(wide[:30])


def test_output_pending_lists_only_existing_chapters():
    names = {p.stem for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert OUTPUT_PENDING <= names


def test_chapter_times_page_is_current():
    """book/chapter-times.md (included by book/teaching.md) is what scripts/chapter_times.py reads from the stored
    runs now: no chapter time in the book is typed by hand."""
    import chapter_times

    assert chapter_times.PAGE.read_text(encoding="utf-8") == chapter_times.page(), (
        "book/chapter-times.md is stale; run .venv/bin/python scripts/chapter_times.py --write")


def test_float32_record_is_a_float32_run_of_every_chapter():
    """book/results/chapter-times-float32.json (the page's float32 columns) holds every chapter of _toc.yml, each
    run in float32 with as many exercise checks as its stored run, and names its machine and commit."""
    import json

    import chapter_times

    record = json.loads(chapter_times.FLOAT32_RECORD.read_text(encoding="utf-8"))
    stems = [p.stem for p in chapter_times.chapters()]
    assert list(record["chapters"]) == stems, "record the float32 run again: scripts/chapter_times.py --record-float32"
    for path in chapter_times.chapters():
        row = record["chapters"][path.stem]
        assert row["precision"].startswith("float32 throughout"), (path.stem, row["precision"])
        assert row["exercises"] == chapter_times.chapter_times(path)["exercises"], path.stem
        assert 0 < row["first"] <= row["last"] <= row["total"], (path.stem, row)
    assert record["machine"] and re.fullmatch(r"[0-9a-f]{7,}", record["commit"]), record


def test_record_float32_refuses_a_run_that_is_not_float32(tmp_path):
    """The stored runs computed in bfloat16: recording them as the float32 run fails and says why; so does a
    directory without the executed chapters."""
    import chapter_times

    with pytest.raises(SystemExit, match="not a float32 run"):
        chapter_times.record_float32(REPO_ROOT / "notebooks")
    with pytest.raises(SystemExit, match="is missing. Fix: run `make book`"):
        chapter_times.record_float32(tmp_path)
