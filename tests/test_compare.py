"""``editlens.compare`` and ``python -m editlens compare`` (Chapter 6): methods on the same records, paired.

Fast: method names, the option errors (before the model is loaded), the summary table of a hand-made per-record
frame, the shares and the merge of gathered rows, and all four editors (ROME, STEAM, ROME+SADR, STEAM+SADR in one
v* optimisation) on the tiny random model, in two record orders. Slow (embedded model, 2 records, ROME and
ROME+SADR, no generation, 5 v* steps): one process writes the outputs; ``accelerate launch`` with 2 CPU processes
(gloo) gives the same per-record results, gathered in record order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from editlens import cli, compare
from editlens.cli import run_setup
from editlens.compare import (
    UnknownMethodError,
    build_editors,
    merge_rows,
    parse_methods,
    read_per_record,
    run_methods,
    shares,
    summary_markdown,
    summary_table,
)

ROOT = Path(__file__).resolve().parents[1]
SLOW_ARGS = ["--methods", "rome,sadr", "--limit", "2", "--no-generation", "--v-steps", "5", "--threads", "1"]


# ---------------------------------------------------------------------------------------------- method names
def test_parse_methods_keeps_order_and_drops_repeats():
    assert parse_methods("rome, STEAM,sadr,steam+sadr,rome") == ["rome", "steam", "sadr", "steam+sadr"]
    assert parse_methods(["sadr", "rome"]) == ["sadr", "rome"]
    assert compare.uses(["rome", "steam+sadr"], "steam") and compare.uses(["steam+sadr"], "sadr")
    assert not compare.uses(["rome", "sadr"], "steam")


@pytest.mark.parametrize("text, bad", [("rome,grace", "'grace'"), ("rome,steam-sadr", "'steam-sadr'"), (" , ", "no method")])
def test_unknown_method_names_the_valid_ones(text, bad):
    with pytest.raises(UnknownMethodError) as err:
        parse_methods(text)
    msg = str(err.value)
    assert bad in msg and "rome, steam, sadr, steam+sadr" in msg and "Fix:" in msg


# ---------------------------------------------------------------------------------------------- command line errors
def error_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (code, err)
    assert err.startswith("error: ") and ". Fix: " in err
    return err


@pytest.mark.parametrize("argv, names", [
    (["--methods", "rome,grace"], ["'grace'", "rome, steam, sadr, steam+sadr, memit"]),
    (["--methods", "sadr,steam"], ["no rome"]),
    (["--methods", "rome,sadr", "--anchors", "3"], ["--anchors", "steam"]),
    (["--methods", "rome,steam", "--sadr-gamma", "0.1"], ["--sadr-gamma", "sadr"]),
    (["--methods", "rome,steam+sadr", "--sadr-gamma", "-1"], ["--sadr-gamma", "-1"]),
    (["--methods", "rome,steam", "--steam-layers", "a-b"], ["--steam-layers"]),
    (["--limit", "0"], ["--limit", "0"]),
    (["--v-steps", "0"], ["--v-steps"]),
    (["--edit-batch", "0"], ["--edit-batch", "0"]),
])
def test_compare_options_rejected_before_loading(capsys, monkeypatch, tmp_path, argv, names):
    monkeypatch.setattr(run_setup, "load_model", lambda *a, **k: pytest.fail("loaded the model before the checks"))
    code = cli.main(["compare", "--out", str(tmp_path / "o"), *argv])
    line = error_line(code, capsys.readouterr().err)
    for name in names:
        assert name in line.split(". Fix:")[0], (name, line)


def test_compare_out_must_be_a_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(run_setup, "load_model", lambda *a, **k: pytest.fail("loaded the model before the checks"))
    (tmp_path / "f.json").write_text("{}")
    line = error_line(cli.main(["compare", "--out", str(tmp_path / "f.json")]), capsys.readouterr().err)
    assert "is a file" in line
    line = error_line(cli.main(["compare", "--out", str(tmp_path / "no" / "o")]), capsys.readouterr().err)
    assert "does not exist" in line
    code = cli.main(["compare", "--methods", "rome"])  # --out is required
    assert "--out" in error_line(code, capsys.readouterr().err)


def test_compare_help_shares_edits_options_and_says_how_to_launch():
    choices = cli.build_parser()._subparsers._group_actions[0].choices
    edit, comp = choices["edit"].format_help(), choices["compare"].format_help()
    for flag in ("--data", "--format", "--limit", "--spread", "--model", "--device", "--dtype", "--no-generation",
                 "--gen-prompts", "--gen-tokens", "--semantic", "--steam-lambda", "--steam-layers", "--anchors",
                 "--sadr-gamma", "--v-steps"):
        assert flag in edit and flag in comp, flag
    assert "--methods" in comp and "--seed" in comp and "--no-baseline" in edit
    assert "accelerate launch --multi_gpu --num_processes 8 -m editlens compare" in comp
    assert "--num_machines" in comp and "--machine_rank" in comp and "split_between_processes" in comp


# ---------------------------------------------------------------------------------------------- table, shares, merge
def hand_made(n: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        for m, shift in (("rome", 0.0), ("sadr", 0.3), ("steam+sadr", -0.1)):
            rows.append({"index": i, "case_id": 100 + i, "relation": f"P{i % 3}", "method": m, "ES": 1.0,
                         "NS": float(np.clip(0.5 + shift + 0.05 * rng.standard_normal(), 0, 1)),
                         "Port": 0.25 + shift if i % 2 == 0 else math.nan, "seconds": 2.0 + shift})
    return pd.DataFrame(rows)


def test_summary_table_pairs_against_rome_on_the_records_every_method_has():
    per = hand_made()
    t = summary_table(per)
    assert list(dict.fromkeys(t["metric"])) == ["ES", "NS", "Port", "seconds"]
    assert list(t["method"][:3]) == ["rome", "sadr", "steam+sadr"]
    assert list(t["label"][:3]) == ["ROME", "ROME+SADR", "STEAM+SADR"]
    port = t[t.metric == "Port"].set_index("method")
    assert (port["n"] == 5).all()  # only the even records have portability probes
    assert port.loc["sadr", "diff vs rome"] == pytest.approx(0.3)
    assert port.loc["sadr", "diff low"] == pytest.approx(0.3) and bool(port.loc["sadr", "CI excludes 0"])
    ns = t[t.metric == "NS"].set_index("method")
    want = per[per.method == "sadr"].NS.mean() - per[per.method == "rome"].NS.mean()
    assert ns.loc["sadr", "diff vs rome"] == pytest.approx(want)
    assert ns.loc["sadr", "diff low"] <= want <= ns.loc["sadr", "diff high"]
    assert math.isnan(ns.loc["rome", "diff vs rome"])
    md = summary_markdown(t)
    assert "| Port | ROME+SADR | 5 | 0.550 [0.550, 0.550] | +0.300 [+0.300, +0.300] * |" in md
    with pytest.raises(ValueError, match="baseline 'rome'"):
        summary_table(per[per.method != "rome"])


def test_write_outputs_round_trip(tmp_path):
    per = hand_made(6)
    paths = compare.write_outputs(tmp_path / "out", per, settings={"methods": ["rome", "sadr", "steam+sadr"]})
    assert {p.name for p in paths.values()} == {"per_record.jsonl", "summary.csv", "summary.md", "figure.png",
                                               "settings.json"}
    back = read_per_record(paths["per_record"])
    pd.testing.assert_frame_equal(back, per)
    assert pd.read_csv(paths["summary_csv"]).shape[0] == 4 * 3


# book/at-scale.md's run (the current settings) and the earlier run that Chapter 6 pairs its facts with
AT_SCALE = ROOT / "book" / "results" / "at-scale" / "smollm2-135m"
FULL_RUN = ROOT / "book" / "results" / "compare-all-facts"
EXTRA = ["steam", "sadr", "steam+sadr"]  # the methods paired against ROME in the published run


def _published(folder: Path):
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    per = read_per_record(folder / "per_record.jsonl")
    return settings, per, summary_table(per, **settings["summary"])


@pytest.fixture(scope="module")
def full_run():
    """The earlier 317-fact run (float32, the earlier stop rule, STEAM's first design): settings, rows, table."""
    return _published(FULL_RUN)


@pytest.fixture(scope="module")
def at_scale_run():
    """The run of book/at-scale.md (the book's current settings): settings, rows, table."""
    return _published(AT_SCALE)


@pytest.mark.parametrize("run, folder", [("at_scale_run", AT_SCALE), ("full_run", FULL_RUN)], ids=["at-scale", "earlier"])
def test_published_full_run_is_every_fact_and_its_table_is_its_rows(request, run, folder):
    """book/at-scale.md shows `python -m editlens compare` over every fact of facts.json: the rows are complete
    (every record, every method, in record order) and summary.csv/summary.md are what summary_table computes."""
    from editlens.data import load_facts

    settings, per, want = request.getfixturevalue(run)  # the module's fixture: its table is computed once
    facts = load_facts(None)
    assert settings["n_records"] == len(facts) and settings["data"] == "facts.json"
    assert sorted(settings["case_ids"]) == sorted(f.case_id for f in facts)
    methods = settings["methods"]
    assert methods == ["rome", *EXTRA]
    assert list(per["index"]) == [i for i in range(len(facts)) for _ in methods]
    assert list(per["method"]) == methods * len(facts)
    assert list(per["case_id"][:: len(methods)]) == settings["case_ids"]
    got = pd.read_csv(folder / "summary.csv")
    assert list(got["metric"]) == list(want["metric"]) and list(got["method"]) == list(want["method"])
    assert list(got["n"]) == list(want["n"])
    for column in ["mean", "low", "high", "diff vs rome", "diff low", "diff high"]:
        np.testing.assert_allclose(got[column], want[column], rtol=0, atol=1e-9, err_msg=column)
    md = (folder / "summary.md").read_text(encoding="utf-8").splitlines()
    rows = [line.split(" | ")[:3] for line in summary_markdown(want).splitlines()]
    assert [line.split(" | ")[:3] for line in md] == rows  # metric, method, n (the figures: summary.csv above)


def _excludes_zero(table: pd.DataFrame, metric: str) -> dict:
    """Per extra method: whether its paired interval against ROME on ``metric`` excludes 0."""
    part = table[table["metric"] == metric].set_index("method").loc[EXTRA]
    return dict(zip(EXTRA, (part["diff low"] > 0) | (part["diff high"] < 0)))


def _holm_excludes_zero(table: pd.DataFrame, metric: str) -> dict:
    part = table[table["metric"] == metric].set_index("method").loc[EXTRA]
    return dict(zip(EXTRA, part["Holm excludes 0"].astype(bool)))


def test_published_full_run_supports_the_at_scale_page(full_run):
    """The claims of book/at-scale.md, with its intervals (relations resampled, Holm over the table): SC's gain over
    ROME excludes 0 on Chapter 6's 50 facts (records 0-49), though not after Holm's correction, and on no other
    split; NS's loss excludes 0 for every extra term over all 317, also after Holm; STEAM's RelS and DNS losses do
    not exclude 0 once relations are resampled (they did with facts resampled alone)."""
    settings, per, want = full_run
    assert settings["summary"] == {"cluster": "relation", "correction": "holm"}
    first = summary_table(per[per["index"] < 50], **settings["summary"])
    assert all(_excludes_zero(first, "SC").values()) and not any(_holm_excludes_zero(first, "SC").values())
    assert not any(_excludes_zero(want, "SC").values())
    assert not any(_excludes_zero(summary_table(per[per["index"] >= 50], **settings["summary"]), "SC").values())
    assert all(_excludes_zero(want, "NS").values()) and all(_holm_excludes_zero(want, "NS").values())
    assert (want[want["metric"] == "NS"].set_index("method").loc[EXTRA, "diff vs rome"] < 0).all()
    assert not any(_excludes_zero(want, m)["steam"] for m in ("RelS", "DNS"))
    assert all(_excludes_zero(summary_table(per), m)["steam"] for m in ("RelS", "DNS"))  # facts alone


QUALITY = ["ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM", "GE", "RS", "SC"]


def test_at_scale_run_is_the_current_settings_and_supports_its_page(at_scale_run):
    """book/at-scale.md's run: bfloat16, every method stopped on the NLL, STEAM's paper design; no quality difference
    to ROME survives Holm (two exclude 0 before it: STEAM+SADR's RelS, ROME+SADR's exact-match portability), NS moves
    by at most 0.002 with no interval excluding 0 (the earlier run's losses are gone), STEAM runs ROME's steps while
    the SADR methods run more, every term costs time, and Chapter 6's 50 facts show no quality difference either."""
    settings, per, want = at_scale_run
    assert settings["precision"] == "bfloat16" and settings["hparams"]["v_early_stop_on"] == "nll"
    assert settings["steam"]["exclude_judged"] and settings["steam"]["centred"]
    assert settings["summary"] == {"cluster": "relation", "correction": "holm"}
    excluded = {(m, method) for m in QUALITY for method, x in _excludes_zero(want, m).items() if x}
    assert excluded == {("RelS", "steam+sadr"), ("Port EM", "sadr")}
    assert not any(any(_holm_excludes_zero(want, m).values()) for m in QUALITY)
    ns = want[want["metric"] == "NS"].set_index("method").loc[EXTRA, "diff vs rome"]
    assert (ns.abs() <= 0.002).all()
    assert _holm_excludes_zero(want, "steps") == {"steam": False, "sadr": True, "steam+sadr": True}
    assert not _excludes_zero(want, "steps")["steam"]
    seconds = want[want["metric"] == "seconds"].set_index("method").loc[EXTRA]
    assert all(_holm_excludes_zero(want, "seconds").values()) and (seconds["diff vs rome"] > 0).all()
    first = summary_table(per[per["index"] < 50], **settings["summary"])
    assert not any(any(_excludes_zero(first, m).values()) for m in QUALITY)


def test_at_scale_verdicts_against_the_earlier_run_are_recomputed(full_run, at_scale_run):
    """vs-earlier/verdicts.csv is compare_runs.verdicts of the two runs; only NS changes its verdict (lower in the
    earlier run for every extra term, no difference now)."""
    from editlens.compare_runs import verdicts

    said = verdicts(full_run[1], at_scale_run[1], ["earlier run", "this run"])
    stored = pd.read_csv(AT_SCALE / "vs-earlier" / "verdicts.csv")
    assert list(said["metric"]) == list(stored["metric"]) and list(said["same"]) == list(stored["same"])
    changed = said[~said["same"]]
    assert set(changed["metric"]) == {"NS"} and set(changed["method"]) == set(EXTRA)
    assert (changed["earlier run verdict"] == "lower").all() and (changed["this run verdict"] == "no difference").all()


def test_saving_the_figure_leaves_pyplot_and_the_theme_alone(tmp_path):
    """A notebook that writes the outputs keeps its inline backend, its open figures and its seaborn theme."""
    import matplotlib
    import matplotlib.pyplot as plt

    backend, style = matplotlib.get_backend(), dict(matplotlib.rcParams)
    open_before = plt.get_fignums()
    compare.write_outputs(tmp_path, hand_made(6))
    assert (tmp_path / "figure.png").stat().st_size > 0
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == open_before
    changed = [k for k, v in matplotlib.rcParams.items() if k in style and str(style[k]) != str(v)]
    assert not changed, f"rcParams changed: {changed[:5]}"


@pytest.mark.parametrize("n, p", [(2, 2), (7, 3), (3, 4), (10, 1)])
def test_shares_are_accelerates_contiguous_split(n, p):
    parts = shares(n, p)
    assert len(parts) == p and [i for s in parts for i in s] == list(range(n))
    sizes = [len(s) for s in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_merge_rows_restores_record_then_method_order_and_checks_completeness():
    methods = ["rome", "sadr"]
    rows = [{"index": i, "method": m, "ES": float(i)} for i in range(5) for m in methods]
    parts = [[r for r in rows if r["index"] in s] for s in shares(5, 2)]
    shuffled = [list(reversed(parts[1])), parts[0][::-1]]  # processes answer in any order
    assert merge_rows(shuffled, methods, 5) == rows
    with pytest.raises(ValueError, match="twice"):
        merge_rows([parts[0], parts[0]], methods)
    with pytest.raises(ValueError, match="missing"):
        merge_rows([parts[0]], methods, 5)


# ---------------------------------------------------------------------------------------------- the four editors (tiny model)
def record(cid, subject, prompt, rel, new, true, **probes):
    return {"case_id": cid, "requested_rewrite": {"prompt": prompt, "subject": subject, "relation_id": rel,
                                                  "target_new": {"str": new}, "target_true": {"str": true}}, **probes}


RECORDS = [
    record(0, "France", "The capital city of {} is", "P36", "Berlin", "Paris",
           paraphrase_prompts=["France's capital city is"], neighborhood_prompts=["The Louvre is located in the city of"],
           attribute_prompts=["The capital of Germany is", "The Brandenburg Gate is located in the city of"],
           relation_prompts=[{"prompt": "The official language of France is", "target": "French"}]),
    record(1, "Germany", "The capital city of {} is", "P36", "Paris", "Berlin",
           neighborhood_prompts=["Alexanderplatz is located in the city of"],
           portability_prompts=[{"prompt": "Max Planck was a citizen of a country whose capital is",
                                 "target_true": "Berlin", "target_new": "Paris"}]),
    record(2, "Angela Merkel", "{} was born in the city of", "P19", "Paris", "Hamburg"),
]


FOUR = ["rome", "steam", "sadr", "steam+sadr"]  # the chapters' methods (MEMIT has its own test, test_memit.py)


def test_four_editors_on_the_tiny_model_do_not_depend_on_record_order(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    from editlens.rome import ROMEHyperParams
    from editlens.rome import key_stats as ks
    from editlens.steam import AnchorBank

    hp = ROMEHyperParams(layer=0, v_num_grad_steps=3, context_lengths=((3, 2),), v_lr=0.5, v_weight_decay=0.0,
                         clamp_norm_factor=1e4, mom2_n_tokens=300)
    stats = ks.get_key_stats(tiny_model, 0, n_tokens=300, seq_len=32, progress=False)
    bank = AnchorBank(tiny_model, RECORDS, n_anchors=4, min_anchors=1, min_margin=-math.inf)
    editors = build_editors(hp, stats, list(FOUR), bank=bank, steam_lambda=2.0, sadr_gamma=1.0)
    assert list(editors) == ["rome", "steam", "sadr", "steam+sadr"]
    with editors["steam+sadr"](tiny_model, RECORDS[0]) as edits:  # both terms in one v* optimisation
        first = edits[0].v_result.history[0]
        assert "steam_align" in first and "sadr" in first, first
    with pytest.raises(ValueError, match="AnchorBank"):
        build_editors(hp, stats, ["rome", "steam+sadr"])
    cases = RECORDS[:2]
    per = run_methods(tiny_model, cases, editors, progress=False, descriptions={})
    assert list(per.columns[:4]) == ["index", "case_id", "relation", "method"]
    assert list(zip(per["index"], per["method"])) == [(i, m) for i in range(2) for m in FOUR]
    assert list(per["relation"][::4]) == ["P36", "P36"] and (per["seconds"] > 0).all()
    assert per["steps"].between(1, hp.v_num_grad_steps).all(), per["steps"]  # each edit's v* steps
    assert per["Port"].isna().tolist() == [True] * 4 + [False] * 4  # only record 1 has a portability probe
    rev = run_methods(tiny_model, cases[::-1], editors, indices=[1, 0], progress=False, descriptions={})
    again = pd.DataFrame(merge_rows([rev.to_dict(orient="records")], list(FOUR), 2))
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), per.drop(columns="seconds"), rtol=0, atol=1e-6)
    table = summary_table(per)
    assert set(table["method"]) == set(FOUR) and "Port" in set(table["metric"])
    # batch=2: each method optimises both records' v* together; the rows match, each record charged half the batch
    batched = build_editors(hp, stats, list(FOUR), bank=bank, steam_lambda=2.0, sadr_gamma=1.0, batch=2)
    made = []  # the keys each prepare call computed

    def counting(prepare):
        def counted(model, upcoming):
            made.append(prepare(model, upcoming))
            return made[-1]
        return counted

    for e in batched.values():
        e.prepare = counting(e.prepare)
    per_b = run_methods(tiny_model, cases, batched, progress=False, descriptions={})
    pd.testing.assert_frame_equal(per_b.drop(columns="seconds"), per.drop(columns="seconds"), rtol=0, atol=1e-5)
    assert [len(keys) for keys in made] == [2] * 4 + [0] * 4  # record 0 computes both, record 1 finds its edit
    assert (per_b["seconds"] > 0).all()
    shares_of = per_b.pivot(index="index", columns="method", values="seconds")
    # a record's seconds = its half of the batch + applying its edit: the two records' shares are close
    assert (shares_of.min() > 0.3 * shares_of.max()).all(), shares_of



def test_run_methods_catches_weights_left_one_ulp_off(tiny_model, tiny_rome):
    """The restored-weights check is bit for bit: one weight left one float step away fails the run."""
    hp, stats = tiny_rome
    rome = build_editors(hp, stats, ["rome"])["rome"]
    W = tiny_model.blocks[1].mlp.W_out

    @contextlib.contextmanager
    def leaky(model, case):
        with rome(model, case) as info:
            yield info
        with torch.no_grad():
            W[0, 0] = torch.nextafter(W[0, 0], torch.tensor(float("inf")))

    with pytest.raises(RuntimeError, match="did not restore"):
        run_methods(tiny_model, RECORDS[:1], {"rome": leaky}, progress=False, descriptions={}, warmup=False)

# ---------------------------------------------------------------------------------------------- slow: one and two processes
@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("compare") / "single"
    t0 = time.perf_counter()
    code = cli.main(["compare", *SLOW_ARGS, "--out", str(out)])
    assert code == 0
    return out, time.perf_counter() - t0


@pytest.mark.slow
def test_compare_one_process_writes_the_outputs(single_run):
    out, seconds = single_run
    print(f"single-process compare: {seconds:.1f} s")
    assert {p.name for p in out.iterdir()} == {"per_record.jsonl", "summary.csv", "summary.md", "figure.png",
                                              "settings.json"}
    per = read_per_record(out / "per_record.jsonl")
    assert list(zip(per["index"], per["method"])) == [(0, "rome"), (0, "sadr"), (1, "rome"), (1, "sadr")]
    assert per["ES"].between(0, 1).all() and (per["seconds"] > 0).all()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["n_processes"] == 1 and settings["shares"] == [[0, 1]]
    assert settings["hparams"]["v_num_grad_steps"] == 5 and settings["sadr"]["gamma"] == pytest.approx(0.01)
    table = pd.read_csv(out / "summary.csv")
    assert {"ES", "PS", "NS", "RelS", "DNS", "seconds"} <= set(table["metric"])
    assert "diff vs rome" in table.columns


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_equals_one_process(single_run, tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert launcher, "accelerate is a dependency; its launcher is missing"
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "editlens", "compare",
           "--device", "cpu", *SLOW_ARGS, "--out", str(out)]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(f"accelerate launch, 2 CPU processes: {time.perf_counter() - t0:.1f} s")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es)" in run.stdout and run.stdout.count("wrote ") == 5  # only the main process writes
    settings = json.loads((out / "settings.json").read_text())
    assert settings["n_processes"] == 2 and settings["shares"] == [[0], [1]]  # each process edited one record
    one = read_per_record(single_run[0] / "per_record.jsonl").drop(columns="seconds")
    two = read_per_record(out / "per_record.jsonl").drop(columns="seconds")
    assert list(two.columns) == list(one.columns)
    pd.testing.assert_frame_equal(two, one, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the registry
def test_registry_lists_the_five_methods_with_their_labels_and_parts():
    from editlens import methods

    assert methods.NAMES == ("rome", "steam", "sadr", "steam+sadr", "memit")
    assert methods.LABELS == {"rome": "ROME", "steam": "STEAM", "sadr": "ROME+SADR", "steam+sadr": "STEAM+SADR",
                              "memit": "MEMIT"}
    assert {n: m.parts for n, m in methods.REGISTRY.items()} == {
        "rome": (), "steam": ("steam",), "sadr": ("sadr",), "steam+sadr": ("steam", "sadr"), "memit": ()}
    # compare's names are thin reads of the registry; so are the command line's
    assert compare.METHODS is methods.NAMES and compare.LABELS is methods.LABELS and cli.METHODS is methods.NAMES
    assert compare.build_editors is methods.build_editors and compare.parse_methods is methods.parse_methods
    assert methods.get(" STEAM+SADR ").label == "STEAM+SADR"
    assert [o.flag for o in methods.get("steam+sadr").options] == [
        "--steam-lambda", "--steam-layers", "--anchors", "--steam-anchors", "--steam-align", "--anchor-data",
        "--sadr-gamma"]
    assert methods.get("rome").options == ()


def test_unknown_method_is_named_by_the_registry_and_its_users():
    from editlens import methods
    from editlens.sequential import sequential_edits

    for call in (lambda: methods.get("grace"), lambda: build_editors(None, None, ["rome", "grace"]),
                 lambda: sequential_edits(None, [{}], "grace", hparams=None, progress=False)):
        with pytest.raises(UnknownMethodError) as err:
            call()
        msg = str(err.value)
        assert "'grace'" in msg and "rome, steam, sadr, steam+sadr, memit" in msg and "Fix:" in msg


@pytest.mark.parametrize("name, options, problem", [
    ("steam", {"steam_lambda": -1.0}, "steam_lambda must be a number >= 0, got -1.0. Fix: pass e.g. steam_lambda=1"),
    ("steam+sadr", {"steam_layers": [3, -1]}, "steam_layers [3, -1] has a negative layer"),
    ("sadr", {"sadr_gamma": math.nan}, "sadr_gamma must be a number >= 0, got nan. Fix: pass e.g. sadr_gamma=0.01"),
    ("steam+sadr", {"sadr_gamma": -2}, "sadr_gamma must be a number >= 0, got -2"),
])
def test_registry_checks_each_methods_options_before_building(name, options, problem):
    from editlens import methods

    with pytest.raises(methods.OptionError) as err:
        methods.get(name).check(bank=object(), **options)
    assert problem in str(err.value)
    with pytest.raises(ValueError, match="needs an AnchorBank"):
        build_editors(None, None, ["rome", "steam"])
    methods.get("rome").check(steam_lambda=-1.0, sadr_gamma=math.nan)  # options of parts it does not use: not read
    methods.get("sadr").check(steam_lambda=-1.0)


def test_a_table_of_one_method_has_no_difference_to_correct():
    """compare --methods rome (one method, e.g. two runs that differ in a setting, paired afterwards by
    compare_runs): the summary has each metric's mean and interval, and no Holm column to fill."""
    rows = pd.DataFrame([{"index": i, "case_id": i, "relation": "P1" if i % 2 else "P2", "method": "rome",
                          "ES": float(i % 3 > 0), "NS": 0.5} for i in range(6)])
    table = summary_table(rows, ["ES", "NS"], correction="holm", cluster="relation")
    assert list(table["method"]) == ["rome", "rome"] and "Holm excludes 0" not in table.columns
    assert table.set_index("metric").loc["ES", "mean"] == pytest.approx(4 / 6)
