"""book/precision.md: Chapter 6's comparison in float32 and in bfloat16, paired fact by fact. The tables the page
includes are recomputed from the two runs' stored rows, and the page's claims are checked against them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from editlens.compare_runs import (
    load_rows,
    paired_runs,
    runs_markdown,
    verdicts,
    verdicts_markdown,
)
from editlens.methods import LABELS

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"
RUNS = {"float32": RESULTS / "precision-float32", "bfloat16": RESULTS / "precision-bfloat16"}
PROBES = ("ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM")
GENERATED = ("GE", "RS", "SC")


@pytest.fixture(scope="module")
def runs():
    return {name: load_rows(folder) for name, folder in RUNS.items()}


def test_the_two_runs_differ_in_precision_only(runs):
    settings = {name: json.loads((folder / "settings.json").read_text(encoding="utf-8"))
                for name, folder in RUNS.items()}
    assert [s["precision"] for s in settings.values()] == list(RUNS)
    drop = {"precision", "shares", "summary", "n_processes"}
    a, b = ({k: v for k, v in s.items() if k not in drop} for s in settings.values())
    assert a == b  # the same facts, methods, seed, edit batch, generation, hparams, SADR and STEAM anchors
    assert a["n_records"] == 50 and a["edit_batch"] == 8 and a["methods"] == ["rome", "steam", "sadr", "steam+sadr"]
    for rows in runs.values():
        assert len(rows) == 200 and list(rows["index"][::4]) == list(range(50))


def test_the_included_tables_are_the_rows(runs):
    paired = paired_runs(runs["float32"], runs["bfloat16"], list(RUNS), cluster="relation")
    said = verdicts(runs["float32"], runs["bfloat16"], list(RUNS))
    out = RESULTS / "precision"
    assert (out / "summary.md").read_text(encoding="utf-8") == runs_markdown(paired, list(RUNS), method_labels=LABELS)
    assert (out / "verdicts.md").read_text(encoding="utf-8") == verdicts_markdown(said, list(RUNS),
                                                                                    method_labels=LABELS)
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), paired, check_dtype=False, atol=1e-12)


def test_the_page_claims(runs):
    """Probes: ES and PS identical, NS/RelS/Port/Port EM on at most 3 facts, DNS on 8 or 9, no interval excluding 0.
    Generations: changed on 26 to 36 facts, one uncorrected interval (of 40) excludes 0. Steps: ROME's change by one
    or two on 8 facts. Verdicts: all the same, all "no difference"; uncorrected differences to ROME that exclude 0:
    two in float32, none in bfloat16. Cost: SADR's extra steps, the ratio of ROME's seconds, STEAM's seconds."""
    paired = paired_runs(runs["float32"], runs["bfloat16"], list(RUNS), cluster="relation").set_index(
        ["metric", "method"])
    assert len(paired) == 40
    changed = paired["records changed"]
    assert (changed.loc[["ES", "PS"]] == 0).all()
    assert changed.loc[["NS", "RelS", "Port", "Port EM"]].max() == 3
    assert changed.loc["DNS"].min() == 8 and changed.loc["DNS"].max() == 9
    assert not paired.loc[list(PROBES), "excludes 0"].any()
    assert changed.loc[list(GENERATED)].min() == 26 and changed.loc[list(GENERATED)].max() == 36
    assert set(paired.index[paired["excludes 0"].astype(bool)]) == {("GE", "steam+sadr")}
    ge = paired.loc["GE", "diff"]
    assert (ge > 0).all() and ge.drop("steam+sadr").between(0.0005, 0.0395).all()

    rome = {name: rows[rows["method"] == "rome"].set_index("index")["steps"] for name, rows in runs.items()}
    moved = (rome["bfloat16"] - rome["float32"])[lambda d: d != 0]
    assert len(moved) == 8 and set(moved.abs()) == {1, 2}

    said = verdicts(runs["float32"], runs["bfloat16"], list(RUNS))
    assert len(said) == 30 and "Port EM" in set(said["metric"])
    assert said["same"].all() and set(said["float32 verdict"]) == {"no difference"}
    from editlens.compare import summary_table
    from editlens.stats import BOOK_PAIRING

    raw, tables = {}, {}
    for name, rows in runs.items():
        t = tables[name] = summary_table(rows, baseline="rome", **BOOK_PAIRING)
        t = t[(t["method"] != "rome") & ~t["metric"].isin(["steps", "seconds"])]
        raw[name] = set(zip(t["metric"][t["CI excludes 0"].astype(bool)], t["method"][t["CI excludes 0"].astype(bool)]))
    assert raw["float32"] == {("DNS", "sadr"), ("SC", "steam+sadr")}
    assert raw["bfloat16"] == set()

    # The cost: SADR adds +0.320 to +0.380 steps per edit; ROME's seconds give bfloat16 a factor of about 1.7, and
    # STEAM's seconds to ROME change sign between the runs (the machine was shared).
    cost = {name: t.set_index(["metric", "method"]) for name, t in tables.items()}
    sadr_steps = [round(c.loc[("steps", m), "diff vs rome"], 3) for c in cost.values() for m in ("sadr", "steam+sadr")]
    assert min(sadr_steps) == 0.32 and max(sadr_steps) == 0.38
    ratio = cost["float32"].loc[("seconds", "rome"), "mean"] / cost["bfloat16"].loc[("seconds", "rome"), "mean"]
    assert 1.65 <= ratio < 1.75
    assert cost["float32"].loc[("seconds", "steam"), "diff vs rome"] < 0 < cost["bfloat16"].loc[("seconds", "steam"),
                                                                                                 "diff vs rome"]
