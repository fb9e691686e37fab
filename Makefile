# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv on first use and reinstalls only when pyproject.toml or constraints.txt changes;
# constraints.txt pins the exact versions we test (pyproject.toml's extras give ranges).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test unit test-latest clean

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
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The fast unit tests alone (no framework imports).
unit: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q tests

# The adapter suites against the newest releases of Lightning, Keras and JAX/Flax (not run by CI): the next
# release's breakage shows here before users see it. torch stays 2.13.0, the CPU build.
test-latest:
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade "torch==2.13.0" -e ".[all,test]" \
		pytorch-lightning lightning keras jax jaxlib flax optax transformers
	.venv-latest/bin/python -m pytest -q tests integrations/lightning integrations/keras integrations/flax \
		integrations/hf integrations/parity

clean:
	rm -rf $(VENV) .venv-latest build src/*.egg-info .pytest_cache
