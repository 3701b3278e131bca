"""``python -m editlens edit``: user errors print one ``error: ... Fix: ...`` line and exit with status 2.

Every error case must fail before the model is loaded (the offline-model case only asks the
Hugging Face cache). No happy-path run here: one record with ``--limit 1 --no-generation
--no-baseline --mom2-tokens 64`` took 4.5 minutes on a shared CPU (sampling text for C,
then ROME's optimisation), far over this file's budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from editlens import cli
from editlens.cli import run_setup
from editlens.cli.options import parse_layers

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def allow_model() -> None:
    """Request this fixture in a test that may call ``load_model``."""


@pytest.fixture(autouse=True)
def _no_model_loading(request, monkeypatch):
    """Error cases must stop before ``load_model``: make loading the model a test failure."""
    if "allow_model" in request.fixturenames:
        return

    def forbidden(*args, **kwargs):
        raise AssertionError("the command loaded the model before rejecting its arguments")

    monkeypatch.setattr(run_setup, "load_model", forbidden)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """``cli.main(argv)``: its return code, stdout and stderr."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *names: str) -> str:
    """Status 2, stderr exactly one ``error: <problem>. Fix: <fix>`` line naming ``names``, no traceback."""
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and ". Fix: " in line, line
    problem, fix = line.split(". Fix: ", 1)
    for name in names:
        assert name in problem, (name, line)
    assert fix.strip(), line
    return line


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------- --data
def test_missing_data_file(tmp_path, capsys):
    missing = str(tmp_path / "nope.json")
    code, out, err = run_main(["edit", "--data", missing], capsys)
    line = assert_one_error_line(code, err, missing, "no such file")
    assert "facts.json" in line.split("Fix:")[1]
    assert out == ""


def test_data_file_is_a_folder(tmp_path, capsys):
    code, _, err = run_main(["edit", "--data", str(tmp_path)], capsys)
    assert_one_error_line(code, err, str(tmp_path), "cannot read")


@pytest.mark.parametrize("text, problem", [
    ("this is not json", "not valid JSON"),
    ('{"a": 1}', "top level must be a list of records"),
    ("[]", "no records"),
    ('["a fact"]', "must be an object"),
    ('[{"case_id": 1}]', "cannot tell the format"),
    ('[{"case_id": 1, "requested_rewrite": {"prompt": "{} is in", "subject": "X"}}]', "requested_rewrite.relation_id"),
])
def test_malformed_data_file(tmp_path, capsys, text, problem):
    path = write(tmp_path, "facts.json", text)
    code, _, err = run_main(["edit", "--data", path], capsys)
    assert_one_error_line(code, err, path, problem)


# ---------------------------------------------------------------------------------------------- options
def test_unknown_method(capsys):
    code, _, err = run_main(["edit", "--method", "grace"], capsys)
    line = assert_one_error_line(code, err, "--method", "grace")
    assert "rome" in line


