"""The page "Method or model?" (book/method-or-model.md, issue 30): its tables are what
:mod:`editlens.method_or_model` computes from the stored runs, the runs are complete and as the page describes them,
and the verdict rules do what the page says."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from editlens import method_or_model as mm

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "method-or-model.md"
RESULTS = mm.RESULTS


def _script():
    spec = importlib.util.spec_from_file_location("method_or_model_script", ROOT / "scripts" / "method_or_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdicts_read_the_interval_in_the_claimed_direction():
    assert mm.verdict(0.01, 0.2) == "holds"
    assert mm.verdict(-0.2, -0.01) == "reversed"
    assert mm.verdict(-0.01, 0.2) == "not shown"
    # a claimed cost (the metric falls): an interval below 0 holds it
    assert mm.verdict(-0.2, -0.01, direction=-1) == "holds"
    assert mm.verdict(0.01, 0.2, direction=-1) == "reversed"
    assert mm.level_verdict(0.91, 0.90) == "holds" and mm.level_verdict(0.89, 0.90) == "not shown"
    assert mm.across_models("holds", "holds") == "holds on both"
    assert mm.across_models("not shown", "holds") == "only on the larger"
    assert mm.across_models("holds", "reversed") == "only on the smaller (reversed on the larger)"
    assert mm.across_models("not shown", "not shown") == "on neither"
    assert mm.across_models("reversed", "not shown") == "on neither (reversed on SmolLM2-135M)"


def test_peak_layer_and_its_bootstrap_skip_layer_0():
    import numpy as np

    per_fact = np.zeros((20, 6))
    per_fact[:, 0] = 5.0  # MLP 0 is not an edit site
    per_fact[:, 2] = 1.0
    per_fact[:3, 4] = 3.0  # three facts peak later: the mean still peaks at 2 (0.45 < 1.0)
    peak, boot = mm.peak_layers(per_fact, n_boot=200)
    assert peak == 2
    assert set(np.unique(boot)) <= {2, 4} and (boot == 2).mean() > 0.5


def test_every_object_a_replay_stores_is_assigned_in_its_chapter():
    """scripts/method_or_model.py stores chapter objects by name: a renamed variable must fail here, not in a
    replay an hour later."""
    for chapter, names in _script().DUMPS.items():
        src = (ROOT / "notebooks" / "src" / f"{chapter}.py").read_text(encoding="utf-8")
        for name in names:
            assert re.search(rf"^[\w, ]*\b{name}\b[\w, ]*=[^=]", src, re.MULTILINE), f"{chapter} never assigns {name}"


def test_the_runs_are_complete():
    """Both models ran each replayed chapter at its defaults; the edits ran 100 facts of Gemma's own set, every
    method on every fact, with both of ROME's writes; the SmolLM2 rows are the at-scale run's on the same cases."""
    for model in (mm.SMALL, mm.LARGE):
        for chapter in _script().DUMPS:
            settings = json.loads((RESULTS / model / chapter / "settings.json").read_text())
            assert settings["model"] == model and settings["chapter"] == chapter
        tracing = json.loads((RESULTS / model / "tracing" / "tracing.json").read_text())
        assert tracing["n_traced"] >= 50, f"{model}: only {tracing['n_traced']} facts traced"
    for write in ("nearest", "as_optimised"):
        settings = json.loads((RESULTS / mm.LARGE / f"compare-{write}" / "settings.json").read_text())
        assert settings["model"] == mm.LARGE and settings["n_records"] == 100
        assert settings["methods"] == ["rome", "steam", "sadr", "steam+sadr"]
        rows = mm.edit_rows(RESULTS, write=write)
        for model, frame in rows.items():
            counts = frame.groupby("method")["case_id"].nunique()
            assert (counts == 100).all(), f"{model} ({write}): {counts.to_dict()}"
        assert set(rows[mm.SMALL]["case_id"]) == set(rows[mm.LARGE]["case_id"])
    main_cases = json.loads((RESULTS / mm.LARGE / "compare-nearest" / "settings.json").read_text())["case_ids"]
    # SADR at gamma = 30 and at each model's own calibrated weight: exactly the main run's facts (--cases)
    for model in (mm.SMALL, mm.LARGE):
        for gamma in sorted({30.0, mm.chosen_gamma(model)}):
            settings = json.loads((RESULTS / model / mm.sadr_gamma_run(gamma) / "settings.json").read_text())
            assert settings["case_ids"] == main_cases and settings["sadr"] == {"gamma": gamma}
            assert settings["methods"] == ["rome", "sadr"] and settings["model"] in (model, "embedded")


@pytest.fixture(scope="module")
def computed() -> dict[str, pd.DataFrame]:
    return mm.tables(RESULTS)


def test_stored_tables_are_what_the_runs_give(computed):
    """Each table file is what editlens.method_or_model computes from the stored rows (no hand edits)."""
    for name, frame in computed.items():
        stored = (RESULTS / f"{name}.md").read_text(encoding="utf-8")
        assert stored == mm.markdown(frame), f"{name}.md is stale. Fix: scripts/method_or_model.py tables"


def test_the_page_includes_every_table_as_written(computed):
    page = PAGE.read_text(encoding="utf-8")
    for name in computed:
        assert f"{{include}} results/method-or-model/{name}.md" in page, f"the page does not include {name}.md"


def test_every_edit_claim_rests_on_at_least_fifty_facts_on_both_models():
    table = mm.edit_claims_table(mm.edit_summaries(mm.edit_rows(RESULTS)))
    for label in mm.MODEL_LABELS.values():
        assert (table[f"n {label}"] >= 50).all(), table[["claim", f"n {label}"]]


def test_the_terms_change_the_edits():
    """Each method's own term changes its edits on both models (a method equal to ROME on every fact would be a
    test of nothing): on some facts the rows differ from ROME's."""
    for model, rows in mm.edit_rows(RESULTS).items():
        rome = rows[rows["method"] == "rome"].set_index("case_id")
        for method in ("steam", "sadr", "steam+sadr"):
            other = rows[rows["method"] == method].set_index("case_id").loc[rome.index]
            moved = ((other["EM"] - rome["EM"]).abs() > 1e-6).sum()
            assert moved >= 10, f"{model} {method}: only {moved} facts differ from ROME"
