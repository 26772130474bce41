# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv when missing, install torch==2.13.0 first (a bare `torch` would pull a CUDA build),
# then the project with its extras.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
MUTATE_STAMP := $(VENV)/.installed-mutate
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Most of the suite's time is broker and worker tests waiting on processes, so two
# processes on CI's 2 cores take about half the time of one; each has its own embedded broker on a free port.
TEST_WORKERS ?= 2
XDIST   := -n $(TEST_WORKERS) --dist worksteal

.PHONY: demo test test-fast mutate install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[embedded,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/logmoe demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(XDIST) -m "not slow and not broker" $(PYTEST_ARGS)

# Mutation testing (not part of `make test`): mutmut mutates the modules listed in pyproject.toml [tool.mutmut] one
# change at a time and runs the unit tests that reach each change; the table per module is what TESTING.md records.
# About 40 minutes on 2 busy cores; MUTATE_CHILDREN runs that many mutants at once.
MUTATE_CHILDREN ?= 2

$(MUTATE_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[embedded,test,mutate]'
	touch $(MUTATE_STAMP)

mutate: $(MUTATE_STAMP)
	rm -rf mutants
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN)
	$(PY) tests/mutmut_report.py

clean:
	rm -rf $(VENV) .pytest_cache mutants
