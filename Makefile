# The README's commands: `make demo` (the main job) and `make test` (the whole suite on the newest versions we test);
# `make floor` runs the adapter tests on the oldest versions we support and `make sdist-check` the tests of a built
# sdist; CI (.ci/run) runs all three. Each environment is created on first use and reinstalled only when
# pyproject.toml or its constraints file changes: constraints.txt pins the newest versions we test,
# constraints-floor.txt the oldest (the extras' floors).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLOOR_VENV := .venv-floor
FLOOR_BIN := $(FLOOR_VENV)/bin
# What no extra names: TensorFlow (the CPU build) for the Keras TensorFlow backend, and the unified `lightning`
# package beside `pytorch-lightning`.
BACKENDS := tensorflow-cpu lightning
# What the floor job runs: the unit tests that the floors of pandas, matplotlib and NVML serve, and each adapter's
# fits (Lightning, Keras on every backend, Flax, Hugging Face models through Lightning and the Trainer, reports of
# real runs). The loggers' clients, parity, Lightning DDP and the FLOP-count suites run in `make test` only.
FLOOR_TESTS := tests/unit/test_packaging.py tests/unit/test_import.py tests/unit/test_meters_nvml.py \
	tests/unit/test_report.py tests/unit/test_whatif.py integrations/lightning/test_lightning_callback.py \
	integrations/lightning/test_lightning_unified.py integrations/keras integrations/flax/test_flax_linen.py \
	integrations/hf/test_hf_lightning.py integrations/hf/test_hf_trainer.py integrations/hf/test_hf_trainer_ddp.py \
	integrations/reports
# The unit tests run from the unpacked sdist: packaging, the bundled tables, the benchmarks script.
SDIST_TESTS := tests/unit/test_packaging.py tests/unit/test_import.py tests/unit/test_tables_site.py \
	tests/unit/test_paper_architectures.py
SDIST_DIR := build/sdist-check

.PHONY: demo test unit floor sdist-check test-latest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[lightning,plot,reports]"
	touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,test]" $(BACKENDS)
	touch $@ $(VENV)/.demo-installed

$(FLOOR_VENV)/.installed: pyproject.toml constraints-floor.txt
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_BIN)/python -m pip install --quiet -c constraints-floor.txt -e ".[all]" $(BACKENDS) accelerate pytest build
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/carbon-callbacks demo

test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The fast unit tests alone.
unit: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q tests

# The oldest version of every extra (constraints-floor.txt), in an environment of their own.
# USE_TF=0: transformers 4.46 refuses to import its TensorFlow side next to Keras 3 (it asks for tf-keras).
floor: $(FLOOR_VENV)/.installed
	USE_TF=0 $(FLOOR_BIN)/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

# The sdist holds what the tests need: build it and a wheel from it, check the sdist's files, then run tests of the
# unpacked sdist against that wheel.
sdist-check: $(VENV)/.test-installed
	rm -rf $(SDIST_DIR)
	$(BIN)/python -m build --outdir $(SDIST_DIR)/dist . > /dev/null
	tar -xzf $(SDIST_DIR)/dist/*.tar.gz -C $(SDIST_DIR)
	$(BIN)/python -m pip install --quiet --no-deps --target $(SDIST_DIR)/site $(SDIST_DIR)/dist/*.whl
	cd $(SDIST_DIR)/carbon_callbacks-*/ && test -f Makefile -a -f constraints.txt -a -f constraints-floor.txt \
		-a -d integrations -a -f LICENSE
	cd $(SDIST_DIR)/carbon_callbacks-*/ && PYTHONPATH=$(abspath $(SDIST_DIR))/site $(abspath $(BIN))/python -c \
		"import carbon_callbacks, sys; sys.exit('sdist-check/site' not in carbon_callbacks.__file__)"
	cd $(SDIST_DIR)/carbon_callbacks-*/ && PYTHONPATH=$(abspath $(SDIST_DIR))/site \
		$(abspath $(BIN))/python -m pytest -q -p no:cacheprovider $(SDIST_TESTS)

# The adapter suites against the newest releases of Lightning, Keras, JAX/Flax and transformers (not run by CI): the next
# release's breakage shows here before users see it. torch stays 2.13.0, the CPU build.
test-latest:
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade "torch==2.13.0" -e ".[all,test]" $(BACKENDS) \
		pytorch-lightning keras jax jaxlib flax optax transformers
	.venv-latest/bin/python -m pytest -q tests integrations/lightning integrations/keras integrations/flax \
		integrations/hf integrations/parity

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .venv-latest build src/*.egg-info .pytest_cache