@pytest.mark.parametrize("flag", ["--limit", "--gen-prompts", "--gen-tokens", "--threads", "--mom2-tokens"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_counts_below_one(capsys, flag, value):
    code, out, err = run_main(["edit", flag, value], capsys)
    line = assert_one_error_line(code, err, flag, value)
    assert f"{flag} N with N >= 1" in line
    assert "records from" not in out  # rejected before the data is read


def test_not_an_integer(capsys):
    code, _, err = run_main(["edit", "--limit", "abc"], capsys)
    assert_one_error_line(code, err, "--limit", "abc")


def test_negative_layer_and_bad_dtype(capsys):
    code, _, err = run_main(["edit", "--layer", "-1"], capsys)
    assert_one_error_line(code, err, "--layer", "-1")
    code, _, err = run_main(["edit", "--dtype", "float8"], capsys)
    assert_one_error_line(code, err, "--dtype", "float8")


def test_out_in_a_missing_folder(tmp_path, capsys):
    out = str(tmp_path / "no" / "such" / "folder" / "r.json")
    code, _, err = run_main(["edit", "--out", out], capsys)
    assert_one_error_line(code, err, "--out", "does not exist")


def test_bad_device(capsys):
    code, _, err = run_main(["edit", "--device", "bogus"], capsys)
    assert_one_error_line(code, err, "--device", "bogus")


def test_unknown_model_without_layer(capsys):
    code, _, err = run_main(["edit", "--model", "editlens-test/no-such-model", "--limit", "1"], capsys)
    line = assert_one_error_line(code, err, "editlens-test/no-such-model", "no ROME settings")
    assert "--layer" in line.split("Fix:")[1]


def test_missing_command(capsys):
    code, _, err = run_main([], capsys)
    assert_one_error_line(code, err, "command")


def test_bugs_still_raise(monkeypatch):
    """A programming error is not a user error: it propagates (with its traceback)."""
    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(run_setup, "load_cases", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["edit", "--limit", "1"])


# ---------------------------------------------------------------------------------------------- model
def test_model_not_available_offline(capsys, monkeypatch, allow_model):
    """A Hugging Face name that is not cached, with the hub off: only the hub lookup runs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from editlens import loading

    def no_bridge(*args, **kwargs):  # the lookup must fail before any model is built
        raise AssertionError("a model was built")

    monkeypatch.setattr("transformer_lens.model_bridge.TransformerBridge.boot_transformers", no_bridge)
    assert loading._offline()
    name = "editlens-test/no-such-model"
    code, _, err = run_main(["edit", "--model", name, "--layer", "3", "--limit", "1", "--device", "cpu"], capsys)
    line = assert_one_error_line(code, err, "--model", name, "Hugging Face cache")
    fix = line.split("Fix:")[1]
    assert "network" in fix and "safetensors" in fix


# ---------------------------------------------------------------------------------------------- a real process
def _editlens(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "editlens", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=timeout, check=False)


def test_process_exit_status_and_stderr(tmp_path):
    """The real command: status 2, one line on stderr, no traceback."""
    bad = write(tmp_path, "bad.json", "{not json")
    proc = _editlens("edit", "--data", bad, "--limit", "1")
    assert_one_error_line(proc.returncode, proc.stderr, bad, "not valid JSON")
    assert proc.stdout == ""
    proc = _editlens("edit", "--limit", "0")
    assert_one_error_line(proc.returncode, proc.stderr, "--limit", "0")


# ---------------------------------------------------------------------------------------------- --method steam
@pytest.mark.parametrize("argv, names", [
    (["--method", "steam", "--steam-lambda", "-1"], ["--steam-lambda", "-1"]),
    (["--method", "steam", "--steam-lambda", "nan"], ["--steam-lambda", "nan"]),
    (["--method", "steam", "--anchors", "0"], ["--anchors", "0"]),
    (["--method", "steam", "--steam-layers", "five"], ["--steam-layers", "five"]),
    (["--method", "steam", "--steam-layers", "-2"], ["--steam-layers"]),
    (["--steam-lambda", "1"], ["--steam-lambda", "--method steam"]),
    (["--method", "steam", "--steam-anchors", "wikidata"], ["--steam-anchors", "wikidata", "reference"]),
    (["--method", "steam", "--steam-align", "cosine"], ["--steam-align", "cosine", "centred"]),
    (["--steam-align", "centred"], ["--steam-align", "--method steam"]),
    (["--anchor-data", "x.json"], ["--anchor-data", "--method steam"]),
    (["--method", "rome", "--anchors", "4"], ["--anchors", "--method rome"]),
])
def test_steam_options_rejected_before_loading(capsys, argv, names):
    code, out, err = run_main(["edit", *argv], capsys)
    assert_one_error_line(code, err, *names)
    assert "records from" not in out


def test_steam_layers_parse_lists_and_ranges():
    assert parse_layers("5-7,10") == [5, 6, 7, 10]
    assert parse_layers(" 8 ") == [8]


def test_steam_layers_not_above_the_edit_layer(capsys, monkeypatch, allow_model):
    """Checked against the model's depth and the edit layer once the model is loaded, before any statistics."""
    class Cfg:
        n_layers = 30

    class FakeModel:
        cfg = Cfg()

    monkeypatch.setattr(run_setup, "load_model", lambda args: FakeModel())
    code, _, err = run_main(["edit", "--method", "steam", "--limit", "1", "--steam-layers", "2-6"], capsys)
    line = assert_one_error_line(code, err, "--steam-layers", "not above the edit layer 4")
    assert "between 5 and 29" in line
    code, _, err = run_main(["edit", "--method", "steam", "--limit", "1", "--steam-layers", "5-40"], capsys)
    assert_one_error_line(code, err, "--steam-layers", "outside")


def test_steam_is_a_method_in_help():
    assert "steam" in cli.METHODS
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["edit"].format_help()
    for flag in ("--steam-lambda", "--steam-layers", "--anchors", "--semantic"):
        assert flag in help_text


# --- SADR (Chapter 5): options, and one run on SADR's data format. The end-to-end run (slow) edits
# the first 2 records of a 3-record merged_counterfact.json written here (WikiData-style and
# CounterFact-style records alternate, as in SADR's file) on the embedded model with 5 v* steps,
# and checks the pooled (micro-averaged) summary.

WIKIDATA = {
    "requested_rewrite": {"prompt": "The name of the country of citizenship of Isabel May is",
                          "target_new": "Japan", "target_true": "United States of America", "subject": "Isabel May"},
    "rewrite": {"prompts": ["The name of the country of citizenship of Isabel May is"], "targets": ["Japan"]},
    "l-relation": {"prompts": ["The occupation of Isabel May is", "The gender of Isabel May is"],
                   "targets": ["actor", "female"]},
    "o-commonsense": {"prompts": "How can I keep beads organized?", "right": "Use an egg carton.", "wrong": "Eat them."},
}
COUNTERFACT = {
    "requested_rewrite": {"prompt": "Sonny Simmons performs", "target_new": "poetry", "target_true": "jazz",
                          "subject": "Sonny Simmons", "relation_id": "P136", "target_new_id": "Q482"},
    "rewrite": {"prompts": ["Sonny Simmons performs"], "targets": ["poetry"]},
    "p-paraphrase": {"prompts": ["More than 95% yield can be achieved. Sonny Simmons, who plays",
                                 "The genre played by Sonny Simmons is"], "targets": ["poetry", "poetry"]},
    "l-neighbor": {"prompts": ["Zeena Parkins plays", "Freddy Cole, who plays", "Paolo Conte plays"],
                   "targets": ["jazz", "jazz", "jazz"]},
    "generation": {"prompts": ["Sonny Simmons is known for", "Sonny Simmons is known for"]},
    "o-commonsense": {"prompts": "To make a food basket,", "right": "pack classics,", "wrong": "pack beans."},
}


@pytest.mark.parametrize("argv, names", [
    (["--method", "sadr", "--sadr-gamma", "-1"], ["--sadr-gamma", "-1"]),
    (["--method", "sadr", "--sadr-gamma", "nan"], ["--sadr-gamma", "nan"]),
    (["--sadr-gamma", "0.01"], ["--sadr-gamma", "--method sadr"]),
    (["--method", "sadr", "--v-steps", "0"], ["--v-steps", "0"]),
])
def test_sadr_options_rejected_before_loading(capsys, argv, names):
    code, out, err = run_main(["edit", *argv], capsys)
    assert_one_error_line(code, err, *names)
    assert "records from" not in out


def test_sadr_is_a_method_in_help():
    assert "sadr" in cli.METHODS
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["edit"].format_help()
    assert "--sadr-gamma" in help_text and "--v-steps" in help_text


@pytest.mark.slow
def test_sadr_edit_on_merged_counterfact_format(tmp_path: Path, capsys, allow_model):
    data = tmp_path / "merged_counterfact.json"
    data.write_text(json.dumps([WIKIDATA, COUNTERFACT, {**WIKIDATA, "requested_rewrite": {
        **WIKIDATA["requested_rewrite"], "target_new": "France"}}]), encoding="utf-8")
    out = tmp_path / "r.json"
    code = cli.main(["edit", "--method", "sadr", "--data", str(data), "--format", "sadr", "--limit", "2",
                     "--no-generation", "--v-steps", "5", "--threads", "1", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "SADR: gamma 0.01, 5 v* steps" in stdout and "pooled over all prompts" in stdout
    rep = json.loads(out.read_text())
    assert rep["settings"]["method"] == "sadr" and rep["settings"]["sadr"]["gamma"] == pytest.approx(0.01)
    assert rep["settings"]["hparams"]["v_num_grad_steps"] == 5
    assert all(len(r["edited"]) and r["edit_info"]["edits"][0]["steps"] <= 5 for r in rep["records"])
    pooled = rep["settings"]["pooled_summary"]["edited"]
    # prompts pooled: 2 rewrite prompts, 2 paraphrases, 3 neighbours (and 3 distracted ones), 2 relation prompts
    assert pooled["n_ES"] == 2 and pooled["n_PS"] == 2 and pooled["n_NS"] == 3 and pooled["n_DNS"] == 3
    assert pooled["n_RelS"] == 2
    for k in ("ES", "PS", "NS", "DNS", "RelS"):
        assert 0 <= pooled[k] <= 100


# --- The registry of methods (editlens.methods) behind `edit` and `compare`; the command line as a package.
def test_edit_runs_every_method_of_the_registry():
    from editlens import methods

    choices = cli.build_parser()._subparsers._group_actions[0].choices
    method = next(a for a in choices["edit"]._actions if a.dest == "method")
    assert tuple(method.choices) == methods.NAMES == cli.METHODS
    assert "steam+sadr" in cli.METHODS


def test_edit_unknown_method_in_a_programmatic_namespace():
    """argparse rejects an unknown --method first; a Namespace built by hand gets the named error too."""
    args = cli.build_parser().parse_args(["edit"])
    args.method = "grace"  # built by hand here; the command line itself never sets attributes on it
    with pytest.raises(cli.CommandLineError) as err:
        args.func(args)
    assert "--method 'grace' is not available" in str(err.value) and "Fix: pass --method rome" in str(err.value)


def test_cli_package_sets_no_attribute_on_the_parsed_arguments():
    """No function of editlens.cli stores state on the argparse Namespace (``args.x = ...``, ``setattr(args, ...)``):
    resolved settings travel in the frozen RunSettings."""
    import ast

    folder = REPO_ROOT / "src" / "editlens" / "cli"
    files = sorted(folder.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "edit.py", "compare.py", "fetch.py", "options.py",
                                       "run_setup.py"}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for t in targets:
                assert not (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "args"), (
                    f"{path.name}:{node.lineno} sets an attribute on args")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
                first = node.args[0] if node.args else None
                assert not (isinstance(first, ast.Name) and first.id == "args"), f"{path.name}:{node.lineno}"
    from editlens.cli.options import RunSettings

    settings = RunSettings(*([None] * len(RunSettings.__dataclass_fields__)))
    with pytest.raises(AttributeError):  # frozen
        settings.device = "cpu"


def test_main_module_is_the_cli_package_entry():
    from editlens import __main__ as entry

    assert entry.main is cli.main


def _steam_sadr_records() -> list[dict]:
    def record(cid, subject, prompt, rel, new, true, **probes):
        return {"case_id": cid, "requested_rewrite": {"prompt": prompt, "subject": subject, "relation_id": rel,
                                                      "target_new": {"str": new}, "target_true": {"str": true}},
                **probes}

    return [record(0, "France", "The capital city of {} is", "P36", "Berlin", "Paris",
                   paraphrase_prompts=["France's capital city is"],
                   neighborhood_prompts=["The Louvre is located in the city of"]),
            record(1, "Germany", "The capital city of {} is", "P36", "Paris", "Berlin"),
            record(2, "Angela Merkel", "{} was born in the city of", "P19", "Paris", "Hamburg")]


def test_edit_steam_plus_sadr_on_the_tiny_model(tiny_model, tmp_path, monkeypatch, capsys, allow_model):
    """``edit --method steam+sadr``: STEAM's anchors and SADR's term in one v* optimisation, run as the command runs
    it, on the tiny random model (loaded in place of the embedded one; any anchor fact counts, whatever its margin
    under random weights)."""
    import functools
    import math

    from editlens import steam

    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(run_setup, "load_model", lambda settings: tiny_model)
    monkeypatch.setattr(steam, "AnchorBank", functools.partial(steam.AnchorBank, min_margin=-math.inf))
    data = write(tmp_path, "facts.json", json.dumps(_steam_sadr_records()))
    out = tmp_path / "r.json"
    code = cli.main(["edit", "--method", "steam+sadr", "--data", data, "--limit", "1", "--layer", "0",
                     "--mom2-tokens", "300", "--v-steps", "3", "--anchors", "1", "--sadr-gamma", "0.5",
                     "--no-generation", "--no-baseline", "--threads", "1", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "STEAM: lambda 1.0, aligned layers 1..1 (1)" in stdout and "SADR: gamma 0.5, 3 v* steps" in stdout
    rep = json.loads(out.read_text())
    settings = rep["settings"]
    assert settings["method"] == "steam+sadr" and settings["sadr"]["gamma"] == pytest.approx(0.5)
    assert settings["steam"]["layers"] == [1] and list(settings["steam"]["anchors"]) == ["0"]  # per record
    assert settings["steam"]["exclude_judged"] and settings["steam"]["centred"]  # the paper's design by default
    assert [r["case_id"] for r in rep["records"]] == [0]
    assert 1 <= rep["records"][0]["edit_info"]["edits"][0]["steps"] <= 3


def test_edit_steam_with_the_papers_design_on_the_tiny_model(tiny_model, tmp_path, monkeypatch, capsys, allow_model):
    """``--steam-anchors reference --steam-align centred``: reference-triple anchors that leave out the record's own
    probes, the relation-centred alignment, an anchor pool of the --data file plus --anchor-data; recorded."""
    import functools
    import math

    from editlens import steam

    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(run_setup, "load_model", lambda settings: tiny_model)
    monkeypatch.setattr(steam, "AnchorBank", functools.partial(steam.AnchorBank, min_margin=-math.inf))
    records = _steam_sadr_records()
    data = write(tmp_path, "facts.json", json.dumps(records[:1]))
    pool = write(tmp_path, "pool.json", json.dumps(records[1:]))  # Berlin's only candidate: Germany's rewrite
    argv = ["edit", "--method", "steam", "--data", data, "--limit", "1", "--layer", "0", "--mom2-tokens", "300",
            "--v-steps", "2", "--anchors", "1", "--no-generation", "--no-baseline", "--threads", "1"]
    out = tmp_path / "r.json"
    code = cli.main([*argv, "--steam-anchors", "reference", "--steam-align", "centred", "--anchor-data", pool,
                     "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "reference triples, centred alignment" in stdout and "from 2 file(s)" in stdout
    st = json.loads(out.read_text())["settings"]["steam"]
    assert st["sources"] == list(steam.REFERENCE_SOURCES) and st["exclude_judged"] and st["centred"]
    assert st["anchor_files"] == [data, pool] and st["anchors"] == {"0": ["The capital city of Germany is"]}
    # without --anchor-data the pool is the --data file plus the book's facts: a record about an object its own
    # file says nothing else about (Madrid) still gets anchors
    from editlens.data import facts_path

    madrid = write(tmp_path, "madrid.json", json.dumps([{**records[0], "requested_rewrite": {
        **records[0]["requested_rewrite"], "target_new": {"str": "Madrid"}}}]))
    code = cli.main([*argv[:4], madrid, *argv[5:], "--anchors", "3", "--steam-anchors", "reference", "--out",
                     str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    st = json.loads(out.read_text())["settings"]["steam"]
    assert st["anchor_files"] == [madrid, str(facts_path(None))] and len(st["anchors"]["0"]) == 3
    code = cli.main([*argv, "--anchor-data", str(tmp_path / "missing.json"), "--out", str(out)])
    _, err = capsys.readouterr()
    assert_one_error_line(code, err, "--anchor-data", "missing.json")


def test_cases_take_exactly_the_named_records_in_order(tmp_path):
    """--cases: a second model runs the facts of another model's run (book/method-or-model.md)."""
    from editlens.cli.errors import CommandLineError
    from editlens.cli.options import parse_cases
    from editlens.cli.run_setup import select_cases
    from editlens.data import load_facts

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"case_ids": [6, 0, 575]}))
    assert parse_cases(str(settings)) == (6, 0, 575)
    assert parse_cases("6, 0,575") == (6, 0, 575)
    records = load_facts()
    assert [r.case_id for r in select_cases(records, (6, 0, 575), "facts.json")] == [6, 0, 575]
    for bad in ("6,6", "6,x", str(tmp_path / "missing.json"), ""):
        with pytest.raises(CommandLineError):
            parse_cases(bad)
    with pytest.raises(CommandLineError, match="not in facts.json"):
        select_cases(records, (6, 10**9), "facts.json")
    assert cli.main(["compare", "--cases", "6,0", "--limit", "2", "--out", str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out").exists()
