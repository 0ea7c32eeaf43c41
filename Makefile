# The two set-up commands: `make demo` and `make test`. Both create/update .venv by themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vitkit demo

test: $(STAMP)
	$(BIN)/ruff check vitkit tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check vitkit tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/ruff format --check vitkit tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/foundation.py

clean:
	rm -rf $(VENV) vitkit-demo .pytest_cache
