# opom - make help lists the targets. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.DEFAULT_GOAL := help
PHOTOS ?= $(HOME)/.cache/opom-test-photos
# face-recognition models from npm packages (opom.models.npm_assets) and TensorFlow.js for their parity tests
MODELS ?= $(HOME)/.cache/opom-models
TFJS_REF ?= $(HOME)/.cache/opom-tfjs-reference
# distractor-gallery sizes of the evaluation benchmark (1M takes ~15 min on 2 cores)
GALLERY_SIZES ?= 10000 100000 1000000

.PHONY: help demo test test-all test-assets models tfjs-reference bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-15s %s\n", $$1, $$2}'

$(VENV)/.base: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install -q -e '.[dev,zoo,scale]'
	@touch $@

$(PHOTOS)/.done:
	mkdir -p $(PHOTOS)
	$(PY) -m pip download -q --no-deps --no-binary :all: face_recognition==1.3.0 -d $(PHOTOS)
	$(PY) -m pip download -q --no-deps insightface==2.1 -d $(PHOTOS)
	@touch $@

$(MODELS)/.done: $(VENV)/.base
	OPOM_MODELS_DIR=$(MODELS) $(PY) -m opom.models.npm_assets
	@touch $@

$(TFJS_REF)/.done: tests/tfjs_reference/package.json tests/tfjs_reference/package-lock.json
	@command -v npm >/dev/null || { echo "error: the TFJS parity reference needs npm (Node.js): apt-get install npm"; exit 2; }
	mkdir -p $(TFJS_REF)
	cp tests/tfjs_reference/package.json tests/tfjs_reference/package-lock.json $(TFJS_REF)/
	cd $(TFJS_REF) && npm ci --ignore-scripts --no-audit --no-fund --silent
	@touch $@

models: $(MODELS)/.done ## fetch the face-recognition models that ship in npm packages (npm pack, pinned sha256)

tfjs-reference: $(TFJS_REF)/.done ## install TensorFlow.js (pure JS, pinned) for the parity tests of the TFJS models

demo: $(VENV)/.base ## craft masks with every method on the embedded synthetic world, test them, print the table
	$(PY) run.py -m experiment=demo

test: $(VENV)/.dev $(PHOTOS)/.done $(MODELS)/.done $(TFJS_REF)/.done ## run the test suite (fast tier, real models on real photos included)
	@{ command -v chromium || command -v chromium-browser; } >/dev/null && command -v chromedriver >/dev/null || \
	  echo "make test: no Chromium/chromedriver here, so the browser test of opom web is SKIPPED" \
	       "(sudo apt-get install chromium chromium-driver to run it; .ci/run does)"
	$(PY) -m pytest -q

test-assets: $(VENV)/.base $(PHOTOS)/.done $(MODELS)/.done $(TFJS_REF)/.done ## fetch the real test photos and models (PyPI and npm packages, never installed) and TensorFlow.js

test-all: $(VENV)/.dev $(PHOTOS)/.done $(MODELS)/.done $(TFJS_REF)/.done ## run every test tier that this machine can run (adds the slow tier)
	$(PY) -m pytest -q -m "not gpu"

bench: $(VENV)/.dev $(PHOTOS)/.done $(MODELS)/.done ## run the benchmarks (BENCH_FLAGS=--quick: shorter); experiments/benchmarks/report.md collects them
	$(PY) experiments/benchmarks/bench_zoo.py --out experiments/benchmarks/zoo_throughput.md
	$(PY) experiments/benchmarks/bench_prepare.py --out experiments/benchmarks/prepare_throughput.md
	$(PY) experiments/benchmarks/bench_cloak.py --out experiments/benchmarks/cloak_throughput.md
	$(PY) experiments/benchmarks/bench_gallery.py --sizes $(GALLERY_SIZES) --out experiments/benchmarks/eval_gallery.md
	$(PY) experiments/benchmarks/bench_projection.py $(BENCH_FLAGS)
	$(PY) experiments/benchmarks/bench_crafting.py $(BENCH_FLAGS)
	$(PY) experiments/benchmarks/bench_update_floor.py
	$(PY) experiments/benchmarks/bench_crafting_options.py $(BENCH_FLAGS)
	$(PY) experiments/benchmarks/bench_batching.py $(BENCH_FLAGS)
	$(PY) experiments/benchmarks/bench_memory.py $(BENCH_FLAGS)
	$(PY) experiments/benchmarks/bench_transfer.py $(BENCH_FLAGS)
	$(PY) experiments/benchmarks/collect_report.py

lint: $(VENV)/.dev ## ruff
	$(PY) -m ruff check src tests run.py

clean: ## remove run outputs (not the model cache in ~/.cache/opom)
	rm -rf outputs multirun .pytest_cache
