"""Several edited models in one batch (editlens.rome.rowwise) and the batched generations of evaluate_edits."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import torch

from editlens import evaluate as ev
from editlens.rome import applied_edit, compute_rome_edit, rome_editor
from editlens.rome.rowwise import rowwise_edits

CASES = [
    {"case_id": 1, "requested_rewrite": {"prompt": "The capital of {} is", "subject": "France",
                                         "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}},
     "paraphrase_prompts": ["In France the capital is"], "neighborhood_prompts": ["The capital of Spain is"],
     "generation_prompts": ["France is", "People in France"]},
    {"case_id": 2, "requested_rewrite": {"prompt": "{} is a city in", "subject": "Madrid",
                                         "target_new": {"str": "Japan"}, "target_true": {"str": "Spain"}},
     "paraphrase_prompts": ["Madrid lies in"], "neighborhood_prompts": ["Barcelona is a city in"],
     "generation_prompts": ["Madrid is", "In Madrid"]},
]


@pytest.mark.float32
def test_rowwise_edits_equal_edited_weights(tiny_model, tiny_rome):
    hp, stats = tiny_rome
    edits = [compute_rome_edit(tiny_model, c, hp, stats) for c in CASES]
    before = tiny_model.blocks[0].mlp.W_out.detach().clone()
    ids = torch.tensor([tiny_model.tokenizer("The capital of France is")["input_ids"][:4],
                        tiny_model.tokenizer("Madrid is a city in")["input_ids"][:4],
                        tiny_model.tokenizer("The capital of France is")["input_ids"][:4]])
    hf = tiny_model.original_model
    with torch.no_grad():
        base = hf(ids).logits
        want = []
        for row, e in zip(ids, [edits[0], edits[1], None]):
            with applied_edit(tiny_model, e) if e is not None else contextlib.nullcontext():
                want.append(hf(row[None]).logits[0])
        with rowwise_edits(tiny_model, [[edits[0]], [edits[1]], []]):
            got = hf(ids).logits
        after = hf(ids).logits
    assert (want[0] - base[0]).abs().max() > 1e-3  # the edit does change the logits
    for b in range(3):
        torch.testing.assert_close(got[b], want[b], rtol=1e-4, atol=1e-4)
    assert torch.equal(after, base)  # hooks gone
    assert torch.equal(tiny_model.blocks[0].mlp.W_out, before)  # weights never touched


def test_rowwise_edits_errors(tiny_model, tiny_rome):
    hp, stats = tiny_rome
    e = compute_rome_edit(tiny_model, CASES[0], hp, stats)
    ids = torch.tensor([tiny_model.tokenizer("The capital of France is")["input_ids"][:4]] * 3)
    with rowwise_edits(tiny_model, [[e], []]), pytest.raises(RuntimeError, match="batch of 3"):
        tiny_model.original_model(ids)
    with pytest.raises(ValueError, match="more than one edit"):
        with rowwise_edits(tiny_model, [[e, e]]):
            pass
    bare = type(e)(layer=e.layer, delta=e.delta)
    with pytest.raises(ValueError, match="no rank-one factors"):
        with rowwise_edits(tiny_model, [[bare]]):
            pass
    with torch.no_grad():  # nothing left behind by the failures
        assert torch.equal(tiny_model.original_model(ids[:1]).logits, tiny_model.original_model(ids[:1]).logits)
    assert not any(m._forward_hooks for m in tiny_model.original_model.modules())


def test_batched_generations_equal_generating_inside_each_edit(tiny_model, tiny_rome):
    hp, stats = tiny_rome
    gen = ev.GenerationSettings(n_prompts=2, max_new_tokens=6)
    kw = dict(generation=gen, descriptions={}, progress=False, baseline=False)
    batched = ev.evaluate_edits(tiny_model, CASES, rome_editor(hp, stats), **kw)
    inside = ev.evaluate_edits(tiny_model, CASES, rome_editor(hp, stats), batch_generations=False, **kw)
    for a, b in zip(batched.records, inside.records):
        assert a["edited"]["generations"] == b["edited"]["generations"]
        assert a["edited"]["ES"] == b["edited"]["ES"] and a["edited"]["GE"] == pytest.approx(b["edited"]["GE"])


def test_batched_generations_refuse_an_editor_that_does_more(tiny_model, tiny_rome):
    """An editor that yields its ROME edit but also adds a hook cannot be batched: a clear error, not wrong text."""
    hp, stats = tiny_rome
    rome_fn = rome_editor(hp, stats)

    @contextlib.contextmanager
    def edit_and_steer(model, case):
        with rome_fn(model, case) as edits:
            bump = lambda act, hook: act + 5.0
            with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", bump)]):
                yield edits

    gen = ev.GenerationSettings(n_prompts=1, max_new_tokens=3)
    with pytest.raises(RuntimeError, match="batch_generations=False"):
        ev.evaluate_edits(tiny_model, CASES, edit_and_steer, generation=gen, descriptions={}, progress=False,
                          baseline=False)
    ok = ev.evaluate_edits(tiny_model, CASES, edit_and_steer, generation=gen, descriptions={}, progress=False,
                           baseline=False, batch_generations=False)
    assert len(ok.records) == 2 and "GE" in ok.records[0]["edited"]


def test_evaluate_edits_draws_one_progress_bar(tiny_model, tiny_rome, capsys):
    """The unedited generations, the edits and the edited generations advance one bar (a chapter stores its last
    line), whose final postfix holds the edited scores."""
    hp, stats = tiny_rome
    ev.evaluate_edits(tiny_model, CASES, rome_editor(hp, stats), desc="one bar",
                      generation=ev.GenerationSettings(n_prompts=1, max_new_tokens=3), progress=True)
    err = capsys.readouterr().err
    lines = [seg for seg in err.replace("\r", "\n").splitlines() if seg.strip()]
    assert lines and all(seg.startswith("one bar") for seg in lines), lines
    assert f"{len(CASES) + 2}/{len(CASES) + 2}" in lines[-1] and "done: ES" in lines[-1]


def test_next_token_logits_many_equals_one_prompt_at_a_time(tiny_model, tiny_rome):
    """The guard of the batched generations runs many records in one left-padded float32 pass: each row's
    logits are those of its prompt run alone with its own edit (padding moves them by rounding only)."""
    hp, stats = tiny_rome
    edits = [compute_rome_edit(tiny_model, c, hp, stats) for c in CASES]
    prompts = ["The capital of France is", "Madrid", "People in France speak"]  # three lengths: padding
    row_edits = [[edits[0]], [edits[1]], []]
    many = ev.next_token_logits_many(tiny_model, prompts, row_edits)
    assert many.shape == (3, tiny_model.cfg.d_vocab) and many.dtype == torch.float32
    for p, e, got in zip(prompts, row_edits, many):
        torch.testing.assert_close(got, ev.next_token_logits(tiny_model, p, row_edits=e), rtol=1e-5, atol=1e-5)
    alone = ev.next_token_logits(tiny_model, prompts[0])
    assert (many[0] - alone).abs().max() > 1e-3  # the row's edit does act


def test_run_methods_generation_batches_leave_the_rows_unchanged(tiny_model, tiny_rome):
    """run_methods defers generations over records: one record per batch and all records in one batch give the
    same texts, hence the same generation metrics."""
    from editlens.compare import run_methods

    hp, stats = tiny_rome
    editors = {"rome": rome_editor(hp, stats)}
    gen = ev.GenerationSettings(n_prompts=2, max_new_tokens=6)
    kw = dict(generation=gen, descriptions={}, progress=False)
    one = run_methods(tiny_model, CASES, editors, generation_batch=1, **kw)
    together = run_methods(tiny_model, CASES, editors, generation_batch=32, **kw)
    assert one["GE"].notna().all()
    pd.testing.assert_frame_equal(one.drop(columns="seconds"), together.drop(columns="seconds"), rtol=0, atol=1e-9)
