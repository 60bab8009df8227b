# Two entry points, both self-contained on a fresh machine:
#   make run    the main job on the embedded default (creates .venv on first use)
#   make test   the whole test suite (what .ci/run runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.augtune-installed

.PHONY: run test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/augtune sweep configs/digits_sweep.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -m '' -n 2 --dist loadgroup --durations=20 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/augment_ops.py

clean:
	rm -rf runs mlflow.db mlartifacts
