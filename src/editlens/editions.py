"""Student and instructor editions of the chapters: one source, two notebooks (as ARENA and Neuromatch do).

Taught in: Teaching with this book (book/teaching.md).

Every exercise of a chapter is three code cells (see :mod:`editlens.exercises`):

1. the **stub** ``def f(...): ... raise NotImplementedError``;
2. the **solution**, tagged ``hide-input`` (``jupyter.source_hidden``), first line ``# Solution``,
   defining ``f_solution``;
3. the **check**, a later cell calling ``f = check_exercise("N.M f", f, f_solution, test_f)``.

:func:`student_edition` replaces each solution cell by the one line
``f_solution = None  # removed in the student edition`` (``check_exercise`` then fails while the stub
is not done, instead of falling back to the solution) and clears the outputs of the cells that
depend on an exercise. :func:`instructor_edition` is the chapter with the solutions un-hidden.
Both are pure transforms of an ``nbformat`` notebook: nothing is maintained twice.
"""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

SOLUTION_MARKER = "# Solution"
HIDE_TAG = "hide-input"
REMOVED_TAG = "solution-removed"
PLACEHOLDER_COMMENT = "# removed in the student edition"
_SOLUTION_DEF = re.compile(r"^\s*def\s+(\w+)_solution\s*\(", re.MULTILINE)
_CHECK_CALL = re.compile(r"check_exercise\(\s*[\"']([^\"']+)[\"']\s*,\s*(\w+)\s*,\s*(\w+)\s*,")


@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook: its name (``"4.1 anchor_vectors"``), function and cell indices."""

    name: str
    function: str
    stub: int
    solution: int
    check: int

    @property
    def number(self) -> str:
        """``"4.1"`` of ``"4.1 anchor_vectors"``."""
        return self.name.split()[0]


def placeholder_source(function: str) -> str:
    """The student edition's stand-in for the solution cell of ``function``."""
    return f"{function}_solution = None  {PLACEHOLDER_COMMENT}"


def _is_solution_cell(cell) -> str | None:
    """The exercise function's name if ``cell`` is a solution cell (chapter or placeholder), else None."""
    if cell.cell_type != "code":
        return None
    src = cell.source.lstrip()
    if src.startswith(SOLUTION_MARKER):
        m = _SOLUTION_DEF.search(src)
        return m.group(1) if m else None
    m = re.fullmatch(r"(\w+)_solution = None\s+" + re.escape(PLACEHOLDER_COMMENT), src.strip())
    return m.group(1) if m else None


def exercises(nb) -> list[Exercise]:
    """The exercises of ``nb`` in the order of their solution cells (chapter, student or instructor edition).

    Raises ``ValueError`` when a solution cell has no stub before it or no check after it.
    """
    found = []
    for i, cell in enumerate(nb.cells):
        fn = _is_solution_cell(cell)
        if fn is None:
            continue
        stub_re = re.compile(rf"^\s*def\s+{re.escape(fn)}\s*\(", re.MULTILINE)
        stub = next((j for j in range(i - 1, -1, -1)
                     if nb.cells[j].cell_type == "code" and stub_re.search(nb.cells[j].source)), None)
        check: int | None = None
        name = ""  # set with check
        for j in range(i + 1, len(nb.cells)):
            if nb.cells[j].cell_type != "code":
                continue
            m = _CHECK_CALL.search(nb.cells[j].source)
            if m and m.group(2) == fn and m.group(3) == f"{fn}_solution":
                check, name = j, m.group(1)
                break
        if stub is None or check is None:
            raise ValueError(f"exercise {fn!r} (solution cell {i}) has no "
                             f"{'stub cell before it' if stub is None else 'check_exercise cell after it'}")
        found.append(Exercise(name=name, function=fn, stub=stub, solution=i, check=check))
    return found


def _names(source: str) -> tuple[set[str], set[str]] | None:
    """(names a cell defines, names it reads), or None when it is not plain Python (magics)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    defined: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:  # d[k] = v and obj.attr = v change d and obj
                while isinstance(t, (ast.Subscript, ast.Attribute)):
                    t = t.value
                if isinstance(t, ast.Name):
                    defined.add(t.id)
    return defined, used


def exercise_dependent_cells(nb, found: list[Exercise] | None = None) -> list[int]:
    """Code cells whose outputs depend on an exercise: its stub and check cells and every later cell that
    reads (transitively) a name defined by one of them. A cell that ``ast`` cannot parse is counted in.

    Static analysis: a name changed only through a method call in a dependent cell (``x.append(...)``) is
    not followed; the check cells and what they define, the common case in the chapters, are.
    """
    found = exercises(nb) if found is None else found
    if not found:
        return []
    tainted: set[str] = set()
    sources = {e.stub for e in found} | {e.check for e in found}
    dependent = []
    for i in range(min(e.stub for e in found), len(nb.cells)):
        cell = nb.cells[i]
        if cell.cell_type != "code" or i in {e.solution for e in found}:
            continue
        names = _names(cell.source)
        if i in sources or names is None or names[1] & tainted:
            dependent.append(i)
            if names is not None:
                tainted |= names[0]
    return dependent


def _clear(cell) -> None:
    cell.outputs = []
    cell.execution_count = None


def student_edition(nb, chapter: str | None = None):
    """A copy of chapter ``nb`` to hand out: solution cells replaced by ``f_solution = None`` placeholders
    (tagged ``solution-removed``), outputs of exercise-dependent cells cleared, and notebook metadata
    ``editlens: {edition: student, chapter: ...}`` for the grader. Every other cell is unchanged.
    """
    out = copy.deepcopy(nb)
    found = exercises(out)
    for i in exercise_dependent_cells(out, found):
        _clear(out.cells[i])
    for e in found:
        old = out.cells[e.solution]
        new = nbformat.v4.new_code_cell(placeholder_source(e.function))
        new.metadata["tags"] = [REMOVED_TAG]
        if "id" in old:
            new["id"] = old["id"]
        out.cells[e.solution] = new
    out.metadata["editlens"] = {"edition": "student", "chapter": chapter,
                                "exercises": [e.name for e in found]}
    return out


def instructor_edition(nb, chapter: str | None = None):
    """A copy of chapter ``nb`` with the solution cells shown (no ``hide-input`` tag, no ``source_hidden``)."""
    out = copy.deepcopy(nb)
    for e in exercises(out):
        meta = out.cells[e.solution].metadata
        tags = [t for t in meta.get("tags", []) if t != HIDE_TAG]
        if tags:
            meta["tags"] = tags
        else:
            meta.pop("tags", None)
        jup = meta.get("jupyter", {})
        jup.pop("source_hidden", None)
        if not jup:
            meta.pop("jupyter", None)
    out.metadata["editlens"] = {"edition": "instructor", "chapter": chapter}
    return out


def chapters(chapter_dir: str | Path = "notebooks") -> list[Path]:
    """The chapter notebooks ``NN_*.ipynb`` of ``chapter_dir``, in order."""
    return sorted(p for p in Path(chapter_dir).glob("[0-9][0-9]_*.ipynb"))


def write_editions(edition: str, out_dir: str | Path, chapter_dir: str | Path = "notebooks") -> list[Path]:
    """Write the ``edition`` (``"student"`` or ``"instructor"``) of every chapter into ``out_dir``."""
    make = {"student": student_edition, "instructor": instructor_edition}[edition]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters(chapter_dir):
        nb = nbformat.read(path, as_version=4)
        target = out_dir / path.name
        nbformat.write(make(nb, chapter=path.stem), target)
        written.append(target)
    return written
