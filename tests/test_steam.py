"""STEAM (Chapter 4): anchors from the unedited model, the alignment term, the editor, diagnostics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import without_shape_checks

from editlens.data import as_case, as_request
from editlens.fingerprint import weights_fingerprint
from editlens.rome import Edit, ROMEHyperParams, applied_edit, compute_v
from editlens.rome.editor import rome_editor
from editlens.steam import (
    FIRST_DESIGN,
    PAPER_DESIGN,
    REFERENCE_SOURCES,
    AlignmentTerm,
    AnchorBank,
    AnchorSet,
    KnownFact,
    LayerChoiceError,
    NotEnoughAnchorsError,
    SharedComponents,
    aligned_cosine,
    anchor_candidates,
    check_layers,
    compute_anchors,
    default_layers,
    judged_prompts,
    known_facts,
    select_anchor_prompts,
    steam_editor,
)
from editlens.steam.anchors import stratify
from editlens.steam.diagnostics import (
    cosine_profile,
    first_readable_layer,
    pca_projection,
)
from editlens.steam.states import last_token_states

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
    with pytest.raises(ValueError, match="position"), without_shape_checks():
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
    editor = rome_editor(hp, stats, lambda model, case: seen.append(case.case_id) or [])
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


# ---------------------------------------------------------------------------------------------- the paper's design
def test_reference_sources_are_plain_prompts_of_real_relations():
    cands = anchor_candidates(RECORDS, "Berlin", known_facts(RECORDS, REFERENCE_SOURCES))
    assert {f.prompt for f in cands} == {
        "The capital of Germany is", "The Brandenburg Gate is located in the city of",  # attribute prompts
        "The capital city of Germany is", "Alexanderplatz is located in the city of"}  # rewrite, neighbourhood
    assert {f.relation for f in cands} == {"P36"}  # no pseudo-relation (port:, rel:)
    assert anchor_candidates(RECORDS, "French", known_facts(RECORDS, REFERENCE_SOURCES)) == []  # relation prompt
    with pytest.raises(ValueError, match="Unknown anchor sources.*REFERENCE_SOURCES"):
        known_facts(RECORDS, ["rewrite", "wikidata"])


def test_an_edit_is_never_aligned_with_the_prompts_it_is_judged_on(tiny_model):
    # Prussia -> Berlin is judged (PS) on a prompt that is Germany's rewrite prompt, a Berlin candidate
    prussia = record(5, "Prussia", "The capital city of {} is", "P36", "Berlin", "Konigsberg",
                     paraphrase_prompts=["The capital city of Germany is"])
    assert "The capital city of Germany is" in judged_prompts(prussia)
    pool = RECORDS + [prussia]
    kw = dict(n_anchors=8, min_anchors=1, min_margin=-math.inf, sources=REFERENCE_SOURCES)
    leaky = AnchorBank(tiny_model, pool, exclude_judged=False, **kw).for_case(prussia)
    clean_bank = AnchorBank(tiny_model, pool, exclude_judged=True, **kw)
    clean = clean_bank.for_case(prussia)
    assert "The capital city of Germany is" in {a.prompt for a in leaky.prompts}
    assert "The capital city of Germany is" not in {a.prompt for a in clean.prompts}
    assert clean_bank.for_case(RECORDS[0]) is clean_bank.get("Berlin")  # nothing of France's probes to leave out
    cov = clean_bank.coverage([prussia, RECORDS[0]])
    assert list(cov.n_candidates) == [len(clean.prompts), len(clean.prompts) + 1]


def test_shared_components_are_relation_means_and_centre_the_anchors(tiny_model):
    bank = AnchorBank(tiny_model, RECORDS, n_anchors=4, min_anchors=1, min_margin=-math.inf, n_shared=64,
                      min_shared=1, sources=REFERENCE_SOURCES)
    sc = bank.shared_components()
    assert isinstance(sc, SharedComponents) and bank.shared_components() is sc  # computed once
    by_rel = {}
    for f in known_facts(RECORDS, REFERENCE_SOURCES):
        by_rel.setdefault(f.relation, []).append(f.prompt)
    assert set(sc.by_relation) == set(by_rel) and sc.counts == {r: len(p) for r, p in by_rel.items()}
    torch.testing.assert_close(sc.of("P36", [0, 1]), last_token_states(tiny_model, by_rel["P36"]).mean(0))
    torch.testing.assert_close(sc.of("P999", [1]), sc.overall[[1]])  # a relation the pool lacks: overall mean
    anchors = bank.get("Berlin")
    manual = torch.stack([anchors.states[i] - sc.of(a.fact.relation, [0, 1]) for i, a in enumerate(anchors.prompts)])
    torch.testing.assert_close(sc.centred_anchor(anchors, [0, 1]), manual.mean(0))
    few = AnchorBank(tiny_model, RECORDS, min_anchors=1, min_margin=-math.inf, n_shared=8, min_shared=8)
    assert few.shared_components().by_relation == {}  # no relation has 8 prompts: all use the overall mean
    assert AnchorBank(tiny_model, RECORDS, **FIRST_DESIGN).centre() is None and bank.centre() is not None
    default = AnchorBank(tiny_model, RECORDS).design  # the paper's design is the default
    assert {k: default[k] for k in PAPER_DESIGN} == {**PAPER_DESIGN, "sources": list(REFERENCE_SOURCES)}
    with pytest.raises(ValueError, match="min_shared"):
        AnchorBank(tiny_model, RECORDS, n_shared=4, min_shared=8)


def test_aligned_cosine_centres_the_state_only():
    g = torch.Generator().manual_seed(0)
    h, phi, mu = torch.randn(2, 3, 16, generator=g), torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
    raw = aligned_cosine(h, phi)
    torch.testing.assert_close(raw, torch.nn.functional.cosine_similarity(h, phi[:, None].expand_as(h), dim=-1))
    torch.testing.assert_close(aligned_cosine(h, phi, mu), aligned_cosine(h - mu[:, None], phi))
    # a shared component dominates the raw cosine of unrelated states and vanishes once centred
    big = 20 * torch.randn(16, generator=g)
    assert aligned_cosine(h + big, phi + big).min() > 0.9 and raw.abs().max() < 0.9
    torch.testing.assert_close(aligned_cosine(h + big, phi, big.expand(2, 16)), raw)


def test_the_centred_term_is_its_own_term_and_zero_is_still_rome(tiny_model):
    req = as_request(RECORDS[0])
    bank = AnchorBank(tiny_model, RECORDS, n_anchors=4, min_anchors=1, min_margin=-math.inf, **PAPER_DESIGN)
    anchors, sc = bank.for_case(RECORDS[0]), bank.centre()
    plain = compute_v(tiny_model, req, 0, HP)
    zero = compute_v(tiny_model, req, 0, HP, [AlignmentTerm(anchors, 0.0, centre=sc, relation="P36")])
    assert torch.equal(plain.delta, zero.delta)
    raw = compute_v(tiny_model, req, 0, HP, [AlignmentTerm(anchors, 5.0)])
    centred_term = AlignmentTerm(anchors, 5.0, centre=sc, relation="P36")
    centred = compute_v(tiny_model, req, 0, HP, [centred_term])
    assert not torch.equal(centred.delta, raw.delta) and not torch.equal(centred.delta, plain.delta)
    hist = [h["steam_align"] for h in centred.history]
    assert hist[-1] < hist[0]  # it moves the centred state toward the centred anchor
    with pytest.raises(ValueError, match="only position='last_prompt'"):
        AlignmentTerm(anchors, 1.0, centre=sc, position="subject_last")


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
    bank = AnchorBank(model, load_facts(), **FIRST_DESIGN)  # the raw cosine of the first design
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


@pytest.mark.slow
def test_centred_steam_moves_the_centred_state_on_the_embedded_model(model):
    """The positive control of issue 29: with the paper's design, lambda = 20 moves the rewrite prompt's centred
    state toward the new object's centred anchors far more than ROME does, and keeps the edit."""
    from editlens.data import load_facts
    from editlens.evaluate import probe_scores
    from editlens.rome import compute_rome_edit, get_hparams, stats_for

    hp = get_hparams(model)
    facts = load_facts()
    case = next(f for f in facts if as_request(f).subject == "Louvre")  # Paris -> Berlin
    req = as_request(case)
    bank = AnchorBank(model, facts, **PAPER_DESIGN)
    anchors, sc = bank.for_case(case), bank.centre()
    assert not {a.prompt for a in anchors.prompts} & judged_prompts(case)
    assert {a.fact.source for a in anchors.prompts} <= set(REFERENCE_SOURCES)
    stats = stats_for(model, hp, progress=False)
    layers = default_layers(hp.layer, model.cfg.n_layers)
    phi, mu = sc.centred_anchor(anchors, layers), sc.of(str(req.relation_id), layers)

    def cos() -> float:
        return float(aligned_cosine(last_token_states(model, [req.text], layers).transpose(0, 1), phi, mu).mean())

    before, moved = cos(), {}
    for lam in (0.0, 20.0):
        term = AlignmentTerm(anchors, lam, layers, centre=sc, relation=str(req.relation_id))
        with applied_edit(model, compute_rome_edit(model, case, hp, stats, [term])):
            assert probe_scores(model, case)["ES"] == 1.0
            moved[lam] = cos() - before
    assert moved[20.0] > moved[0.0] + 0.1


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
    plain = _add_generation_metrics({}, as_case(RECORDS[0]), ["France is famous for wine."], desc, [])
    assert "SC" not in plain and "RS" in plain
    opted = _add_generation_metrics({}, as_case(RECORDS[0]), ["France is famous for wine."], desc, [], semantic=True)
    assert {"SC", "SC_new", "SC_true"} <= set(opted)


