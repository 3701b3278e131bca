# The two commands of the README:  make book  |  make test
# Both run the idempotent setup first (network only the first time; see scripts/setup.sh).

VENV   := .venv
BIN    := $(VENV)/bin
# After setup everything runs offline: never let a chapter or a test reach the Hugging Face hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
# One intra-op thread per process. The embedded model's matrices are small, so a second thread
# gains little, while on a loaded machine (CI neighbours, a laptop busy with other work) OpenMP's
# spinning threads made a forward pass 10-30x slower. Override: `make test OMP_NUM_THREADS=2`.
OMP_NUM_THREADS ?= 1
MKL_NUM_THREADS ?= $(OMP_NUM_THREADS)
export OMP_NUM_THREADS MKL_NUM_THREADS
# Progress bars as wide as the book's monospace column (editlens.display.LINE_WIDTH).
export TQDM_NCOLS ?= 76

.PHONY: help setup book test test-fast typecheck test-device check-portable student instructor clean

help:
	@echo "make book       set up, execute every chapter of _toc.yml (in parallel), render HTML into _build/html"
	@echo "make test       set up, run the unit tests, the notebook checks (nbval) and the book build test"
	@echo "make test-fast  the tests not marked slow (no model, no notebooks)"
	@echo "make typecheck  mypy over src/editlens (pyproject.toml [tool.mypy]; make test runs it too, tests/test_types.py)"
	@echo "make test-device  the tiny-model tests on a GPU in its auto precision (DEVICE=cuda; scripts/test_device.sh)"
	@echo "make check-portable re-execute the chapters as another CPU would (AVX2 kernels, float32, 2 threads); checked outputs must match"
	@echo "make student    write _build/student/NN_*.ipynb: chapters without solutions, to hand out (book/teaching.md)"
	@echo "make instructor write _build/instructor/NN_*.ipynb: chapters with the solutions shown"
	@echo "make setup      only the setup (venv, embedded model, MathJax, chromium)"
	@echo "make clean      remove _build (keeps .venv and the model cache)"

setup:
	@bash scripts/setup.sh

# scripts/build_book.sh: executes the chapters in parallel (BOOK_JOBS processes, default one per
# core, one thread each, longest first) into _build/executed/ (the tracked notebooks are only read),
# collapses progress bars, stages the book in _build/book-src and renders it with execution off.
# A failing cell, or any Sphinx warning (-W -n), fails the build.
# BOOK_EXECUTE=0 renders the stored outputs instead; BOOK_CHAPTERS="notebooks/00_meet_the_model.ipynb"
# executes only the chapters listed (the others keep their stored outputs).
BOOK_JOBS ?= $(shell nproc)
book: setup
	BOOK_JOBS=$(BOOK_JOBS) bash scripts/build_book.sh
	@echo "Book written to _build/html/index.html"

# One pytest run: the tests in tests/ and, via nbval, every notebook in notebooks/ (cells marked
# NBVAL_CHECK_OUTPUT compare their outputs, after notebooks/sanitize.cfg). The book build test
# renders the stored outputs that nbval checks. TEST_WORKERS pytest-xdist workers (one torch thread
# each), files kept whole (--dist loadfile: a notebook's cells run in order in one kernel).
# Chapters are independent of each other's run order (Chapter 2 recomputes what it needs).
# Order: a worker takes the next file when it is nearly done with its current one, in the order given
# (--no-loadscope-reorder; xdist would otherwise order files by their number of test items, not by
# duration). The longest chapters go first so that they run side by side and the short files fill in
# around them; LONG_CHAPTERS lists them longest first (measured one-thread times in each chapter).
# --durations=25 prints the slowest items (notebook cells included), to see what bounds the run.
# Every chapter's stored run is replayed in full (each at most 10 minutes on one thread) where the CPU has native
# bf16 (AMX or AVX512-BF16), as the stored runs had. On a CPU without it the chapters compute in float32, about 4x
# slower, and the whole replay would not fit CI's 90 minutes: there the chapters whose stored run takes over
# 7 minutes (2, 5 and 6) are skipped, each cell with its reason in the summary (tests/conftest.py,
# FLOAT32_REPLAY_MINUTES). `make test EDITLENS_REPLAY=all` replays every chapter anywhere.
EDITLENS_REPLAY ?= auto
export EDITLENS_REPLAY
TEST_WORKERS ?= $(shell nproc)
LONG_CHAPTERS := notebooks/02_consistency_steering.ipynb notebooks/06_synthesis.ipynb notebooks/05_sadr.ipynb notebooks/04_steam.ipynb notebooks/03_rome.ipynb
TEST_FILES := $(LONG_CHAPTERS) $(filter-out $(LONG_CHAPTERS),$(sort $(wildcard notebooks/*.ipynb))) tests/
PYTEST_NBVAL := $(BIN)/python -m pytest --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg \
	--nbval-cell-timeout 3600 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -ra --durations=25
test: setup
	$(PYTEST_NBVAL) $(TEST_FILES)

# The stored outputs come from this machine (one thread, bf16 matrix products). A laptop without bf16 units
# runs the chapters in float32 with other kernels and sums floats in another order: every checked cell and
# exercise check must survive that (scripts/check_portable.sh; THREADS=1 for one thread, PORTABLE_ENV=native
# for this CPU's own kernels).
check-portable: setup
	bash scripts/check_portable.sh

test-fast: setup
	$(BIN)/python -m pytest tests/ -m "not slow" -ra

# The static half of the types (the run-time half, jaxtyping's shapes checked by beartype, is on in every test run:
# tests/conftest.py). Settings: pyproject.toml [tool.mypy].
typecheck: setup
	$(BIN)/python -m mypy

# The tests that build a tiny model, on DEVICE (default cuda) computing as load_model would there (bf16 on a
# bf16 GPU); the embedded model's tests are skipped (scripts/test_device.sh).
test-device: setup
	bash scripts/test_device.sh

# Teaching editions (book/teaching.md), generated from the chapters as they are (editlens.editions):
# student = solution cells replaced by placeholders (checks fail until a stub is done), outputs of
# exercise-dependent cells cleared; instructor = the chapters with the solutions shown.
# Grade a submission with `python -m editlens grade STUDENT.ipynb`.
student: setup
	$(BIN)/python -m editlens editions student --out _build/student

instructor: setup
	$(BIN)/python -m editlens editions instructor --out _build/instructor

clean:
	rm -rf _build
