"""The installed environment is the pinned one.

The chapters are written against TransformerLens 4 and exact library versions; a different
version shifts numbers that nbval checks, or breaks the hook names. (tests/conftest.py also stops
the whole session at start-up when TransformerLens is not 4.x.)
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO_ROOT

FIX = "Fix: run `make setup` (it reinstalls when pyproject.toml changes), or pip install -e '.[book,test,dev]'."


def pinned_requirements() -> list[Requirement]:
    """All requirements of pyproject.toml: dependencies and every optional extra."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    return [Requirement(line) for line in lines]


def test_transformer_lens_is_major_4():
    version = Version(metadata.version("transformer-lens"))
    assert version.major == 4, (
        f"transformer-lens {version} is installed; the book needs 4.x (TransformerBridge). {FIX}"
    )


def test_torch_is_the_pinned_build():
    import torch

    version = Version(torch.__version__)
    assert version.public == "2.13.0", f"torch {torch.__version__} is installed, the book pins 2.13.0. {FIX}"


def test_python_version():
    assert sys.version_info[:2] >= (3, 10), f"Python {sys.version.split()[0]}: the book needs >= 3.10 (3.11 tested)."


def test_every_requirement_is_an_exact_pin():
    loose = [str(r) for r in pinned_requirements() if len(r.specifier) != 1 or next(iter(r.specifier)).operator != "=="]
    assert not loose, f"pyproject.toml has requirements that are not exact `==` pins: {loose}"


@pytest.mark.parametrize("req", pinned_requirements(), ids=lambda r: canonicalize_name(r.name))
def test_installed_version_matches_pin(req: Requirement):
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{req.name} is pinned in pyproject.toml ({req}) but not installed. {FIX}", pytrace=False)
    # `==2.13.0` accepts the local build tag of 2.13.0+cpu, as pip does.
    assert req.specifier.contains(installed, prereleases=True), (
        f"{req.name} {installed} is installed, pyproject.toml pins {req}. {FIX}"
    )
