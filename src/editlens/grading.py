"""Grade a submitted student notebook: execute it offline and report each exercise as passed or failed.

Taught in: Teaching with this book (book/teaching.md). Command line: ``python -m editlens grade FILE``.

The submission (a student edition from ``make student``, see :mod:`editlens.editions`) is rebuilt
before it runs: each solution placeholder and each check cell is taken back from the chapter, so a
failed exercise falls back to the solution (later exercises are graded on their own) and an edited
test cannot pass a wrong answer. The notebook runs up to the last exercise's check cell (the cells
after it are not graded), in a fresh kernel with the model hub offline, with ``$EDITLENS_GRADE_LOG``
set so that :func:`editlens.exercises.check_exercise` logs each outcome.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from editlens.editions import Exercise, chapters, exercises
from editlens.exercises import GRADE_LOG_ENV

STATUSES = ("passed", "failed", "not attempted", "error")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class GradingError(Exception):
    """A submission that cannot be graded (missing, not a notebook, unknown chapter, no exercises)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}. Fix: {fix}")


@dataclass
class ExerciseResult:
    """One row of the grade table."""

    exercise: str
    status: str
    message: str = ""


@dataclass
class GradeReport:
    """The grade of one submission."""

    submission: str
    chapter: str
    results: list[ExerciseResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(r.status == "passed" for r in self.results)

    @property
    def all_passed(self) -> bool:
        return bool(self.results) and self.passed == len(self.results)

    def to_dict(self) -> dict:
        return {"submission": self.submission, "chapter": self.chapter, "passed": self.passed,
                "total": len(self.results), "seconds": round(self.seconds, 1),
                "results": [asdict(r) for r in self.results]}

    def table(self) -> str:
        """A plain-text table: exercise, status, message."""
        w = max([len("exercise")] + [len(r.exercise) for r in self.results])
        lines = [f"{'exercise':<{w}}  {'status':<13}  message", f"{'-' * w}  {'-' * 13}  {'-' * 7}"]
        lines += [f"{r.exercise:<{w}}  {r.status:<13}  {r.message}" for r in self.results]
        lines.append(f"{self.passed}/{len(self.results)} passed ({self.chapter}, {self.seconds:.0f} s)")
        return "\n".join(lines)


def default_chapter_dir() -> Path:
    """``notebooks/`` of the repository this package is installed from (editable install), else ``./notebooks``."""
    repo = Path(__file__).resolve().parents[2] / "notebooks"
    return repo if repo.is_dir() else Path("notebooks")


def read_submission(path: str | Path):
    """The submitted notebook, or :class:`GradingError` naming what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise GradingError(f"{path}: no such file", "pass the path of the student's .ipynb file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GradingError(f"{path} is not JSON ({err})",
                           "pass a Jupyter notebook (.ipynb) saved from the student edition") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or "nbformat" not in data:
        raise GradingError(f"{path} is JSON but not a Jupyter notebook (no 'cells' or 'nbformat')",
                           "pass a Jupyter notebook (.ipynb) saved from the student edition")
    try:
        return nbformat.reads(json.dumps(data), as_version=4)
    except Exception as err:  # nbformat's validation and conversion errors
        raise GradingError(f"{path} is not a readable notebook ({type(err).__name__}: {err})",
                           "pass a Jupyter notebook (.ipynb) saved from the student edition") from None


def find_chapter(nb, path: str | Path, chapter_dir: str | Path) -> Path:
    """The chapter a submission comes from: its ``editlens.chapter`` metadata, else the longest chapter
    name its file name starts with (``04_steam_alice.ipynb`` -> ``04_steam``)."""
    known = {p.stem: p for p in chapters(chapter_dir)}
    if not known:
        raise GradingError(f"no chapter notebooks NN_*.ipynb in {chapter_dir}",
                           "pass --chapter-dir the book's notebooks/ folder")
    name = (nb.metadata.get("editlens") or {}).get("chapter")
    if not name:
        stem = Path(path).stem
        name = max((k for k in known if stem.startswith(k)), key=len, default=None)
    if name not in known:
        raise GradingError(f"unknown chapter {name!r} for {Path(path).name} (chapters: {', '.join(sorted(known))})",
                           "grade a notebook written by `make student`, or name the file after its chapter, "
                           "e.g. 00_meet_the_model_alice.ipynb")
    return known[name]


def graded_notebook(submission, chapter) -> tuple[nbformat.NotebookNode, list[Exercise]]:
    """The notebook that runs: the submission with the chapter's solution and check cells put back,
    outputs cleared, cut after the last check. Also the submission's exercises (indices into it)."""
    try:
        sub_ex = exercises(submission)
    except ValueError as err:
        raise GradingError(f"the submission's exercise cells were changed: {err}",
                           "keep each exercise's stub, solution placeholder and check cells") from None
    if not sub_ex:
        raise GradingError("the submission has no exercises (no solution placeholder or check_exercise cell)",
                           "grade a notebook written by `make student`")
    chapter_ex = {e.name: e for e in exercises(chapter)}
    nb = copy.deepcopy(submission)
    for e in sub_ex:
        ce = chapter_ex.get(e.name)
        if ce is None:
            continue  # not one of the chapter's exercises: runs as the student wrote it
        nb.cells[e.solution] = copy.deepcopy(chapter.cells[ce.solution])
        nb.cells[e.check] = copy.deepcopy(chapter.cells[ce.check])
    nb.cells = nb.cells[: max(e.check for e in sub_ex) + 1]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb, sub_ex


def _error_of(cell) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}".strip().rstrip(":")
    return None


