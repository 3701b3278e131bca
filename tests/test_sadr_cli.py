"""``python -m editlens edit --method sadr`` (Chapter 5): options, and one run on SADR's data format.

The option errors stop before the model is loaded (as in test_cli.py). The end-to-end run (slow) edits the first 2
records of a 3-record merged_counterfact.json written here (WikiData-style and CounterFact-style records alternate,
as in SADR's file) on the embedded model with 5 v* steps, and checks the pooled (micro-averaged) summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editlens import __main__ as cli

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


@pytest.fixture(autouse=True)
def _no_model_loading(request, monkeypatch):
    """Error cases must stop before ``load_model`` (a test that may load it requests ``allow_model``)."""
    if "allow_model" in request.fixturenames:
        return

    def forbidden(*args, **kwargs):
        raise AssertionError("the command loaded the model before rejecting its arguments")

    monkeypatch.setattr(cli, "_load_model", forbidden)


@pytest.fixture
def allow_model() -> None:
    """Request this fixture in a test that may call ``load_model``."""


def error_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (code, err)
    assert err.startswith("error: ") and ". Fix: " in err
    return err


@pytest.mark.parametrize("argv, names", [
    (["--method", "sadr", "--sadr-gamma", "-1"], ["--sadr-gamma", "-1"]),
    (["--method", "sadr", "--sadr-gamma", "nan"], ["--sadr-gamma", "nan"]),
    (["--sadr-gamma", "0.01"], ["--sadr-gamma", "--method sadr"]),
    (["--method", "sadr", "--v-steps", "0"], ["--v-steps", "0"]),
])
def test_sadr_options_rejected_before_loading(capsys, argv, names):
    code = cli.main(["edit", *argv])
    out, err = capsys.readouterr()
    line = error_line(code, err)
    for name in names:
        assert name in line.split(". Fix:")[0], (name, line)
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
