#!/usr/bin/env bash
# Format chapter sources (jupytext percent scripts) so that their code fits the book's code column.
#   scripts/format_notebooks.sh                       # every notebooks/src/NN_*.py
#   scripts/format_notebooks.sh 03_rome 00_meet_the_model
#   WIDTH=88 scripts/format_notebooks.sh 03_rome     # another width (the test checks 76)
# The rendered column at 1280 px holds 77 characters (sphinx-book-theme, 14 px monospace), so code
# wider than that is cut off; tests/test_notebook_tools.py checks every code-cell line against
# CODE_WIDTH (76). ruff (pinned in pyproject.toml's dev extra) keeps comments, the `# %%` cell
# markers and `# NBVAL_CHECK_OUTPUT` first lines in place, but does not split long strings or
# comments: the lines still too wide are listed at the end; wrap them by hand (adjacent f-strings,
# comments moved above the line), then rebuild the notebook (scripts/build_notebook.sh NAME, or
# scripts/update_notebook_text.sh NAME when no output changes).
set -euo pipefail
cd "$(dirname "$0")/.."
WIDTH="${WIDTH:-76}"
RUFF=.venv/bin/ruff
[[ -x "$RUFF" ]] || { echo "no $RUFF: run make setup (ruff is in the dev extra)" >&2; exit 1; }

files=()
if [[ $# -eq 0 ]]; then
    files=(notebooks/src/[0-9][0-9]_*.py)
else
    for name in "$@"; do
        name="$(basename "${name%.py}")"
        [[ -f "notebooks/src/$name.py" ]] || { echo "no notebooks/src/$name.py" >&2; exit 1; }
        files+=("notebooks/src/$name.py")
    done
fi

"$RUFF" format --line-length "$WIDTH" "${files[@]}"

# Code-cell lines still wider than WIDTH (markdown cells are prose, wrapped by the browser).
.venv/bin/python - "$WIDTH" "${files[@]}" <<'PY'
import sys
width, paths = int(sys.argv[1]), sys.argv[2:]
left = 0
for path in paths:
    markdown = False
    for number, line in enumerate(open(path).read().splitlines(), 1):
        if line.startswith("# %%"):
            markdown = "[markdown]" in line or "[md]" in line
            continue
        if not markdown and len(line) > width:
            left += 1
            print(f"{path}:{number}: {len(line)} > {width}: {line.strip()[:70]}")
print(f"{left} code lines wider than {width} left to wrap by hand" if left else f"all code lines fit in {width}")
sys.exit(1 if left else 0)
PY
