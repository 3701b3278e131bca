"""Numbers in the chapters' prose come from their runs (fast; no model).

Every decimal number in a chapter's Markdown (0.627, 98.2, +0.04, 3.5) must appear in the stored outputs of that
chapter, so that a re-execution that moves a figure fails here until the prose says the new one. A number that
comes from elsewhere is listed in ``ELSEWHERE`` with its source: another chapter (its stem: the number must then
appear in that chapter's outputs), a results file of the book (its path: the number must appear in it), or a
fixed figure (a paper's, an arXiv identifier, a constant of the method) with the reason, checked by nobody.
Integers are not checked (counts and parameters, which the outputs print in many forms).
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
NUMBER = re.compile(r"(?<![\w.])[+\-\u2212]?\d[\d,]*\.\d+")

# chapter stem -> {number as written: source}; a source is a chapter stem, a repository path, or "fixed: why".
ELSEWHERE: dict[str, dict[str, str]] = {
    "01_consistency_heads": {"2501.11041": "fixed: arXiv identifier",
                             "4.5": "fixed: minutes of the float32 run of make check-portable (AVX2 kernels), not stored"},
    "03_rome": {"0.05": "fixed: ROME's early-stop threshold on the v* loss (a constant of the method)"},
    "04_steam": {"2510.10398": "fixed: arXiv identifier"},
    "05_sadr": {"2502.14838": "fixed: arXiv identifier", "54.2": "03_rome",
                **{n: "book/setup.md" for n in ["+1.63", "+0.17", "+3.17"]},  # the run on another CPU
                **{n: "fixed: the SADR paper's ROME -> ROME+SADR results (GPT-J, Llama-3-8B)"
                   for n in ["11.9", "27.8", "30.4", "49.4", "99.9", "99.8", "99.6", "96.4", "52.2", "58.5"]}},
    "book/teaching.md": {n: "book/setup.md: Chapter 5 on another CPU" for n in ["+1.63", "+0.17", "+3.17"]},
    "book/method-or-model.md": {
        "0.210": "book/results/method-or-model/smollm2-135m-instruct/tracing/tracing.json (layer 0's mean effect)",
        "3.22": "src/editlens/sadr/calibration.py (AUTHORS_PS_COST, the authors' PS cost in points)"},
    "06_synthesis": {**{n: "book/results/at-scale/smollm2-135m/summary.md" for n in ["+0.017", "+0.353", "+0.401"]},
                     "0.975": "fixed: the upper quantile of a 95% bootstrap interval"},
}


def outputs_text(stem: str) -> str:
    """Everything a chapter's stored outputs show as text (streams and text/* data), commas removed."""
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if out.get("output_type") == "stream":
                parts.append("".join(out["text"]))
            parts += ["".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts).replace(",", "")


