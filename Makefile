# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv on first use and reinstalls only when pyproject.toml or constraints.txt changes;
# constraints.txt pins the exact versions we test (pyproject.toml's extras give ranges).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[lightning,plot,reports]"
	touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,test]"
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/carbon-callbacks demo

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q

# The fast unit tests alone (no framework imports).
unit: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
