"""STEAM (Chapter 4): anchors from the unedited model, the alignment term, the editor, diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from editlens.rome.editor import rome_editor
from editlens.rome import Edit, ROMEHyperParams, applied_edit, as_request, compute_v
from editlens.steam import (
    AlignmentTerm,
    AnchorBank,
    AnchorSet,
    KnownFact,
    LayerChoiceError,
    NotEnoughAnchorsError,
    anchor_candidates,
    check_layers,
    compute_anchors,
    default_layers,
    known_facts,
    select_anchor_prompts,
    steam_editor,
)
from editlens.fingerprint import weights_fingerprint
from editlens.steam.anchors import stratify
from editlens.steam.states import last_token_states
from editlens.steam.diagnostics import (
    cosine_profile,
    first_readable_layer,
    pca_projection,
)

# a random model's v0 is tiny: no weight decay and no clamp, so delta can grow (as in test_values.py)
HP = ROMEHyperParams(layer=0, v_num_grad_steps=4, context_lengths=((3, 2),), v_lr=0.5, v_weight_decay=0.0,
                     clamp_norm_factor=1e4)


def record(cid, subject, prompt, rel, new, true, **probes):
    return {"case_id": cid, "requested_rewrite": {"prompt": prompt, "subject": subject, "relation_id": rel,
                                                  "target_new": {"str": new}, "target_true": {"str": true}}, **probes}


RECORDS = [
    record(0, "France", "The capital city of {} is", "P36", "Berlin", "Paris",
           paraphrase_prompts=["France's capital city is"],
           neighborhood_prompts=["The Louvre is located in the city of"],
           attribute_prompts=["The capital of Germany is", "The Brandenburg Gate is located in the city of"],
           relation_prompts=[{"prompt": "The official language of France is", "target": "French"}]),
    record(1, "Germany", "The capital city of {} is", "P36", "Rome", "Berlin",
           neighborhood_prompts=["Alexanderplatz is located in the city of"],
           portability_prompts=[{"prompt": "Max Planck was a citizen of a country whose capital is",
                                 "target_true": "Berlin", "target_new": "Rome"}]),
    record(2, "Angela Merkel", "{} was born in the city of", "P19", "Paris", "Hamburg"),
]


def synthetic_anchors(obj="Berlin", n_layers=2, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return AnchorSet(object=obj, prompts=(), layers=list(range(n_layers)), states=torch.randn(3, n_layers, d, generator=g))


# ---------------------------------------------------------------------------------------------- anchors, no model
def test_candidates_are_attribute_prompts_and_every_prompt_whose_true_answer_is_the_object():
    facts = known_facts(RECORDS)
    cands = anchor_candidates(RECORDS, "Berlin", facts)
    by_prompt = {f.prompt: f for f in cands}
    assert set(by_prompt) == {
        "The capital of Germany is", "The Brandenburg Gate is located in the city of",  # (a) attribute prompts
        "The capital city of Germany is", "Alexanderplatz is located in the city of",  # (b) rewrite, neighbourhood
        "Max Planck was a citizen of a country whose capital is"}  # (b) portability (true answer)
    assert by_prompt["The capital of Germany is"].contrast == "Paris"  # the record's other object
    assert by_prompt["The capital city of Germany is"].source == "rewrite"
    assert by_prompt["Max Planck was a citizen of a country whose capital is"].relation == "port:P36"
    french = anchor_candidates(RECORDS, "French", facts)
    assert [f.relation for f in french] == ["rel:The official language of {} is"]
    assert anchor_candidates(RECORDS, "Atlantis", facts) == []


def test_selection_filters_by_margin_and_stratifies_over_relations():
    facts = [KnownFact(f"p{i}", "Berlin", "Paris", rel, "attribute") for i, rel in enumerate("AAAABBC")]
    margins = [5.0, 4.0, 3.0, -1.0, 2.0, 0.5, 9.0]
    chosen = select_anchor_prompts(facts, margins, n_anchors=4, min_margin=0.0)
    assert [a.fact.prompt for a in chosen] == ["p0", "p4", "p6", "p1"]  # A, B, C round-robin, largest first
    assert all(a.margin > 0 for a in select_anchor_prompts(facts, margins, n_anchors=10))
    assert len(select_anchor_prompts(facts, margins, n_anchors=10, min_margin=3.5)) == 3
    assert stratify([], 3) == []
    with pytest.raises(ValueError, match="n_anchors must be at least 1"):
        select_anchor_prompts(facts, margins, n_anchors=0)


def test_not_enough_anchors_error_names_object_count_and_fix():
    err = NotEnoughAnchorsError("Atlantis", 1, 3, 4, 0.0)
    assert isinstance(err, ValueError)
    msg = str(err)
    assert "'Atlantis'" in msg and "1 anchor prompt" in msg and "at least 3" in msg and "Fix:" in msg


# ---------------------------------------------------------------------------------------------- layers, no model
def test_default_layers_run_from_above_the_edit_layer_to_two_thirds_depth():
    assert default_layers(4, 30) == list(range(5, 21))
    assert default_layers(0, 2) == [1]
    assert default_layers(25, 30) == [26]
    with pytest.raises(LayerChoiceError, match="no layer above"):
        default_layers(29, 30)


@pytest.mark.parametrize("layers, match", [([], "No layers"), ([5, 30], r"\[30\] are outside"),
                                           ([3, 4, 5], r"\[3, 4\] are not above the edit layer 4"), ([-1], "outside")])
def test_bad_layers_raise_clear_errors(layers, match):
    with pytest.raises(LayerChoiceError, match=match) as err:
        check_layers(layers, 4, 30)
    assert "Fix:" in str(err.value)
    with pytest.raises(LayerChoiceError, match=match):
        AlignmentTerm(synthetic_anchors(n_layers=30), 1.0, layers, n_layers=30, edit_layer=4)


def test_alignment_term_checks_weight_position_and_anchor_layers():
    anchors = synthetic_anchors(n_layers=2)
    with pytest.raises(ValueError, match="weight"):
        AlignmentTerm(anchors, -1.0)
    with pytest.raises(ValueError, match="position"):
        AlignmentTerm(anchors, 1.0, position="first")
    partial = AnchorSet("Berlin", (), [0], torch.zeros(1, 1, 64))
    with pytest.raises(ValueError, match="computed at layers"):
        AlignmentTerm(partial, 1.0, n_layers=2, edit_layer=0)


def test_pca_projection_is_tidy():
    g = torch.Generator().manual_seed(0)
    df = pca_projection({"anchors": torch.randn(5, 16, generator=g), "edit": torch.randn(2, 16, generator=g)},
                        labels={"edit": ["ROME", "STEAM"]}, fit_on=["anchors"])
    assert list(df.columns) == ["group", "label", "pc1", "pc2"] and len(df) == 7
    assert list(df[df.group == "edit"].label) == ["ROME", "STEAM"]
    assert abs(df[df.group == "anchors"][["pc1", "pc2"]].mean()).max() < 1e-5  # centred on what it was fitted on
    assert len(df.attrs["explained_variance"]) == 2
    with pytest.raises(ValueError, match="not among the groups"):
        pca_projection({"a": torch.randn(3, 4)}, fit_on=["b"])


# ---------------------------------------------------------------------------------------------- tiny model
class GradProbe(AlignmentTerm):
    """The alignment term that also records d(term)/d(delta) at every step (the term alone)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grads = []

    def __call__(self, ctx):
        value = super().__call__(ctx)
        (g,) = torch.autograd.grad(value, ctx.delta, retain_graph=True)
        self.grads.append(g.detach().clone())
        return value