# ---------------------------------------------------------------------------------------------- the page
def _steam_alignment_script():
    from conftest import load_script

    return load_script("steam_alignment")


def _stored_steam_table(script, key: str):
    from editlens import compare

    folder = script.RESULTS / key
    rows = compare.read_per_record(folder / "per_record.jsonl")
    metrics = [m for m in script.METRICS if m in rows.columns]
    table = compare.summary_table(rows, metrics, cluster="relation", correction="holm")
    assert (folder / "summary.md").read_text(encoding="utf-8") == compare.summary_markdown(table), key
    return rows, table.set_index(["metric", "method"])


PROBES = ("ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM", "GE", "SC")


def test_steam_design_page_tables_are_the_stored_rows():
    """book/steam-design.md: each model's table is what summary_table computes from its stored rows (50 facts,
    every arm on every fact, the paper's design recorded), and the centring table is the stored centring.json."""
    script = _steam_alignment_script()
    page = script.PAGE.read_text(encoding="utf-8")
    assert f"<!-- table:centring -->\n{script.centring_markdown()}\n<!-- /table:centring -->" in page, \
        "book/steam-design.md's centring table is stale. Fix: python scripts/steam_alignment.py --write-page"
    for key in script.MODELS:
        rows, _ = _stored_steam_table(script, key)
        assert rows.groupby("method").size().to_dict() == {"rome": 50, "steam λ=1": 50, "steam λ=20": 50}, key
        settings = json.loads((script.RESULTS / key / "settings.json").read_text())
        assert settings["steam"]["sources"] == list(REFERENCE_SOURCES), key
        assert settings["steam"]["exclude_judged"] and settings["steam"]["centred"], key
        assert f"results/steam-alignment/{key}/summary.md" in page
    minutes = [json.loads((script.RESULTS / k / "settings.json").read_text())["minutes"] for k in script.MODELS]
    assert f"{minutes[0]} minutes for\nSmolLM2 and {minutes[1]} for Gemma" in page


