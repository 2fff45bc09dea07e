# Two commands for a newcomer: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit clean proto bench-serving

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

serve: install
	$(VENV)/bin/hagmoe serve

lint: install
	$(VENV)/bin/ruff check hagmoe server tests loadtests
	$(VENV)/bin/ruff format --check hagmoe server tests loadtests

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest tests

test: lint typecheck unit

# The serving comparison (docs/loadtests.md): hagmoe serve vs offline engine vs naive vs HF
# Mixtral; writes docs/results/ and docs/img/. Needs a quiet machine; BENCH_ARGS=--smoke to check.
BENCH_ARGS ?=
bench-serving: install
	$(PY) loadtests/compare.py $(BENCH_ARGS)

# Regenerate server/_generated/ from proto/ (a unit test checks they agree).
proto: install
	$(PY) -m server.proto_gen

clean:
	rm -rf $(VENV) build *.egg-info