def test_term_gradient_reaches_delta_and_the_term_decreases(tiny_model):
    req = as_request(RECORDS[0])
    anchors = synthetic_anchors(n_layers=2)
    term = GradProbe(anchors, 5.0)  # layers resolved from the edit (layer 0 of 2: layer 1)
    res = compute_v(tiny_model, req, 0, HP, [term])
    assert term.layers == [1] and term.hook_names == ["blocks.1.hook_resid_post"]
    assert term.grads and term.grads[0].norm() > 0 and torch.isfinite(term.grads[0]).all()
    hist = [h["steam_align"] for h in res.history]
    assert 0 < hist[0] <= 10 and hist[-1] < hist[0]  # lambda * (1 - cos) in [0, 2 lambda], and it moves toward phi


def test_subject_position_and_paraphrase_rows(tiny_model):
    req = as_request(RECORDS[0])
    term = GradProbe(synthetic_anchors(), 1.0, position="subject_last", paraphrases=["France's capital city is"])
    compute_v(tiny_model, req, 0, HP.replace(v_num_grad_steps=2), [term])
    assert term.grads[0].norm() > 0


def test_lambda_zero_reproduces_rome_bit_for_bit(tiny_model):
    req = as_request(RECORDS[0])
    plain = compute_v(tiny_model, req, 0, HP)
    zero = compute_v(tiny_model, req, 0, HP, [AlignmentTerm(synthetic_anchors(), 0.0, paraphrases=["France's capital city is"])])
    assert torch.equal(plain.v_star, zero.v_star) and torch.equal(plain.delta, zero.delta)
    assert [h["loss"] for h in plain.history] == [h["loss"] for h in zero.history]
    steam = compute_v(tiny_model, req, 0, HP, [AlignmentTerm(synthetic_anchors(), 5.0)])
    assert not torch.equal(plain.v_star, steam.v_star)