def cited_numbers(markdown: str, *, skip_fenced: bool = False) -> list[str]:
    """The decimal numbers of Markdown prose: code spans (names, literals) and mathematics left out, and fenced
    blocks too when ``skip_fenced`` (a book page's commands and their printed examples; a chapter's fences are
    MyST directives whose prose is checked)."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S) if skip_fenced else markdown
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\$[^$]*\$", " ", text)
    return NUMBER.findall(text)


def prose_numbers(stem: str) -> list[str]:
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))
    return cited_numbers("\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"))


def bare(number: str) -> str:
    return number.lstrip("+-\u2212").replace(",", "")


# Chapters whose prose has not been checked against their latest run yet (a strict xfail: remove a chapter once
# it passes).
PENDING: set[str] = set()


def chapters() -> list:
    pending = pytest.mark.xfail(strict=True, reason="in PENDING: prose not yet checked against the latest run")
    return [pytest.param(p.stem, id=p.stem, marks=[pending] if p.stem in PENDING else [])
            for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))]


@pytest.mark.parametrize("stem", chapters())
def test_prose_numbers_come_from_the_runs(stem: str):
    shown = outputs_text(stem)
    elsewhere = ELSEWHERE.get(stem, {})
    missing, stale_sources = [], []
    for number in dict.fromkeys(prose_numbers(stem)):
        if bare(number) in shown:
            continue
        source = elsewhere.get(number) or elsewhere.get(bare(number))
        if source is None:
            missing.append(number)
        elif source.startswith("fixed:"):
            continue
        elif (NOTEBOOKS / f"{source}.ipynb").exists():
            if bare(number) not in outputs_text(source):
                stale_sources.append(f"{number} (not in {source}'s outputs)")
        elif (REPO_ROOT / source).exists():
            if bare(number) not in (REPO_ROOT / source).read_text(encoding="utf-8").replace(",", ""):
                stale_sources.append(f"{number} (not in {source})")
        else:
            stale_sources.append(f"{number} (source {source!r} does not exist)")
    assert not missing, (f"{stem}: numbers in the prose that its stored outputs do not show: {missing}. Fix: say the "
                         "run's figure, print it, or list it in ELSEWHERE with its source.")
    assert not stale_sources, f"{stem}: numbers whose listed source does not show them: {stale_sources}"


def test_elsewhere_lists_only_numbers_the_prose_still_uses():
    def used(key: str) -> set[str]:  # a chapter stem or a book page's path
        numbers = page_numbers(key) if key.endswith(".md") else prose_numbers(key)
        return set(numbers) | {bare(n) for n in numbers}

    unused = {key: sorted(set(entries) - used(key)) for key, entries in ELSEWHERE.items()}
    assert not any(unused.values()), f"ELSEWHERE entries no longer in the prose: {unused}"


# Book pages whose prose cites the runs, and where their numbers may come from: chapters (their stored outputs)
# or files of the book. A number found in none of them fails, unless ELSEWHERE lists it under the page's path.
PAGES: dict[str, list[str]] = {
    "book/teaching.md": [p.stem for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))] + ["book/chapter-times.md"],
    "book/at-scale.md": ["book/results/at-scale/smollm2-135m/summary.md", "book/results/at-scale/smollm2-135m/summary.csv",
                         "book/results/at-scale/smollm2-135m/vs-earlier/summary.md",
                         "book/results/at-scale/smollm2-135m/vs-earlier/verdicts.md",
                         "book/results/compare-all-facts/summary.md", "book/results/compare-all-facts/summary.csv",
                         "06_synthesis"],
    "book/memit.md": ["book/results/memit/smollm2-135m/summary.md"],
    "book/method-or-model.md": [f"book/results/method-or-model/{name}.md" for name in (
        "heads", "steering", "steering-cost", "tracing", "edits", "edits-write", "sadr-calibration", "sadr-gamma")]
    + ["book/results/method-or-model/runs.md"],
    "book/precision.md": ["book/results/precision/summary.md", "book/results/precision/verdicts.md",
                          "book/results/precision-float32/summary.md", "book/results/precision-bfloat16/summary.md"],
}


def page_numbers(page: str) -> list[str]:
    return cited_numbers((REPO_ROOT / page).read_text(encoding="utf-8"), skip_fenced=True)


def source_text(source: str) -> str:
    if (NOTEBOOKS / f"{source}.ipynb").exists():
        return outputs_text(source)
    return (REPO_ROOT / source).read_text(encoding="utf-8").replace(",", "")


# Pages not yet checked against the latest runs (a strict xfail, as PENDING).
PAGES_PENDING: set[str] = set()


@pytest.mark.parametrize("page", [pytest.param(p, marks=[pytest.mark.xfail(strict=True, reason="in PAGES_PENDING")]
                                               if p in PAGES_PENDING else []) for p in sorted(PAGES)])
def test_page_numbers_come_from_the_runs(page: str):
    shown = "\n".join(source_text(s) for s in PAGES[page])
    elsewhere = ELSEWHERE.get(page, {})
    missing = [n for n in dict.fromkeys(page_numbers(page))
               if bare(n) not in shown and not (elsewhere.get(n) or elsewhere.get(bare(n)))]
    assert not missing, (f"{page}: numbers that none of {PAGES[page]} shows: {missing}. Fix: say the run's figure, "
                         "or list the number in ELSEWHERE with its source.")