def execute(nb, cwd: str | Path, timeout: int, log_path: str | Path) -> str | None:
    """Run ``nb`` in place in a fresh kernel (errors recorded in the cells); the error that stopped it, if any."""
    from nbclient import NotebookClient

    env = {**os.environ, **OFFLINE_ENV, GRADE_LOG_ENV: str(log_path)}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    client = NotebookClient(nb, timeout=timeout, interrupt_on_timeout=True, allow_errors=True,
                            kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(env=env)
    except Exception as err:  # a dead kernel, a kernel that did not start
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")
    return None


def grade(path: str | Path, chapter_dir: str | Path | None = None, timeout: int = 600) -> GradeReport:
    """Grade the student notebook at ``path`` (``timeout`` seconds per cell)."""
    chapter_dir = Path(chapter_dir) if chapter_dir is not None else default_chapter_dir()
    submission = read_submission(path)
    chapter_path = find_chapter(submission, path, chapter_dir)
    chapter = nbformat.read(chapter_path, as_version=4)
    nb, sub_ex = graded_notebook(submission, chapter)
    report = GradeReport(submission=str(path), chapter=chapter_path.stem)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="editlens-grade-") as tmp:
        log_path = Path(tmp) / "grades.jsonl"
        stopped = execute(nb, chapter_path.parent.resolve(), timeout, log_path)
        logged: dict[str, dict[str, Any]] = {}
        if log_path.exists():
            for line in log_path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                logged.setdefault(entry["name"], entry)
    report.seconds = time.perf_counter() - start
    for e in sub_ex:
        if e.name in logged:
            report.results.append(ExerciseResult(e.name, logged[e.name]["status"], logged[e.name]["message"]))
            continue
        own = _error_of(nb.cells[e.stub]) or _error_of(nb.cells[e.check])
        if own and own.startswith("KeyboardInterrupt"):
            own = f"the cell ran past the {timeout} s per-cell timeout and was interrupted"
        earlier = next((f"cell {i}: {err}" for i in range(e.check) if (err := _error_of(nb.cells[i]))), None)
        if own:
            message = f"error: {own}"
        else:
            message = f"error: the notebook stopped before this check: {stopped or earlier or 'the check did not run'}"
        report.results.append(ExerciseResult(e.name, "error", message))
    names = {e.name for e in sub_ex}
    for e in exercises(chapter):
        if e.name not in names:
            report.results.append(ExerciseResult(e.name, "error", "error: its cells are missing from the submission"))
    return report
