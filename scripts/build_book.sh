#!/usr/bin/env bash
# `make book`: execute the chapters in parallel, then render the executed copies with Jupyter Book.
#
#   1. every chapter notebook of _toc.yml is executed by `jupyter nbconvert --execute` into
#      _build/executed/notebooks/ (the tracked notebooks/*.ipynb are only read), BOOK_JOBS at a time
#      (default: the number of cores), one torch/OpenMP thread each, longest chapter first. The
#      kernel's working directory is notebooks/, as in Jupyter, nbval and the old in-book execution.
#      A failing cell fails its chapter (nbconvert stops, exit 1); the other chapters still finish,
#      then the build stops with the failing chapters' logs (_build/executed/logs/NAME.log).
#   2. scripts/stage_book.py copies the book into _build/book-src with the executed notebooks,
#      progress-bar updates collapsed to their final state, and execute_notebooks: 'off'.
#   3. jupyter-book build _build/book-src, warnings as errors (-W -n --keep-going), HTML written to
#      _build/html.
#   scripts/build_book.sh                 # all of it
#   BOOK_EXECUTE=0 scripts/build_book.sh  # skip 1: render the stored outputs of notebooks/*.ipynb
#   BOOK_CHAPTERS="notebooks/00_meet_the_model.ipynb" scripts/build_book.sh
#                                         # execute only these; the other pages show stored outputs
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
EXEC=_build/executed
STAGE=_build/book-src
JOBS="${BOOK_JOBS:-$(nproc)}"
CELL_TIMEOUT="${BOOK_CELL_TIMEOUT:-3600}"   # seconds per cell; Chapter 3's evaluation cell takes ~20 min
# One thread per chapter process (JOBS processes share the cores); `make book` exports 1 as well.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
# Progress bars as wide as the book's monospace column (editlens.display.LINE_WIDTH), so the page cuts none.
export TQDM_NCOLS="${TQDM_NCOLS:-76}"
export BIN EXEC CELL_TIMEOUT

log() { printf '[book] %s\n' "$*"; }

execute_one() {
    local nb="$1" name start rc
    name="$(basename "$nb" .ipynb)"
    start=$(date +%s)
    if "$BIN/jupyter" nbconvert --to notebook --execute "$nb" \
        --ExecutePreprocessor.timeout="$CELL_TIMEOUT" \
        --output-dir "$EXEC/notebooks" --output "$name" >"$EXEC/logs/$name.log" 2>&1; then
        printf '[book] executed %s in %d s\n' "$nb" "$(($(date +%s) - start))"
    else
        rc=$?
        printf '[book] FAILED (exit %d after %d s): %s; log %s, its end:\n' "$rc" "$(($(date +%s) - start))" "$nb" "$EXEC/logs/$name.log"
        tail -n 12 "$EXEC/logs/$name.log" | sed 's/^/    /'
        return 1
    fi
}
export -f execute_one

executed_arg=()
if [[ "${BOOK_EXECUTE:-1}" != 0 ]]; then
    if [[ -n "${BOOK_CHAPTERS:-}" ]]; then
        read -r -a chapters <<<"$BOOK_CHAPTERS"
    else
        mapfile -t chapters < <("$BIN/python" scripts/stage_book.py --list-notebooks)
    fi
    rm -rf "$EXEC"
    mkdir -p "$EXEC/notebooks" "$EXEC/logs"
    log "executing ${#chapters[@]} chapters, $JOBS at a time (OMP_NUM_THREADS=$OMP_NUM_THREADS each): ${chapters[*]}"
    start=$(date +%s)
    # xargs runs every chapter even when one fails, and then exits non-zero (123).
    if ! printf '%s\n' "${chapters[@]}" | xargs -P "$JOBS" -I{} bash -c 'execute_one "$1"' _ {}; then
        log "chapter execution failed (see above); the book is not rendered."
        exit 1
    fi
    log "all chapters executed in $(($(date +%s) - start)) s"
    # Chapters not executed now (BOOK_CHAPTERS) keep their stored outputs.
    for nb in $("$BIN/python" scripts/stage_book.py --list-notebooks); do
        [[ -f "$EXEC/notebooks/$(basename "$nb")" ]] || cp "$nb" "$EXEC/notebooks/"
    done
    executed_arg=(--executed "$EXEC/notebooks")
else
    log "BOOK_EXECUTE=0: rendering the stored outputs of notebooks/*.ipynb"
fi

"$BIN/python" scripts/stage_book.py --out "$STAGE" "${executed_arg[@]}"
rm -rf _build/html
start=$(date +%s)
"$BIN/jupyter-book" build "$STAGE" --path-output . -W -n --keep-going
log "rendered in $(($(date +%s) - start)) s"
