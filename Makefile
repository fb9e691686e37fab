# The README's commands: `make demo` (the main job), `make test` (the whole suite on the newest versions we test),
# `make floor` (the adapter tests on the oldest versions we support) and `make ci` (what CI runs: all of it).
# Each environment is created on first use and reinstalled only when pyproject.toml or its constraints file
# changes: constraints.txt pins the newest versions we test, constraints-floor.txt the oldest (the extras' floors).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLOOR_VENV := .venv-floor
FLOOR_BIN := $(FLOOR_VENV)/bin
# Both environments hold every extra plus what no extra names: TensorFlow (the CPU build) for the Keras TensorFlow
# backend, and the unified `lightning` package beside `pytorch-lightning`.
TEST_EXTRAS := -e ".[all,test]" tensorflow-cpu lightning
# What the floor job runs: the unit tests of what the floors of pandas, matplotlib and NVML serve, and the adapter
# tests (each framework's fit, Hugging Face models through Lightning, reports of real runs, the Keras counts on
# every backend). The cross-adapter parity and the other FLOP-count suites run in `make test` only.
FLOOR_TESTS := tests/test_packaging.py tests/test_import.py tests/test_meters_nvml.py tests/test_report.py \
	tests/test_whatif.py integrations/lightning integrations/keras integrations/flax integrations/hf \
	integrations/reports integrations/flops/test_keras_flops.py
# The unit tests run from the unpacked sdist: packaging, the bundled tables, the benchmarks script.
SDIST_TESTS := tests/test_packaging.py tests/test_import.py tests/test_tables_site.py tests/test_paper_architectures.py
SDIST_DIR := build/sdist-check

.PHONY: demo test unit floor sdist-check ci clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[lightning,plot,reports]"
	touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt $(TEST_EXTRAS)
	touch $@ $(VENV)/.demo-installed

$(FLOOR_VENV)/.installed: pyproject.toml constraints-floor.txt
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_BIN)/python -m pip install --quiet -c constraints-floor.txt $(TEST_EXTRAS)
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/carbon-callbacks demo

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q

# The fast unit tests alone (no framework imports).
unit: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q tests

# The oldest version of every extra (constraints-floor.txt), in an environment of their own.
floor: $(FLOOR_VENV)/.installed
	$(FLOOR_BIN)/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

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

ci: test floor sdist-check

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build src/*.egg-info .pytest_cache