def test_steam_design_page_claims_on_smollm2_hold():
    script = _steam_alignment_script()
    rows, t = _stored_steam_table(script, "smollm2-135m")
    one, control = "steam λ=1", "steam λ=20"

    def diff(metric, method):
        return t.loc[(metric, method)]

    assert diff("cos rewrite", one)["diff vs rome"] == pytest.approx(0.033, abs=0.0005)
    assert diff("cos rewrite", one)["CI excludes 0"]
    assert t.loc[("cos moved", "rome"), "mean"] == pytest.approx(0.032, abs=0.0005)
    for m in PROBES:  # lambda = 1: within two points of ROME, no interval excluding 0
        assert abs(diff(m, one)["diff vs rome"]) <= 0.02 + 1e-9 and not diff(m, one)["CI excludes 0"], m
    assert t.loc[("cos moved", control), "mean"] == pytest.approx(0.352, abs=0.0005)
    for m, (d, lo, hi) in {"cos rewrite": (0.320, 0.222, 0.416), "cos paraphrase": (0.146, 0.066, 0.239),
                           "cos portability": (0.031, 0.021, 0.041), "DNS": (-0.075, -0.138, -0.025)}.items():
        r = diff(m, control)
        assert (r["diff vs rome"], r["diff low"], r["diff high"]) == pytest.approx((d, lo, hi), abs=0.0005), m
    for m, d in {"Port": -0.020, "Port EM": -0.019, "PS": -0.020, "SC": -0.012}.items():
        assert diff(m, control)["diff vs rome"] == pytest.approx(d, abs=0.0005) and not diff(m, control)["CI excludes 0"]
    assert [m for m in PROBES if bool(diff(m, control)["Holm excludes 0"])] == ["DNS"]
    es = diff("ES", control)
    assert (es["diff vs rome"], es["diff low"], es["diff high"]) == pytest.approx((-0.040, -0.096, 0.0), abs=0.0005)
    assert diff("steps", control)["diff vs rome"] == pytest.approx(4.06, abs=0.005)
    geometry = json.loads((script.RESULTS / "smollm2-135m" / "centring.json").read_text())["means"]
    assert geometry["raw"] > geometry["overall-centred"] > 0.5 > geometry["relation-centred, true object"] > 0 \
        > geometry["relation-centred"]


