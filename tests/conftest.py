"""Shared fixtures and session checks for the whole suite (unit tests, notebooks, book build).

Fixtures:
- ``repo_root``: the repository root (``Path``).
- ``embedded``: ``(bridge, tokenizer)`` = ``editlens.load_model()``, loaded once per session (slow).
- ``model`` / ``tokenizer``: the two halves of ``embedded`` (session-scoped). Hooks a test leaves
  on ``model`` are removed after it. It is shared by all tests: never edit its weights in place;
  copy what you change.
- ``tiny_model``: a random 2-layer Llama (hidden 64, 4 query heads, 2 key/value heads) with the
  embedded tokenizer's vocabulary, wrapped in a ``TransformerBridge``: for fast structural tests.
  Needs the cached tokenizer only (``make setup``), not the model weights.
- ``tiny_rome``: ``(hparams, key statistics)`` for quick ROME edits of ``tiny_model`` at layer 0.

Where the tiny model runs (both default to this CPU in float32):
- ``EDITLENS_TEST_DEVICE=cuda`` builds ``tiny_model`` on that device, and skips the tests that need the
  embedded model's weights (they do not travel to a GPU machine; see ``make test-device``).
- ``EDITLENS_TEST_PRECISION=auto`` (or ``bfloat16``) makes ``tiny_model`` compute as ``load_model`` would
  (``editlens.precision``); a test that checks float32 arithmetic asks for it with ``@pytest.mark.float32``.

Helpers (plain functions, imported as ``from conftest import ...``):
- ``parameters_cell(nb)``: a chapter's papermill ``parameters`` cell, its index and literal values.
- ``inject_parameters(nb, values)``: a cell assigning ``values`` right after it, as papermill does.
- ``load_script(name)``: ``scripts/{name}.py`` imported as a module (its page tables, its helpers).

Mark a test that loads the embedded model or runs a notebook with ``@pytest.mark.slow``.
"""

from __future__ import annotations

