# keyexchanged — everything a new user or CI runs goes through here.
# Only Python 3 is assumed; the virtual environment is made on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# One trial worker per CPU this process may run on (make test TRIAL_ARGS=-j1
# for a serial run).
JOBS := $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1)")
TRIAL_ARGS ?= -j$(JOBS)
SECONDS ?= 60

.PHONY: all test lint demo bench load fuzz clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the packaging metadata changes.
$(STAMP): $(BIN)/python setup.cfg setup.py pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@

test: $(STAMP)
	$(BIN)/python -m twisted.trial $(TRIAL_ARGS) tests

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m keyexchanged.demo

# spiped, the peer of the throughput and tunnel benchmarks, from Debian's
# packages when it is missing and we may install it (else they skip it).
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	@command -v spiped >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	    && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq spiped) >/dev/null 2>&1; } \
	    || echo "spiped is not installed: its benchmarks will skip (apt-get install spiped)"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/run_all.py

load: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/load.py

fuzz: $(STAMP)
	$(BIN)/python -m pip install -q 'atheris>=2.3'
	$(BIN)/python tests/fuzz/fuzz_server.py -max_total_time=$(SECONDS) tests/fuzz/corpus

# The documentation: HTML and the man pages, from docs/ (Sphinx, the "docs"
# extra).  Warnings are errors and every cross-reference must resolve; -E
# reads every page afresh, so that a warning is never hidden by a cache.
DOCS_STAMP := $(VENV)/.docs-installed
SPHINX     := $(BIN)/sphinx-build -E -W --keep-going -q

.PHONY: docs man

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

docs: $(DOCS_STAMP)
	$(SPHINX) -b html docs docs/_build/html
	$(SPHINX) -b man docs docs/_build/man
	@echo "docs: docs/_build/html/index.html, man pages in docs/_build/man"

man: $(DOCS_STAMP)
	$(SPHINX) -b man docs docs/_build/man

clean:
	rm -rf _trial_temp* build dist *.egg-info twisted/plugins/dropin.cache
	rm -rf docs/_build
