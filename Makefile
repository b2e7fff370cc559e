# Every target builds its own virtual environment, so a fresh machine needs only Python, gcc and pip.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: all venv build test test-slow lint bench bench-compare demo clean

all: build

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

# The editable install builds once; this rebuilds the extensions in place after any csrc/ change.
build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace -j 2

lint: build
	$(VENV)/bin/ruff check eventstream tests tools bench
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q

# Long soaks and large simulations: opt-in.
test-slow: build
	$(VENV)/bin/pytest -q --run-slow

bench: build
	mkdir -p bench/results
	$(VENV)/bin/pytest bench -q --benchmark-only --benchmark-autosave \
		--benchmark-storage=file://bench/results --benchmark-columns=min,median,mean,ops

# Fails when a benchmark's median is more than 25% slower than the saved baseline.
bench-compare: build
	$(VENV)/bin/pytest bench -q --benchmark-only --benchmark-storage=file://bench/results \
		--benchmark-compare --benchmark-compare-fail=median:25%

demo: build
	$(VENV)/bin/esc demo

clean:
	rm -rf build $(VENV) *.egg-info eventstream/*.so eventstream/**/*.so
