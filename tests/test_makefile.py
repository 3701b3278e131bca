"""`make test`, README's test command and CI's, expands to a well-formed pytest command (fast; runs nothing).

A Makefile variable that loses its definition expands to nothing without a word from make: CI once ran
``pytest -n  --dist loadfile`` and failed at argument parsing. ``make -n`` prints the command without running it.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_runs_every_chapter_and_the_tests_with_a_worker_count():
    out = subprocess.run(["make", "-n", "test"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if "-m pytest" in l)
    assert re.search(r" -n \d+ ", line), f"pytest's worker count is missing: {line}"
    chapters = sorted(p.name for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert chapters and all(f"notebooks/{c}" in line for c in chapters), f"a chapter is not replayed: {line}"
    assert line.rstrip().endswith("tests/")


def test_every_chapter_is_replayed_where_the_cpu_has_native_bf16():
    from conftest import chapters_not_replayed

    assert chapters_not_replayed(True) == {}
    assert chapters_not_replayed(False, "all") == {}


def test_without_native_bf16_the_long_chapters_are_skipped_with_their_reason():
    """The rule reads the stored runs: the chapters over FLOAT32_REPLAY_MINUTES, and only they, are named."""
    from conftest import FLOAT32_REPLAY_MINUTES, chapters_not_replayed, stored_times

    skipped = chapters_not_replayed(False)
    minutes = {p.stem: stored_times(p)["total"] / 60
               for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(skipped) == {c for c, m in minutes.items() if m > FLOAT32_REPLAY_MINUTES}
    assert skipped and len(skipped) <= 3, f"most chapters must still be replayed on a float32 CPU: {sorted(skipped)}"
    assert all("EDITLENS_REPLAY=all" in why for why in skipped.values())
    with pytest.raises(ValueError, match="EDITLENS_REPLAY"):
        chapters_not_replayed(False, "some")
