# Two commands do all the set-up on a fresh machine (Python 3.11):
#   make run    the main job: the miniature ProMoT experiment on the embedded default
#   make test   the test suite
# Both create .venv on first use and install from requirements.lock (the exact, tested
# environment, used as pip constraints): `make run` only what the main job needs (no torch,
# transformers or peft), `make test` the test extras and the CPU kernels' dependencies.
# Other installs (TPU, GPU, a wheel): docs/install.md.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet -c requirements.lock

.PHONY: run test quick lint bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip==26.3'

$(VENV)/.installed-run: setup.py requirements.lock | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: setup.py requirements.lock | $(BIN)/python
	$(PIP) -e '.[test,cpu]'
	touch $@

$(VENV)/.installed-bench: setup.py requirements.lock | $(BIN)/python
	$(PIP) -e '.[bench,cpu]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/promot-miniature

quick: $(VENV)/.installed-run
	$(BIN)/promot-miniature --quick

# The tests run on parallel workers, one per CPU (at most 4), that steal work from each other.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n logical --maxprocesses=4 --dist worksteal tests

lint: $(VENV)/.installed-test
	$(BIN)/python -m ruff check promot_t5x tasks launch tests bench

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