def test_steam_design_page_claims_on_gemma_and_the_verdict_hold():
    script = _steam_alignment_script()
    _, t = _stored_steam_table(script, "gemma3-270m")
    _, smol = _stored_steam_table(script, "smollm2-135m")
    one, control = "steam λ=1", "steam λ=20"
    for m, method, (d, lo, hi) in [("cos rewrite", one, (0.155, 0.094, 0.216)),
                                   ("cos rewrite", control, (0.426, 0.331, 0.512)),
                                   ("cos paraphrase", control, (0.213, 0.145, 0.289)),
                                   ("cos portability", control, (0.061, 0.039, 0.083)),
                                   ("Port", one, (0.020, 0.0, 0.048)), ("Port EM", one, (0.010, 0.0, 0.031)),
                                   ("Port", control, (0.030, -0.047, 0.100)),
                                   ("Port EM", control, (-0.018, -0.077, 0.042))]:
        r = t.loc[(m, method)]
        assert (r["diff vs rome"], r["diff low"], r["diff high"]) == pytest.approx((d, lo, hi), abs=0.0005), (m, method)
    probes = [m for m in PROBES if (m, "rome") in t.index]
    assert "GE" not in probes and "SC" not in probes  # Gemma's run skips generation
    assert not any(bool(t.loc[(m, arm), "CI excludes 0"]) for m in probes for arm in (one, control))
    assert t.loc[("steps", control), "diff vs rome"] == pytest.approx(7.44, abs=0.005)
    # the verdict: on both models the control moves the state (0.32, 0.43) and no portability score gains
    assert round(smol.loc[("cos rewrite", control), "diff vs rome"], 2) == 0.32
    assert round(t.loc[("cos rewrite", control), "diff vs rome"], 2) == 0.43
    for table in (t, smol):
        for arm in (one, control):
            assert table.loc[("cos rewrite", arm), "CI excludes 0"]
            assert not any(bool(table.loc[(m, arm), "CI excludes 0"]) for m in ("Port", "Port EM"))
    geometry = json.loads((script.RESULTS / "gemma3-270m" / "centring.json").read_text())["means"]
    assert geometry["raw"] > geometry["overall-centred"] > 0.5 > geometry["relation-centred, true object"] > 0 \
        > geometry["relation-centred"]
