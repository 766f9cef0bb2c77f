# opom - make help lists the targets. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help demo test test-all lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.base: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: $(VENV)/.base ## craft masks with every method on the embedded synthetic world, test them, print the table
	$(PY) run.py -m experiment=demo

test: $(VENV)/.dev ## run the fast test suite
	$(PY) -m pytest -q

test-all: $(VENV)/.dev ## run every test tier that this machine can run (fast + slow)
	$(PY) -m pytest -q -m "not gpu"

lint: $(VENV)/.dev ## ruff
	$(PY) -m ruff check src tests run.py

clean: ## remove run outputs (not the model cache in ~/.cache/opom)
	rm -rf outputs multirun .pytest_cache
