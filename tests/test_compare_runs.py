"""Two compare runs paired record by record (editlens.compare_runs): the precision page's table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from editlens.compare_runs import load_rows, paired_runs, runs_markdown


def _rows(shift: float = 0.0, flip: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        for method in ("rome", "steam"):
            es = 1.0 if not (flip is not None and i == flip and method == "rome") else 0.0
            rows.append({"index": i, "case_id": 100 + i, "method": method, "ES": es, "GE": 4.5 + rng.normal() * 0.1
                         + shift, "seconds": 1.0})
    return pd.DataFrame(rows)


def test_identical_runs_differ_by_nothing():
    t = paired_runs(_rows(), _rows(), metrics=("ES", "GE"))
    assert len(t) == 4 and (t["diff"] == 0).all() and (t["records changed"] == 0).all()
    assert not t["excludes 0"].any()


def test_a_shift_and_a_flip_are_found():
    t = paired_runs(_rows(), _rows(shift=0.05, flip=3), metrics=("ES", "GE")).set_index(["method", "metric"])
    assert t.loc[("rome", "ES"), "records changed"] == 1
    assert t.loc[("rome", "ES"), "diff"] == pytest.approx(-1 / 20)
    assert t.loc[("steam", "ES"), "records changed"] == 0
    assert t.loc[("rome", "GE"), "diff"] == pytest.approx(0.05) and t.loc[("rome", "GE"), "excludes 0"]
    md = runs_markdown(t.reset_index())
    assert "| rome | ES | 100.0 | 95.0 | -5.0 [" in md and "1 of 20 |" in md


def test_unpaired_runs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="same \\(case_id, method\\)"):
        paired_runs(_rows(), _rows().iloc[:-1], metrics=("ES",))
    with pytest.raises(FileNotFoundError, match="editlens compare"):
        load_rows(tmp_path)
    (tmp_path / "per_record.jsonl").write_text("\n".join(json.dumps(r) for r in _rows().to_dict("records")))
    assert len(load_rows(tmp_path)) == 40


def test_float_noise_is_not_a_changed_record():
    """A value computed from the same text on another machine moves in the 7th digit: not a change."""
    noisy = _rows()
    noisy["GE"] = noisy["GE"] + 1e-8
    t = paired_runs(_rows(), noisy, metrics=("GE",))
    assert (t["records changed"] == 0).all()
    assert (paired_runs(_rows(), noisy, metrics=("GE",), tol=0.0)["records changed"] == 20).all()


def _method_rows(steam_gain: float) -> pd.DataFrame:
    """24 records over 6 relations; STEAM's GE is ROME's plus ``steam_gain`` (plus a little noise per record)."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(24):
        base = 4.5 + rng.normal() * 0.2
        for method, ge in (("rome", base), ("steam", base + steam_gain + rng.normal() * 0.01)):
            rows.append({"index": i, "case_id": 100 + i, "relation": f"P{i % 6}", "method": method, "ES": 1.0,
                         "GE": ge, "seconds": 1.0})
    return pd.DataFrame(rows)


def test_verdicts_say_whether_two_runs_agree_about_the_methods():
    from editlens.compare_runs import verdicts, verdicts_markdown

    t = verdicts(_method_rows(0.5), _method_rows(0.0)).set_index("metric")
    assert t.loc["GE", "float32 verdict"] == "higher" and t.loc["GE", "bfloat16 verdict"] == "no difference"
    assert not t.loc["GE", "same"] and t.loc["ES", "same"]  # ES: 100 everywhere, no difference in either run
    assert t.loc["GE", "float32 diff"] == pytest.approx(0.5, abs=0.02)
    md = verdicts_markdown(t.reset_index(), method_labels={"steam": "STEAM"})
    assert "| GE | STEAM | +0.4" in md and "(higher) |" in md and "| **no** |" in md
    same = verdicts(_method_rows(0.5), _method_rows(0.5))
    assert same["same"].all()
