"""The type checker runs in `make test`: mypy (pinned in pyproject.toml's test extra) finds no error in src/editlens.

Its settings are pyproject.toml's ``[tool.mypy]`` (``make typecheck`` runs the same). The run-time half of the
types, jaxtyping's shapes checked by beartype on every call, is installed by tests/conftest.py (SHAPE_CHECKED).
"""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO_ROOT, SHAPE_CHECKED


def test_mypy_finds_no_error_in_the_package():
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (
        "mypy (pyproject.toml [tool.mypy], `make typecheck`) reports errors in src/editlens:\n"
        f"{run.stdout}{run.stderr}"
    )


def test_every_module_that_declares_shapes_is_shape_checked():
    src = REPO_ROOT / "src"
    declaring = sorted(".".join(p.relative_to(src).with_suffix("").parts) for p in (src / "editlens").rglob("*.py")
                       if re.search(r"\b(Float|Int|Bool|Shaped|Num)\[", p.read_text(encoding="utf-8")))
    unchecked = [m for m in declaring if not any(m == c or m.startswith(c + ".") for c in SHAPE_CHECKED)]
    assert declaring and not unchecked, (
        f"{unchecked} declare jaxtyping shapes but tests/conftest.py's SHAPE_CHECKED does not list them "
        "(their shapes go unchecked at run time). Fix: add them there.")
