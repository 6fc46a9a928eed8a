# The two commands a newcomer needs: `make demo` and `make test`. Both set up
# the virtual environment themselves; nothing else has to run first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m reconciler.sim.demo

test: $(STAMP)
	bash tests/tools.sh
	$(BIN)/ruff check reconciler tests
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: $(STAMP)
	bash bench/run.sh

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
