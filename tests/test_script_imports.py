"""Every name that the scripts, benchmarks and chapter sources import from the package exists (fast; no model).

mypy checks ``src/editlens`` only, and a script imports inside the function that needs it, so a name the package
drops or renames would break a script only when someone runs it: ``scripts/author_facts.py`` kept importing two
classes for a session after they were merged into ``RewriteRequest``. This reads each file's ``from editlens...
import ...`` statements, at any depth, and resolves them.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from conftest import REPO_ROOT

FOLDERS = ("scripts", "benchmarks", "notebooks/src")
FILES = sorted(p for folder in FOLDERS for p in (REPO_ROOT / folder).glob("*.py"))


def package_imports(path: Path) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` of every ``from editlens... import name`` in the file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "editlens":
            found += [(node.lineno, str(node.module), alias.name) for alias in node.names]
    return found


def missing_names(path: Path) -> list[str]:
    """The imports of ``path`` that do not resolve, as ``file:line module.name``."""
    missing = []
    for line, module, name in package_imports(path):
        where = f"{path.relative_to(path.parents[1])}:{line} {module}.{name}"
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            missing.append(where)
            continue
        if hasattr(mod, name):
            continue
        try:  # a submodule not yet imported by its package
            importlib.import_module(f"{module}.{name}")
        except ModuleNotFoundError:
            missing.append(where)
    return missing


def test_the_files_are_found():
    assert len(FILES) > 20 and any(p.name == "author_facts.py" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_name_imported_from_the_package_exists(path):
    missing = missing_names(path)
    assert not missing, f"these imports name what the package does not have (rename or remove them): {missing}"


def test_a_removed_name_is_caught(tmp_path):
    """The check can fail: the import that scripts/author_facts.py had, nested in a function."""
    script = tmp_path / "scripts" / "old.py"
    script.parent.mkdir()
    script.write_text("def f():\n    from editlens.data.counterfact import RequestedRewrite, CounterFactRecord\n")
    assert missing_names(script) == ["scripts/old.py:2 editlens.data.counterfact.RequestedRewrite"]
