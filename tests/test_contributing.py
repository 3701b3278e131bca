"""book/contributing.md's checklist holds: every chapter in notebooks/ is named wherever a chapter must be (fast)."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO_ROOT

CHAPTERS = sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _read(path: str) -> str:
    return (REPO_ROOT / path).read_text(encoding="utf-8")


def _toc_files() -> list[str]:
    toc = yaml.safe_load(_read("_toc.yml"))
    return [c["file"] for part in toc["parts"] for c in part.get("chapters", [])]


@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_chapter_is_named_where_a_chapter_must_be(stem: str):
    number = int(stem[:2])
    missing = []
    if f"notebooks/{stem}" not in _toc_files():
        missing.append("_toc.yml")
    if not (REPO_ROOT / "notebooks" / "src" / f"{stem}.py").exists():
        missing.append(f"notebooks/src/{stem}.py")
    if not re.search(rf"^\| {number} \|", _read("README.md"), re.M):
        missing.append("README.md's chapter table")
    if f"../notebooks/{stem}>" not in _read("book/intro.md"):
        missing.append("book/intro.md's chapter table")
    teaching = _read("book/teaching.md")
    if f"../notebooks/{stem}>" not in teaching or not re.search(rf"^### Module {number}\b", teaching, re.M):
        missing.append("book/teaching.md (course plan row and Module section)")
    if f'"{stem}"' not in _read("benchmarks/bench_chapters.py"):
        missing.append("benchmarks/bench_chapters.py ORDER")
    assert not missing, f"{stem} is missing from: {missing} (book/contributing.md lists what to add)"


def test_chapter_times_page_lists_every_chapter():
    page = _read("book/chapter-times.md")
    assert page.count("\n| ") - 1 == len(CHAPTERS) + 1, "book/chapter-times.md: one row per chapter and a total"


def test_contributing_page_is_in_the_book():
    assert "book/contributing" in _toc_files()