class FullShapeTerm(AlignmentTerm):
    """The alignment term reading ctx.acts at full shape (no declared positions): the slow reference path."""

    def positions(self, ctx):
        return None

    def distances(self, ctx, *, initial=False):
        rows, pos = self.rows_and_positions(ctx)
        source = ctx.initial if initial else ctx.acts
        h = torch.stack([source[name][rows, pos] for name in self.hook_names])
        return 1 - torch.nn.functional.cosine_similarity(h.float(), self.phi.float()[:, None, :].expand_as(h), dim=-1)


@pytest.mark.parametrize("position, paraphrases", [("last_prompt", []), ("subject_last", ["France's capital city is"])])
def test_declared_positions_give_the_full_shape_reading_exactly(tiny_model, position, paraphrases):
    """compute_vs gathers the term's positions for the whole batch (fast); the values equal ctx.acts[...][rows, pos]."""
    from editlens.rome.values import compute_vs

    reqs = [as_request(RECORDS[0]), as_request(RECORDS[1])]
    runs = {}
    for cls in (AlignmentTerm, FullShapeTerm):
        terms = [[cls(synthetic_anchors(), 5.0, position=position, paraphrases=paraphrases)] for _ in reqs]
        runs[cls] = compute_vs(tiny_model, reqs, 0, HP, terms)
    for fast, slow in zip(runs[AlignmentTerm], runs[FullShapeTerm]):
        assert torch.allclose(fast.delta, slow.delta, rtol=0, atol=1e-6)
        assert [h["steam_align"] for h in fast.history] == pytest.approx([h["steam_align"] for h in slow.history],
                                                                         abs=1e-6)


def random_edit(model, layer=0, scale=0.5, seed=1):
    W = model.blocks[layer].mlp.W_out
    g = torch.Generator().manual_seed(seed)
    return Edit(layer=layer, delta=scale * torch.randn(W.shape, generator=g).to(W.dtype))


def test_anchors_come_from_the_unedited_model_while_an_edit_is_applied(tiny_model):
    prompts = ["The capital of Germany is", "Alexanderplatz is located in the city of"]
    clean = compute_anchors(tiny_model, prompts, obj="Berlin")
    assert clean.states.shape == (2, 2, 64) and clean.vectors.shape == (2, 64)
    edit = random_edit(tiny_model)
    with applied_edit(tiny_model, edit):
        W_edited = tiny_model.blocks[0].mlp.W_out.detach().clone()
        on_edited = compute_anchors(tiny_model, prompts)
        assert not torch.allclose(on_edited.states, clean.states)  # the edit does change the states
        lifted = compute_anchors(tiny_model, prompts, obj="Berlin", undo=edit)
        assert torch.equal(lifted.states, clean.states) and lifted.fingerprint == clean.fingerprint
        assert edit.applied and torch.equal(tiny_model.blocks[0].mlp.W_out, W_edited)  # re-applied bit-exactly
    assert clean.fingerprint == weights_fingerprint(tiny_model)


