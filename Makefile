# Two commands do all the set-up on a fresh machine (Python 3.11):
#   make run    the main job: the miniature ProMoT experiment on the embedded default
#   make test   the test suite
# Both create .venv and install the pinned environment on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test quick lint bench clean-venv

$(STAMP): setup.py requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip==26.3'
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/promot-miniature

quick: $(STAMP)
	$(BIN)/promot-miniature --quick

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/python -m ruff check promot_t5x tasks launch tests bench

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
