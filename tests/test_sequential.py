"""``editlens.sequential`` (Chapter 6): edits applied one after another, probed after each, weights restored.

Fast (tiny random model, 3 ROME edits with 3 v* steps): the long frame's shape and columns, bit-exact restoration after
success and after an exception raised mid-way, ``probe_every``; :func:`degradation_summary` on a hand-made frame.
Slow (embedded model, 3 sequential ROME edits of facts.json records, 5 v* steps): the last edit works, weights restored.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from editlens.sequential import (
    COLUMNS,
    KINDS,
    degradation_summary,
    mean_curve,
    sequential_edits,
)


def record(cid, subject, prompt, rel, new, true, **probes):
    return {"case_id": cid, "requested_rewrite": {"prompt": prompt, "subject": subject, "relation_id": rel,
                                                  "target_new": {"str": new}, "target_true": {"str": true}}, **probes}


RECORDS = [
    record(0, "France", "The capital city of {} is", "P36", "Berlin", "Paris",
           paraphrase_prompts=["France's capital city is"], neighborhood_prompts=["The Louvre is located in the city of"]),
    record(1, "Germany", "The capital city of {} is", "P36", "Rome", "Berlin",
           paraphrase_prompts=["Germany's capital city is"], neighborhood_prompts=["Alexanderplatz is in the city of"]),
    record(2, "Angela Merkel", "{} was born in the city of", "P19", "Paris", "Hamburg"),
]
UNRELATED = [record(10, "Japan", "The capital city of {} is", "P36", "Madrid", "Tokyo"),
             record(11, "Italy", "The capital city of {} is", "P36", "Oslo", "Rome")]


@pytest.fixture
def rome(tiny_rome):
    from editlens.rome.editor import rome_editor

    hp, stats = tiny_rome
    return rome_editor(hp, stats), hp, stats


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(model, saved) -> bool:
    now = model.state_dict()
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)


def test_sequential_frame_and_bit_exact_restore(tiny_model, rome):
    editor, hp, stats = rome
    saved = weights(tiny_model)
    frame = sequential_edits(tiny_model, RECORDS, editor, unrelated=UNRELATED, progress=False)
    assert same_weights(tiny_model, saved)
    assert list(frame.columns) == list(COLUMNS) and set(frame["kind"]) <= set(KINDS)
    assert sorted(set(frame["n_edits"])) == [1, 2, 3]
    assert frame["value"].between(0, 1).all()
    es = frame[frame["kind"] == "edited ES"]
    # after edit t, ES of the t records edited so far: 1 + 2 + 3 rows
    assert es.groupby("n_edits")["record"].apply(list).tolist() == [[0], [0, 1], [0, 1, 2]]
    assert (es["edited_at"] == es["record"] + 1).all()
    ps = frame[frame["kind"] == "edited PS"]
    assert set(ps["record"]) == {0, 1}  # record 2 has no paraphrase prompt
    un = frame[frame["kind"] == "unrelated"]
    assert len(un) == 3 * len(UNRELATED) and un["edited_at"].isna().all()
    assert len(frame) == 6 + 5 + 5 + 6  # ES (1+2+3), PS and NS (1+2+2: record 2 has none), unrelated (3 x 2)
    # the same run again gives the same frame (seeded per edit)
    again = sequential_edits(tiny_model, RECORDS, editor, unrelated=UNRELATED, progress=False)
    pd.testing.assert_frame_equal(frame, again)
    # a method name builds the editor from compare.build_editors
    named = sequential_edits(tiny_model, RECORDS, "rome", hparams=hp, stats=stats, unrelated=UNRELATED,
                             progress=False)
    pd.testing.assert_frame_equal(frame, named)
    assert same_weights(tiny_model, saved)
    curve = mean_curve(frame)
    assert list(curve.columns) == ["n_edits", "kind", "value", "n"]
    assert curve[curve["kind"] == "edited ES"]["n"].tolist() == [1, 2, 3]


def test_sequential_restores_after_exception_mid_way(tiny_model, rome):
    editor, *_ = rome
    saved = weights(tiny_model)
    entered = []

    def failing(model, case):
        if case.case_id == 2:
            assert not same_weights(model, saved)  # edits 0 and 1 are applied now
            raise RuntimeError("boom")
        entered.append(case.case_id)
        return editor(model, case)

    with pytest.raises(RuntimeError, match="boom"):
        sequential_edits(tiny_model, RECORDS, failing, progress=False)
    assert entered == [0, 1] and same_weights(tiny_model, saved)

    import editlens.sequential as seq

    calls = []

    def bad_scores(model, cases, **kw):
        calls.append(len(cases))
        if len(calls) == 2:
            raise ValueError("scoring failed")
        from editlens.evaluate import probe_scores_many
        return probe_scores_many(model, cases, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(seq, "probe_scores_many", bad_scores)
        with pytest.raises(ValueError, match="scoring failed"):
            sequential_edits(tiny_model, RECORDS, editor, progress=False)
    assert calls == [1, 2] and same_weights(tiny_model, saved)


def test_probe_every_and_errors(tiny_model, rome):
    editor, *_ = rome
    frame = sequential_edits(tiny_model, RECORDS, editor, probe_every=2, progress=False)
    assert sorted(set(frame["n_edits"])) == [2, 3]  # every 2nd edit and always the last
    with pytest.raises(ValueError, match="also edited"):
        sequential_edits(tiny_model, RECORDS, editor, unrelated=[RECORDS[0]], progress=False)
    with pytest.raises(ValueError, match="hparams"):
        sequential_edits(tiny_model, RECORDS, "rome", progress=False)
    with pytest.raises(ValueError, match="probe_every"):
        sequential_edits(tiny_model, RECORDS, editor, probe_every=0, progress=False)


def test_degradation_summary_on_a_hand_made_frame():
    rows = []
    es = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 0.5, 1.0], 4: [0.5, 0.5, 1.0, 1.0]}  # means 1, 1, .833, .75
    for t, vals in es.items():
        rows += [{"n_edits": t, "record": j, "kind": "edited ES", "value": v, "edited_at": j + 1}
                 for j, v in enumerate(vals)]
        rows += [{"n_edits": t, "record": 9, "kind": "unrelated", "value": 1.0, "edited_at": math.nan}]
        rows += [{"n_edits": t, "record": 0, "kind": "NS", "value": [0.8, 0.75, 0.7, 0.7][t - 1], "edited_at": 1}]
    s = degradation_summary(pd.DataFrame(rows)).set_index("kind")
    assert s.loc["edited ES", "first"] == 1.0 and s.loc["edited ES", "last"] == pytest.approx(0.75)
    assert s.loc["edited ES", "drops_at"] == 3
    assert s.loc["NS", "drops_at"] == 3  # 0.8 -> 0.7: exactly 10 points counts
    assert s.loc["unrelated", "drops_at"] is None and s.loc["unrelated", "change"] == 0
    assert list(s.index) == ["edited ES", "NS", "unrelated"]
    with pytest.raises(ValueError, match="sequential_edits frame"):
        degradation_summary(pd.DataFrame({"x": [1]}))


@pytest.mark.slow
def test_three_sequential_rome_edits_on_the_embedded_model(model):
    from editlens.data import load_facts
    from editlens.rome.editor import rome_editor
    from editlens.rome import get_hparams, stats_for

    hp = get_hparams(model, v_num_grad_steps=5)
    stats = stats_for(model, hp, progress=False)
    facts = [f for f in load_facts() if f.requested_rewrite.relation_id == "P36"]
    saved = weights(model)
    frame = sequential_edits(model, facts[:3], rome_editor(hp, stats), unrelated=facts[3:5], progress=False)
    assert same_weights(model, saved)
    last = frame[(frame["n_edits"] == 3) & (frame["kind"] == "edited ES")].set_index("record")["value"]
    assert last.iloc[-1] == 1.0, frame
    print(degradation_summary(frame))
