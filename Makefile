# PathoMCH on Dagster.  `make demo` then `make test` on a fresh machine with Python 3.11.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 2
export DAGSTER_HOME ?= $(CURDIR)/data/output/dagster_home
PYTEST_WORKERS ?= 2

.PHONY: venv demo test test-fast ui bench check-defs screenshots clean

$(BIN)/pathomch: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[cpu,dev]'
	@touch $@

venv: $(BIN)/pathomch            ## create .venv with the package and test tools

demo: venv                       ## build the demo cohorts and materialize every asset
	$(BIN)/pathomch demo

test: venv                       ## every test, slow end-to-end ones included
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 pathomch_assets_tests

test-fast: venv                  ## skip the slow end-to-end tests
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" pathomch_assets_tests

ui: venv                         ## the Dagster UI on http://127.0.0.1:3000 over the demo's instance
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml

screenshots: venv               ## docs/screenshots/*.png from `dagster dev` over the demo (needs chromium)
	$(BIN)/python -m pathomch_assets_tests.browser

check-defs: venv                 ## validate the Dagster definitions
	$(BIN)/dagster definitions validate -w workspace.yaml

bench: venv                      ## benchmarks -> bench/results.json
	$(BIN)/python -m pathomch_assets.bench

clean:
	rm -rf data/output data/demo
