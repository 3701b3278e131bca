"""book/contributing.md's two checklists hold (fast; no model, no notebook run).

- Add a chapter: every chapter notebook in notebooks/ is named in every place of the page's table "The places that
  name every chapter" (a failure names the chapter and the place to add it), those places name no chapter that does
  not exist, the number of chapters in words is right, and the tables of the tests that name some chapters name only
  existing ones.
- Add an editing method: every method of the registry (editlens.methods) has its packages, is accepted by the option
  parsers of ``edit`` and ``compare`` with each of its options (parsed and checked, nothing loaded), names an
  existing chapter, and is in the page's table of methods; the loss-term API the page describes exists.
- The page itself: every file it names exists, every ``editlens.*`` name it gives resolves, and it is in _toc.yml.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import stage_book  # noqa: E402  (stored run times, as make book reads them)

PAGE = "book/contributing.md"
CHAPTERS = sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NUMBERS = {int(stem[:2]): stem for stem in CHAPTERS}
LONG_SECONDS = 180
"""A chapter whose stored run takes longer goes into the Makefile's LONG_CHAPTERS (the page says 3 minutes)."""
WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()


def _read(path: str) -> str:
    return (REPO_ROOT / path).read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The page's text from the line ``title`` starts to the next heading of the same or a higher level."""
    page = _read(PAGE)
    start = page.index(title)
    level = len(title) - len(title.lstrip("#"))
    rest = page[start + len(title):]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return title + (rest[:end.start()] if end else rest)


def _table_after(text: str, marker: str) -> list[list[str]]:
    """The cells of the Markdown table that follows ``marker`` in ``text`` (header and rule left out)."""
    lines = text[text.index(marker):].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _toc_files() -> list[str]:
    toc = yaml.safe_load(_read("_toc.yml"))
    return [c["file"] for part in toc["parts"] for c in part.get("chapters", [])]


def _long_chapters() -> list[str]:
    line = next(l for l in _read("Makefile").splitlines() if l.startswith("LONG_CHAPTERS"))
    return line.split("=", 1)[1].split()


def _links(path: str) -> set[str]:
    """The chapters a book page links to with {doc}`... <../notebooks/STEM>`."""
    return set(re.findall(r"\.\./notebooks/([0-9][0-9]_\w+)>", _read(path)))


# --- add a chapter: the places that name every chapter ------------------------------------------------------------
# place (as the page's table names it) -> (does it name the chapter?, what to add there)
PLACES: dict[str, tuple[Callable[[str], bool], str]] = {
    "notebooks/src/": (lambda stem: (REPO_ROOT / "notebooks" / "src" / f"{stem}.py").exists(),
                       "the jupytext source notebooks/src/{stem}.py"),
    "_toc.yml": (lambda stem: f"notebooks/{stem}" in _toc_files(), "`- file: notebooks/{stem}` under Chapters"),
    "README.md": (lambda stem: re.search(rf"^\| {int(stem[:2])} \|", _read("README.md"), re.M) is not None,
                  "a row `| {number} | topic | available |` of the chapter table"),
    "book/intro.md": (lambda stem: stem in _links("book/intro.md"),
                      "a row of the chapter table linking {{doc}}`Chapter {number} <../notebooks/{stem}>`"),
    "book/teaching.md": (lambda stem: stem in _links("book/teaching.md") and re.search(
        rf"^### Module {int(stem[:2])}\b", _read("book/teaching.md"), re.M) is not None,
        "a row of the course plan linking ../notebooks/{stem} and a section `### Module {number}: ...`"),
    "book/chapter-times.md": (lambda stem: re.search(rf"^\| {int(stem[:2])}\. ", _read("book/chapter-times.md"),
                                                     re.M) is not None,
                              "its row: run .venv/bin/python scripts/chapter_times.py --write"),
    "Makefile": (lambda stem: f"notebooks/{stem}.ipynb" in _long_chapters()
                 or stage_book.stored_run_seconds(REPO_ROOT / "notebooks" / f"{stem}.ipynb") <= LONG_SECONDS,
                 "notebooks/{stem}.ipynb in LONG_CHAPTERS (its stored run takes more than 3 minutes), by its time"),
}


def test_there_are_chapters_numbered_from_zero_without_gaps():
    assert CHAPTERS, "no chapter notebooks notebooks/NN_*.ipynb"
    assert sorted(NUMBERS) == list(range(len(CHAPTERS))) and len(NUMBERS) == len(CHAPTERS), (
        f"chapters must be numbered 00, 01, ... without gaps or repeats: {CHAPTERS}")


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_chapter_is_named_where_a_chapter_must_be(stem: str, place: str):
    named, what = PLACES[place]
    assert named(stem), (f"chapter {stem} is missing from {place}. Fix: add "
                         f"{what.format(stem=stem, number=int(stem[:2]))} ({PAGE}, 'Add a chapter').")


