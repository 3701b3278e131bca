"""MEMIT (book/memit.md): ROME's update spread over several MLPs, on the tiny random models of conftest.py."""

from __future__ import annotations

import pytest
import torch

from editlens.data import as_request
from editlens.memit import (
    compute_memit_edit,
    default_layers,
    default_update_weight,
    memit_editor,
    residual_at_subject,
)
from editlens.rome import applied_edit, compute_k, get_hparams

CASE = {"case_id": 7, "requested_rewrite": {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                                            "relation_id": "P131", "target_new": {"str": "Rome"},
                                            "target_true": {"str": "Paris"}}}


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.original_model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_one_layer_at_weight_0_writes_v_stars_change_for_the_averaged_key(tiny_model, tiny_rome):
    """With one layer and lambda = 0 MEMIT is ROME's exact write: the edited MLP maps the averaged key k* to its old
    output plus v*'s change, as ROME's update maps k* to v*."""
    hp, stats = tiny_rome
    (edit,) = compute_memit_edit(tiny_model, CASE, hp, [0], 0.0, [stats])
    k, _ = compute_k(tiny_model, as_request(CASE), 0, hp)
    change = k.double() @ edit.delta.double()
    torch.testing.assert_close(change.float(), edit.v_result.delta.float(), rtol=1e-4, atol=1e-5)
    assert edit.info["written"] == 1.0 and edit.info["steps"] >= 1


def test_layers_share_the_target_and_move_the_residual_toward_it(tiny_model, tiny_rome):
    """Two layers: each writes a share of what is still missing at the last layer, so the residual there ends nearer
    the target than before; with lambda > 0 each layer writes the fraction s / (1 + s) of its share."""
    hp, _ = tiny_rome
    req = as_request(CASE)
    before = _weights(tiny_model)
    edits = compute_memit_edit(tiny_model, CASE, hp, [0, 1], 0.0)
    assert _same(before, _weights(tiny_model))  # computed, not left applied
    assert [e.layer for e in edits] == [0, 1] and all(e.delta.abs().max() > 0 for e in edits)
    target = residual_at_subject(tiny_model, req.prompt, req.subject, 1) + edits[-1].v_result.delta.float()
    start = (target - residual_at_subject(tiny_model, req.prompt, req.subject, 1)).norm()
    with applied_edit(tiny_model, edits):
        end = (target - residual_at_subject(tiny_model, req.prompt, req.subject, 1)).norm()
    assert end < 0.5 * start
    weighted = compute_memit_edit(tiny_model, CASE, hp, [0, 1], 50.0)
    assert all(0 < e.info["written"] < 1 for e in weighted)
    # the first layer's key (the next ones are read with it edited) and its share, half of v*'s change
    k, _ = compute_k(tiny_model, req, 0, hp)
    s = float(k.double() @ weighted[0].factors[0])  # k . u with u = (lambda C)^-1 k
    assert abs(s / (1 + s) - weighted[0].info["written"]) < 1e-9
    torch.testing.assert_close(k.double() @ weighted[0].delta.double(), s / (1 + s) * weighted[-1].v_result.delta.double() / 2,
                               rtol=1e-3, atol=1e-5)


def test_the_editor_restores_the_weights_bit_for_bit_also_after_an_error(tiny_model, tiny_rome):
    hp, _ = tiny_rome
    before = _weights(tiny_model)
    editor = memit_editor(hp, layers=[0, 1], update_weight=0.0)
    with editor(tiny_model, CASE) as edits:
        assert len(edits) == 2 and not _same(before, _weights(tiny_model))
    assert _same(before, _weights(tiny_model))
    with pytest.raises(RuntimeError, match="boom"), editor(tiny_model, CASE):
        raise RuntimeError("boom")
    assert _same(before, _weights(tiny_model))


def test_edit_and_compare_run_memit_from_the_registry(tiny_model, tiny_rome):
    """One registry line: build_editors and run_methods run MEMIT beside ROME, paired on the same records."""
    from editlens.compare import build_editors, run_methods

    hp, stats = tiny_rome
    editors = build_editors(hp, stats, ["rome", "memit"])
    per = run_methods(tiny_model, [CASE], editors, progress=False, descriptions={})
    assert list(per["method"]) == ["rome", "memit"] and per["ES"].notna().all()
    assert per.set_index("method").loc["memit", "steps"] >= 1


def test_bad_layers_weights_and_architectures_name_the_fix(tiny_model, tiny_rome, embedded_tokenizer):
    hp, stats = tiny_rome
    for layers in ([1, 0], [0, 0], [0, 2], []):
        with pytest.raises(ValueError, match="distinct and increasing.*Fix"):
            compute_memit_edit(tiny_model, CASE, hp, layers, 0.0)
    with pytest.raises(ValueError, match="update_weight must be >= 0.*Fix"):
        compute_memit_edit(tiny_model, CASE, hp, [0], -1.0, [stats])
    with pytest.raises(ValueError, match="key statistics of each of the layers.*Fix"):
        compute_memit_edit(tiny_model, CASE, hp, [0, 1], 0.0, [stats])
    from editlens.localize.toy import tiny_gemma3

    gemma = tiny_gemma3(0, tokenizer=embedded_tokenizer)[0]
    with pytest.raises(ValueError, match="norm the MLP's output.*use ROME"):
        compute_memit_edit(gemma, CASE, hp, [0, 1], 0.0)


def test_defaults_follow_the_authors_window_and_weight():
    assert default_layers(5, 28) == (3, 4, 5, 6, 7) and default_layers(0, 2) == (0, 1)
    assert default_update_weight(16384) == 15000.0  # GPT-J's d_mlp: the authors' weight
    assert default_update_weight(1536) == pytest.approx(15000 * 1536 / 16384)
    assert get_hparams("smollm2-135m").layer in default_layers(get_hparams("smollm2-135m").layer, 30)


def test_the_pages_run_is_its_rows_and_supports_the_page():
    """book/memit.md's run (compare --methods rome,memit on Chapter 6's 50 facts): its table is what summary_table
    computes from its rows, no quality difference to ROME excludes 0, and MEMIT's extra time survives Holm."""
    import json
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from editlens.compare import read_per_record, summary_table
    from editlens.data import load_facts, spread_over_relations

    root = Path(__file__).resolve().parents[1]
    folder = root / "book" / "results" / "memit" / "smollm2-135m"
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    assert settings["methods"] == ["rome", "memit"] and settings["hparams"]["v_early_stop_on"] == "nll"
    assert settings["case_ids"] == [f.case_id for f in spread_over_relations(load_facts(), 50)]
    per = read_per_record(folder / "per_record.jsonl")
    want = summary_table(per, **settings["summary"])
    got = pd.read_csv(folder / "summary.csv")
    for column in ["mean", "low", "high", "diff vs rome", "diff low", "diff high"]:
        np.testing.assert_allclose(got[column], want[column], rtol=0, atol=1e-9, err_msg=column)
    memit = want[want["method"] == "memit"].set_index("metric")
    quality = ["ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM"]
    assert not memit.loc[quality, "CI excludes 0"].astype(bool).any()
    assert bool(memit.loc["seconds", "Holm excludes 0"]) and memit.loc["seconds", "diff vs rome"] > 0
    page = (root / "book" / "memit.md").read_text(encoding="utf-8")
    assert "results/memit/smollm2-135m/summary.md" in page
    assert f"{default_update_weight(1536):,.0f}" in page and "layers 2 to 6" in page
