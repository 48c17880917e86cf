# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export AURALSAM2_HOME ?= $(CURDIR)/data

.PHONY: setup demo test test-all bench lint clean-data

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/auralsam2 demo

test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench

lint: setup
	$(VENV)/bin/ruff check .

clean-data:
	rm -rf "$(AURALSAM2_HOME)"
