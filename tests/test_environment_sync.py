"""environment.yml (conda) pins exactly what pyproject.toml pins, and nothing else."""

from __future__ import annotations

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO_ROOT
from test_versions import pinned_requirements


def _environment() -> dict:
    return yaml.safe_load((REPO_ROOT / "environment.yml").read_text())


def _pip_section(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml must have exactly one `- pip:` list under dependencies"
    return sections[0]


def _as_pins(requirements) -> dict[str, str]:
    return {canonicalize_name(r.name): str(r.specifier) for r in requirements}


def test_conda_python_is_3_11():
    conda = [d for d in _environment()["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda, f"environment.yml must pin python=3.11, has {conda}"
    assert "pip" in conda, "environment.yml must list pip among its conda dependencies"


def test_pip_pins_match_pyproject():
    pip_lines = [line for line in _pip_section(_environment()) if not line.startswith("-")]
    from_env = _as_pins(Requirement(line) for line in pip_lines)
    from_pyproject = _as_pins(pinned_requirements())
    missing = {k: v for k, v in from_pyproject.items() if k not in from_env}
    extra = {k: v for k, v in from_env.items() if k not in from_pyproject}
    differ = {k: (from_env[k], v) for k, v in from_pyproject.items() if k in from_env and from_env[k] != v}
    assert not (missing or extra or differ), (
        "environment.yml and pyproject.toml disagree; edit both together.\n"
        f"  only in pyproject.toml: {missing}\n  only in environment.yml: {extra}\n"
        f"  different versions (environment.yml, pyproject.toml): {differ}"
    )
    assert len(pip_lines) == len(from_env), "environment.yml lists a package twice"


def test_torch_is_installed_first():
    first = Requirement(_pip_section(_environment())[0])
    assert canonicalize_name(first.name) == "torch", (
        "torch must be the first pip entry of environment.yml: installed later, another package "
        "could pull an unpinned (CUDA) torch first"
    )


def test_editable_package_is_installed():
    assert "-e ." in _pip_section(_environment()), "environment.yml must install the book's package (`-e .`)"