def test_anchor_bank_refuses_edited_weights_and_caches(tiny_model):
    bank = AnchorBank(tiny_model, RECORDS, n_anchors=4, min_anchors=1, min_margin=-math.inf)
    before = bank.get("Berlin")
    assert 1 <= len(before.prompts) <= 4 and bank.get("Berlin") is before  # cached
    assert {a.fact.answer for a in before.prompts} == {"Berlin"}
    edit = random_edit(tiny_model)
    with applied_edit(tiny_model, edit):
        assert bank.get("Berlin") is before  # precomputed before the edit: still the unedited anchors
        with pytest.raises(RuntimeError, match="weights changed"):
            bank.get("Paris")
        paris = bank.get("Paris", undo=edit)
    assert torch.equal(paris.states, compute_anchors(tiny_model, paris.prompts).states)
    with pytest.raises(NotEnoughAnchorsError, match="'Atlantis' has 0 anchor prompt"):
        bank.get("Atlantis")
    cov = bank.coverage([RECORDS[0], RECORDS[2], record(9, "X", "{} is in", "P1", "Atlantis", "Paris")])
    assert list(cov.ok) == [True, True, False] and list(cov.target_new) == ["Berlin", "Paris", "Atlantis"]
    with pytest.raises(ValueError, match="min_anchors"):
        AnchorBank(tiny_model, RECORDS, n_anchors=2, min_anchors=3)


