#!/usr/bin/env bash
# The unit tests on another device (a GPU) with the tiny test models, computing as load_model would there
# (precision "auto": bfloat16 matrix products on a bf16 GPU). Issue 27, item 6; `make test-device`.
#
# Runs every test file that builds a tiny model (tests/conftest.py's tiny_model, tiny_rome, and
# test_second_model's tiny Gemma 3), without the slow tests; a test that needs the embedded model's weights is
# skipped (on a GPU machine without the cache they are not there). Tests marked `float32` check float32
# arithmetic and run on the device in float32.
#
#   DEVICE=cuda  the device (default cuda)       WORKERS=4  pytest-xdist workers
#   OUT=folder   where log.txt and junit.xml go (default _build/test-device)
# On a machine without the book's environment (a lent GPU with torch but no network), put wheels of the missing
# packages in .whl/ and the embedded tokenizer in .gpu/cache/models/<model>/ (what EDITLENS_CACHE points at):
# both are installed/used from there when present.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-4}
OUT=${OUT:-_build/test-device}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$OUT"
if [ -d .whl ] && ! "$PY" -c "import transformer_lens" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/editlens-site .whl/*.whl
  export PYTHONPATH=/tmp/editlens-site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if [ -d .gpu/cache ]; then export EDITLENS_CACHE=$PWD/.gpu/cache; fi
"$PY" - "$DEVICE" <<'PYEOF' | tee "$OUT/log.txt"
import sys, torch, transformers, transformer_lens
from importlib import metadata
from editlens import precision
dev = torch.device(sys.argv[1])
if dev.type == "cuda" and not torch.cuda.is_available():
    sys.exit("DEVICE=cuda, but torch sees no GPU. Fix: run on a machine with one, or DEVICE=cpu.")
name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
print(f"device {name}; torch {torch.__version__}, transformers {transformers.__version__}, "
      f"transformer-lens {metadata.version('transformer-lens')}")
print("precision auto ->", precision.resolve("auto", dev).describe())
PYEOF
files=$(grep -l "tiny_model\|tiny_rome\|tiny_gemma" tests/test_*.py)
set +e
EDITLENS_TEST_DEVICE=$DEVICE EDITLENS_TEST_PRECISION=auto "$PY" -m pytest $files -m "not slow" -q -n "$WORKERS" \
  -p no:cacheprovider -rfEs --junitxml="$OUT/junit.xml" 2>&1 | tee -a "$OUT/log.txt"
rc=${PIPESTATUS[0]}
exit "$rc"