import ast
import contextlib
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Run-time shape checks: every function and dataclass of these modules (those that declare jaxtyping shapes such
# as Float[Tensor, "batch pos d_model"]) checks its arguments and return value with beartype, the dimension names
# bound consistently within each call. Installed before any editlens module is imported; EDITLENS_SHAPE_CHECKS=0
# turns it off (to time the tests without it). Annotations of names imported only under TYPE_CHECKING (the
# TransformerBridge of `model`) are not checked at run time: beartype cannot resolve them and skips them.
SHAPE_CHECKED = [
    "editlens.anatomy", "editlens.block_runner", "editlens.evaluate", "editlens.fused_attention", "editlens.lens",
    "editlens.localize", "editlens.memit", "editlens.rome", "editlens.sadr", "editlens.scoring", "editlens.sentence",
    "editlens.steam", "editlens.steering", "editlens.tracing",
]
if os.environ.get("EDITLENS_SHAPE_CHECKS", "1") != "0":
    import jaxtyping

    # is_pep484_tower: an int is a float (and a float a complex), as PEP 484 and mypy have it.
    jaxtyping.install_import_hook(SHAPE_CHECKED, "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

# Tests never reach the Hugging Face hub (make test exports this too; this covers a bare `pytest`).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Notebooks kept as test data under tests/ are inputs, not chapters: nbval must not collect them.
collect_ignore_glob = ["fixtures/*.ipynb", "fixtures/**/*.ipynb"]

TEST_DEVICE = os.environ.get("EDITLENS_TEST_DEVICE", "cpu")
TEST_PRECISION = os.environ.get("EDITLENS_TEST_PRECISION", "float32")
EMBEDDED_FIXTURES = {"embedded", "model", "tokenizer"}


# Which chapters `make test` replays (nbval) on this machine. The stored runs computed in bfloat16 on a CPU with
# AMX; a CPU without native bf16 computes in float32 (editlens.precision), and there the chapters take about 4
# times as long: on a 2-core AMD EPYC (AVX2 only), Chapters 2 and 6 had not both finished after 42 minutes side by
# side, and the whole replay would pass CI's 90 minutes. So, on such a CPU, `make test` replays the chapters whose
# stored run takes at most FLOAT32_REPLAY_MINUTES on one thread and skips the others' cells, each with its reason
# in the summary (-ra). EDITLENS_REPLAY=all replays every chapter anywhere (`make test EDITLENS_REPLAY=all`);
# `make check-portable` re-executes every chapter in float32 and compares its checked outputs. The rule lives in
# this conftest, so it applies when tests/ is collected too (as in make test); `pytest --nbval-lax notebooks/X`
# alone replays X.
FLOAT32_REPLAY_MINUTES = 7.0
REPLAY = os.environ.get("EDITLENS_REPLAY", "auto")


def stored_times(path: Path) -> dict[str, float | int]:
    """A chapter's stored run times (seconds in all, to its first and last exercise check): scripts/chapter_times.py."""
    import sys

    scripts = str(REPO_ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import chapter_times

    return chapter_times.chapter_times(path)


def chapters_not_replayed(native_bf16: bool, replay: str = "auto") -> dict[str, str]:
    """Chapter stem -> why `make test` does not replay it here (empty where every chapter is replayed)."""
    if replay not in ("auto", "all"):
        raise ValueError(f"EDITLENS_REPLAY={replay!r}: use 'auto' (every chapter where the CPU has native bf16, "
                         f"else those whose stored run takes at most {FLOAT32_REPLAY_MINUTES:g} minutes) or 'all'")
    if native_bf16 or replay == "all":
        return {}
    out = {}
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        minutes = stored_times(path)["total"] / 60
        if minutes > FLOAT32_REPLAY_MINUTES:
            out[path.stem] = (
                f"not replayed on this CPU: it has no native bf16, so the chapter computes in float32, about 4x "
                f"its stored bf16 run of {minutes:.1f} min (> FLOAT32_REPLAY_MINUTES = {FLOAT32_REPLAY_MINUTES:g}). "
                "Replay it with `make test EDITLENS_REPLAY=all` or `make check-portable`.")
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On another device, skip the tests that need the embedded model's weights (they stay on this machine).
    On a CPU without native bf16, skip the replay of the long chapters (``chapters_not_replayed``)."""
    notebooks = [item for item in items if item.path.suffix == ".ipynb"]
    if notebooks and TEST_DEVICE == "cpu":
        from editlens.precision import native_bf16

        skipped = chapters_not_replayed(native_bf16("cpu")[0], REPLAY)
        for item in notebooks:
            if item.path.stem in skipped:
                item.add_marker(pytest.mark.skip(reason=f"{item.path.stem} {skipped[item.path.stem]}"))
    if TEST_DEVICE == "cpu":
        return
    skip = pytest.mark.skip(reason=f"needs the embedded model, which does not travel to {TEST_DEVICE}")
    for item in items:
        if EMBEDDED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


@contextlib.contextmanager
def without_shape_checks() -> Iterator[None]:
    """The run-time type checks (SHAPE_CHECKED) off: for a test of a function's own check of an argument of the
    wrong type, e.g. ``position="first"`` where the annotation says ``Literal["all", "last"]``, which the type
    checker would otherwise refuse first (with a TypeError)."""
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


def parameters_cell(nb) -> tuple[int, dict]:
    """Index of the code cell tagged ``parameters`` (papermill's convention) and the literal values it assigns
    (a computed default is left out: it cannot be overridden from the command line anyway)."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            values = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        values[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
            return index, values
    raise AssertionError("no code cell tagged `parameters` (papermill needs one to inject values)")


def inject_parameters(nb, values: dict) -> int:
    """Insert a cell tagged ``injected-parameters`` assigning ``values`` right after the ``parameters`` cell, as
    papermill does; returns the new cell's index. A name the parameters cell does not define is an error (the
    assignment would be a silent no-op)."""
    import nbformat

    index, defaults = parameters_cell(nb)
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise AssertionError(f"{unknown} are not assigned in the parameters cell (it has {sorted(defaults)})")
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return index + 1


SETUP_HINT = "Fix: run `make setup` (once, with network access) from the repository root."


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail fast: every chapter is written against TransformerLens 4 (TransformerBridge)."""
    try:
        version = metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:
        pytest.exit(f"transformer-lens is not installed. {SETUP_HINT}", returncode=4)
    if version.split(".")[0] != "4":
        pytest.exit(
            f"transformer-lens {version} is installed, but the book needs major version 4 "
            f"(HookedTransformer was removed in 4.0; the chapters use TransformerBridge). "
            f"Fix: pip install -e '.[book,test,dev]' (pins transformer-lens==4.x).",
            returncode=4,
        )


def load_script(name: str):
    """``scripts/{name}.py`` imported as the module ``name`` (registered in ``sys.modules``: dataclasses look their
    module up while the file executes)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def embedded():
    """``(TransformerBridge, tokenizer)`` of the embedded SmolLM2-135M-Instruct, on the CPU."""
    import editlens
    from editlens.embedded import EmbeddedModelError

    editlens.seed_everything(0)
    try:
        return editlens.load_model(device="cpu")
    except EmbeddedModelError as err:
        pytest.fail(f"The embedded model is not available: {err}\n{SETUP_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def model(embedded):
    """The shared embedded ``TransformerBridge`` (session-scoped; see _reset_model_hooks)."""
    return embedded[0]


@pytest.fixture(scope="session")
def tokenizer(embedded):
    return embedded[1]


@pytest.fixture(autouse=True)
def _reset_model_hooks(request):
    """After each test that used the shared model, remove any hook it left behind."""
    yield
    for name in ("model", "embedded"):
        value = request.node.funcargs.get(name) if hasattr(request.node, "funcargs") else None
        bridge = value[0] if isinstance(value, tuple) else value
        if bridge is not None:
            bridge.reset_hooks()


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's tokenizer alone (fast: no weights are read)."""
    from transformers import AutoTokenizer

    from editlens import embedded as emb

    folder = emb.model_cache_path()
    if not (folder / "tokenizer.json").exists():
        pytest.fail(f"No cached tokenizer in {folder}. {SETUP_HINT}", pytrace=False)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture
def tiny_model(request, embedded_tokenizer):
    """A random tiny Llama (2 layers, d_model 64, 4 heads, 2 KV heads) with the embedded model's tokenizer
    (editlens.localize.toy.tiny_llama, Hugging Face's initialisation), on ``EDITLENS_TEST_DEVICE`` computing in
    ``EDITLENS_TEST_PRECISION`` (float32 for a test marked ``float32``).

    Function-scoped and seeded: every test gets the same fresh weights and may edit them.
    """
    from editlens import precision
    from editlens.localize.toy import tiny_llama

    bridge = tiny_llama(0, d_mlp=128, weight_std=None, tokenizer=embedded_tokenizer, tie_embeddings=True,
                        max_positions=256, device=TEST_DEVICE)[0]
    if TEST_PRECISION != "float32" and request.node.get_closest_marker("float32") is None:
        precision.apply(bridge, precision.resolve(TEST_PRECISION, TEST_DEVICE))
    return bridge


@pytest.fixture
def tiny_rome(tiny_model, tmp_path, monkeypatch):
    """``(hparams, key statistics)`` for quick ROME edits of ``tiny_model`` at layer 0 (3 v* steps; C from 300
    tokens, cached in a per-test directory)."""
    monkeypatch.setenv("EDITLENS_CACHE", str(tmp_path))
    from editlens.rome import ROMEHyperParams
    from editlens.rome import key_stats as ks

    hp = ROMEHyperParams(layer=0, v_num_grad_steps=3, context_lengths=((3, 2),), v_lr=0.5, v_weight_decay=0.0,
                         clamp_norm_factor=1e4, mom2_n_tokens=300)
    return hp, ks.get_key_stats(tiny_model, 0, n_tokens=300, seq_len=32, progress=False)
