# The README's commands. `make demo` and `make test` set everything up first (a .venv from scratch when missing).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeship-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench bench-distill clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run: make PYTHON=python3 ..."; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m edgeship.demo

test: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/run.py

bench-distill: setup
	$(BIN)/python bench/distill.py

clean:
	rm -rf dist .pytest_cache