def test_steam_editor_builds_per_case_terms_and_restores_weights(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    from editlens.rome import key_stats as ks

    stats = ks.get_key_stats(tiny_model, 0, n_tokens=300, seq_len=32, progress=False)
    bank = AnchorBank(tiny_model, RECORDS, n_anchors=4, min_anchors=1, min_margin=-math.inf)
    hp = HP.replace(mom2_n_tokens=300)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    with steam_editor(hp, stats, bank, 0.0)(tiny_model, RECORDS[0]) as zero_edits:
        zero = zero_edits[0].v_star
    with rome_editor(hp, stats)(tiny_model, RECORDS[0]) as rome_edits:
        assert torch.equal(rome_edits[0].v_star, zero)  # lambda = 0 is ROME through the editor too
    with steam_editor(hp, stats, bank, 2.0)(tiny_model, RECORDS[0]) as edits:
        assert "steam_align" in edits[0].v_result.history[0]
    for n, p in tiny_model.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(LayerChoiceError, match="not above the edit layer"):
        steam_editor(hp, stats, bank, 1.0, layers=[0])
    seen = []
    editor = rome_editor(hp, stats, lambda model, case: seen.append(case["case_id"]) or [])
    with editor(tiny_model, RECORDS[2]):
        pass
    assert seen == [2]
    # a record without enough anchors: an error, or (missing="rome") ROME's edit
    atlantis = record(9, "X", "{} is in", "P1", "Atlantis", "Paris")
    with pytest.raises(NotEnoughAnchorsError):
        with steam_editor(hp, stats, bank, 2.0)(tiny_model, atlantis):
            pass
    with steam_editor(hp, stats, bank, 2.0, missing="rome")(tiny_model, atlantis) as as_rome:
        assert "steam_align" not in as_rome[0].v_result.history[0]
    with pytest.raises(ValueError, match="missing"):
        steam_editor(hp, stats, bank, 2.0, missing="skip")
    # batched: prepare() computes the next records' edits together, each applied on its own
    batched = steam_editor(hp, stats, bank, 2.0, batch=2)
    batched.prepare(tiny_model, [RECORDS[0], RECORDS[2]])
    for rec in (RECORDS[0], RECORDS[2]):
        with batched(tiny_model, rec) as edits:
            assert edits[0].applied and "steam_align" in edits[0].v_result.history[0]
    for n, p in tiny_model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_diagnostics_on_the_tiny_model(tiny_model):
    anchors = compute_anchors(tiny_model, ["The capital of Germany is", "Berlin is"], obj="Berlin")
    control = compute_anchors(tiny_model, ["The capital of France is"], obj="Paris")
    df = cosine_profile(tiny_model, ["The capital city of France is"], anchors, controls=[control], label="unedited")
    assert set(df.reference) == {"anchors", "organic", "control"} and set(df.layer) == {0, 1}
    assert df.cosine.between(-1, 1).all()
    same = cosine_profile(tiny_model, ["The capital of Germany is", "Berlin is"], anchors)
    assert same[same.reference == "anchors"].cosine.max() <= 1 + 1e-6
    layer = first_readable_layer(tiny_model, "The capital of Germany is", "Berlin", top_k=len(tiny_model.tokenizer))
    assert layer == 0  # every token is in the top |vocab|
    with pytest.raises(ValueError, match="top_k"):
        first_readable_layer(tiny_model, "x", "y", top_k=0)
    # from states the caller already has: the same profile and the same layer as the logit lens's own run
    prompts = ["The capital city of France is", "Berlin is"]
    states = last_token_states(tiny_model, prompts)
    torch.testing.assert_close(
        torch.tensor(cosine_profile(tiny_model, prompts, anchors, controls=[control], states=states).cosine.values),
        torch.tensor(cosine_profile(tiny_model, prompts, anchors, controls=[control]).cosine.values))
    vocab = len(tiny_model.tokenizer)
    for prompt in prompts:
        for top_k in (1, 50, 2000, vocab):
            for answer in ("Berlin", "Paris", "the"):
                assert (first_readable_layer(tiny_model, prompt, answer, top_k, states=states[prompts.index(prompt)])
                        == first_readable_layer(tiny_model, prompt, answer, top_k)), (prompt, answer, top_k)
    with pytest.raises(ValueError, match="every layer"):
        first_readable_layer(tiny_model, prompts[0], "Berlin", states=states[0, :1])


# ---------------------------------------------------------------------------------------------- embedded model
@pytest.mark.slow
def test_steam_on_embedded_model_moves_toward_anchors_and_keeps_the_edit(model):
    from editlens.data import load_facts
    from editlens.evaluate import probe_scores
    from editlens.rome import compute_rome_edit, get_hparams, stats_for
    from editlens.steam.states import last_token_states

    hp = get_hparams(model)
    W = model.blocks[hp.layer].mlp.W_out
    saved = W.detach().clone()
    case = load_facts()[0]  # France: Paris -> Berlin
    req = as_request(case)
    bank = AnchorBank(model, load_facts())
    anchors = bank.get(req.target_new)
    assert len(anchors.prompts) == 8 and all(a.margin > 0 for a in anchors.prompts)
    stats = stats_for(model, hp, progress=False)
    layers = default_layers(hp.layer, model.cfg.n_layers)
    cos = {}
    try:
        for lam in (0.0, 1.0):
            edit = compute_rome_edit(model, case, hp, stats, [AlignmentTerm(anchors, lam, layers)])
            with applied_edit(model, edit):
                assert probe_scores(model, case)["ES"] == 1.0
                h = last_token_states(model, [req.text], layers)[0]
                cos[lam] = float(torch.nn.functional.cosine_similarity(h, anchors.at(layers), dim=-1).mean())
            assert torch.equal(W, saved)
    finally:
        with torch.no_grad():
            W.copy_(saved)
    assert cos[1.0] > cos[0.0]


# ---------------------------------------------------------------------------------------------- SC (opt-in metric)
def test_semantic_consistency_is_opt_in_and_discriminates():
    from editlens.data import load_object_descriptions
    from editlens.evaluate import (
        GenerationSettings,
        _add_generation_metrics,
        embedding_consistency,
    )

    assert "semantic" not in GenerationSettings().as_settings()  # Chapter 3's recorded settings are unchanged
    assert GenerationSettings(semantic=True).as_settings()["semantic"] is True
    desc = load_object_descriptions()
    new, true = desc["Berlin"], desc["Paris"]
    about_new = embedding_consistency(["Berlin is the capital of Germany, on the river Spree."], new, true)
    about_true = embedding_consistency(["Paris is the capital of France, on the river Seine."], new, true)
    assert about_new["SC"] > 0 > about_true["SC"]
    assert math.isnan(embedding_consistency([], new, true)["SC"])
    plain = _add_generation_metrics({}, RECORDS[0], ["France is famous for wine."], desc, [])
    assert "SC" not in plain and "RS" in plain
    opted = _add_generation_metrics({}, RECORDS[0], ["France is famous for wine."], desc, [], semantic=True)
    assert {"SC", "SC_new", "SC_true"} <= set(opted)