def test_the_page_lists_the_places_this_test_checks():
    table = _table_after(_section("## Add a chapter"), "**The places that name every chapter**")
    on_page = [row[0].strip("`") for row in table]
    assert sorted(on_page) == sorted(PLACES), (
        f"{PAGE}'s table of places {on_page} and this test's PLACES {sorted(PLACES)} must list the same places")


def test_the_places_name_no_chapter_that_does_not_exist():
    stale = {
        "_toc.yml": {f[len("notebooks/"):] for f in _toc_files() if f.startswith("notebooks/")} - set(CHAPTERS),
        "README.md": {int(n) for n in re.findall(r"^\| (\d+) \|", _read("README.md"), re.M)} - set(NUMBERS),
        "book/intro.md": _links("book/intro.md") - set(CHAPTERS),
        "book/teaching.md": (_links("book/teaching.md") - set(CHAPTERS)) | (
            {int(n) for n in re.findall(r"^### Module (\d+)", _read("book/teaching.md"), re.M)} - set(NUMBERS)),
        "Makefile LONG_CHAPTERS": {p for p in _long_chapters() if not (REPO_ROOT / p).exists()},
    }
    assert not any(stale.values()), f"entries for chapters that do not exist (renamed or removed?): {stale}"


def test_every_chapter_source_has_its_notebook():
    sources = [p for p in (REPO_ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py") if ".draft" not in p.name]
    missing = [p.name for p in sources if p.stem not in CHAPTERS]
    assert not missing, f"sources without a stored notebook: {missing}. Fix: scripts/build_notebook.sh NN_name"


@pytest.mark.parametrize("path", ["README.md", "book/intro.md", "book/teaching.md"])
def test_the_number_of_chapters_in_words_is_right(path: str):
    expected = WORDS[len(CHAPTERS)]
    said = re.findall(r"\b(" + "|".join(WORDS) + r") (chapters|modules)\b", _read(path), re.I)
    wrong = [" ".join(s) for s in said if s[0].lower() != expected]
    assert not wrong, f"{path} says {wrong}, but there are {expected} chapters. Fix: say {expected}."


def _table_keys(path: str, name: str) -> set[str]:
    """The string keys of the dict (or the items of the set) assigned to ``name`` at the top of a test module."""
    tree = ast.parse(_read(path))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(
            node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == name:
            value = node.value
            items = value.keys if isinstance(value, ast.Dict) else value.elts if isinstance(value, ast.Set) else []
            return {k.value for k in items if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    raise AssertionError(f"{path} no longer assigns {name}; update {PAGE} and this test")


@pytest.mark.parametrize("path, name", [
    ("tests/test_notebooks.py", "OVERRIDES"),
    ("tests/test_teaching.py", "STUDENT_RUN_PARAMETERS"),
    ("tests/test_prose_numbers.py", "ELSEWHERE"),
    ("tests/test_notebook_tools.py", "PENDING"),
    ("tests/test_notebook_tools.py", "OUTPUT_PENDING"),
    ("tests/test_book_build.py", "LAYOUT_PENDING"),
])
def test_tables_of_the_tests_name_only_existing_chapters(path: str, name: str):
    assert f"`{path}`" in _read(PAGE) and f"`{name}`" in _read(PAGE), f"{PAGE} must name {path} {name}"
    keys = _table_keys(path, name)
    chapters = {k.removeprefix("notebooks/") for k in keys if not k.startswith("book/")}  # a page is no chapter
    stale = sorted(chapters - set(CHAPTERS))
    assert not stale, f"{path} {name} names chapters that do not exist: {stale} (renamed or removed?)"


# --- add an editing method -----------------------------------------------------------------------------------------
SAMPLE_VALUES = {"--steam-lambda": "0.5", "--steam-layers": "5-20", "--anchors": "4", "--steam-anchors": "reference",
                 "--steam-align": "centred", "--anchor-data": "facts.json", "--sadr-gamma": "0.01"}
"""A valid value of each option flag of the registry (methods.OPTIONS), to give it to the parsers."""


def _methods():
    from editlens import methods

    return methods


def _method_names() -> list[str]:
    return list(_methods().NAMES)


def _flags(method) -> list[str]:
    missing = [o.flag for o in method.options if o.flag not in SAMPLE_VALUES]
    assert not missing, f"no sample value for {missing}. Fix: add one to SAMPLE_VALUES in {__file__}"
    return [x for o in method.options for x in (o.flag, SAMPLE_VALUES[o.flag])]


@pytest.mark.parametrize("name", _method_names())
def test_edit_accepts_every_method_with_its_options(name: str):
    from editlens import cli
    from editlens.cli import edit

    method = _methods().get(name)
    args = cli.build_parser().parse_args(["edit", "--method", name, *_flags(method)])
    settings = edit.check(args)  # parsed and checked; nothing is loaded
    assert settings.methods == (name,)
    assert all(settings.uses(part) for part in method.parts)


@pytest.mark.parametrize("name", _method_names())
def test_compare_accepts_every_method_with_its_options(name: str, tmp_path: Path):
    from editlens import cli
    from editlens.cli import compare

    method = _methods().get(name)
    chosen = "rome" if name == "rome" else f"rome,{name}"
    args = cli.build_parser().parse_args(["compare", "--methods", chosen, "--out", str(tmp_path / "out"),
                                          *_flags(method)])
    settings, _ = compare.check(args)
    assert name in settings.methods


@pytest.mark.parametrize("name", _method_names())
def test_every_method_has_its_packages_and_its_chapter(name: str):
    methods = _methods()
    method = methods.get(name)
    assert set(method.parts) <= set(methods.PARTS), f"{name}: parts {method.parts} not in methods.PARTS"
    for part in ("rome", *method.parts):
        assert (REPO_ROOT / "src" / "editlens" / part / "editor.py").exists(), (
            f"{name}: no package src/editlens/{part}/ with an editor.py ({PAGE}, 'Add an editing method', step 1)")
        package = importlib.import_module(f"editlens.{part}")
        if part != "rome":
            absent = [f for f in (f"{part}_terms", f"{part}_editor") if not callable(getattr(package, f, None))]
            assert not absent, f"{name}: editlens.{part} does not export {absent}"
    assert callable(importlib.import_module("editlens.rome.editor").rome_editor)
    number = re.fullmatch(r"Chapter (\d+)", method.taught_in)
    page = re.fullmatch(r"page (book/[\w-]+)\.md", method.taught_in)
    toc = (REPO_ROOT / "_toc.yml").read_text(encoding="utf-8")
    assert (number and int(number.group(1)) in NUMBERS) or (page and f"- file: {page.group(1)}\n" in toc), (
        f"{name}: taught_in {method.taught_in!r} is neither a chapter nor a page of _toc.yml")


def test_the_page_lists_the_methods_of_the_registry():
    methods = _methods()
    rows = _table_after(_section("## Add an editing method"), "The methods now")
    assert [r[0].strip("`") for r in rows] == list(methods.NAMES), (
        f"{PAGE}'s table of methods must list the registry's methods in order: {methods.NAMES}")
    for row in rows:
        method = methods.get(row[0].strip("`"))
        assert row[1] == method.label and row[4] == method.taught_in, (row, method)
    labels = [m.label for m in methods.REGISTRY.values()]
    assert len(set(labels)) == len(labels), f"labels must be unique: {labels}"


def test_the_loss_term_api_the_page_describes_exists():
    from editlens.rome import values

    section = _section("## Add an editing method")
    for attribute in ("name", "hook_names", "weight", "prepare", "positions", "extra_rows", "stop_below",
                      "__call__"):
        assert hasattr(values.LossTerm, attribute), f"LossTerm has no {attribute}"
        assert f"`{attribute}" in section or attribute == "__call__", f"{PAGE} does not describe LossTerm.{attribute}"
    context = {f.name for f in dataclasses.fields(values.VContext)} | set(dir(values.VContext))
    for attribute in ("acts", "initial", "batch", "logits_at", "at"):
        assert attribute in context, f"VContext has no {attribute}"
    assert callable(values.VBatch.rows_of) and callable(values.check_terms)
    assert "nll" in values.RESERVED_NAMES


# --- the page ------------------------------------------------------------------------------------------------------
PLACEHOLDER = re.compile(r"NN|NAME|\.\.\.")


def _code_spans() -> list[str]:
    text = re.sub(r"```.*?```", " ", _read(PAGE), flags=re.S)
    return re.findall(r"`([^`\n]+)`", text)


def test_the_files_the_page_names_exist():
    missing = []
    for span in _code_spans():
        path, _, function = span.partition("::")
        if PLACEHOLDER.search(span) or " " in span or "/" not in path or path.startswith("../"):
            continue
        if not (REPO_ROOT / path).exists():
            missing.append(path)
        elif function and f"def {function}(" not in _read(path):
            missing.append(span)
    assert not missing, f"{PAGE} names files or tests that do not exist: {missing}"


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_names_the_page_gives_exist():
    missing = []
    for span in _code_spans():
        name = span.split("(")[0]
        if name.startswith("methods."):
            name = "editlens." + name
        if not re.fullmatch(r"editlens(\.\w+)+", name):
            continue
        try:
            _resolve(name)
        except (AttributeError, ModuleNotFoundError):
            missing.append(name)
    assert not missing, f"{PAGE} names what the package does not have: {missing}"


def test_contributing_page_is_in_the_book():
    assert "book/contributing" in _toc_files()
