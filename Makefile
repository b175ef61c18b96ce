# PathoMCH on Dagster.  `make demo` then `make test` on a fresh machine with Python 3.11.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 2
export DAGSTER_HOME ?= $(CURDIR)/data/output/dagster_home
# two more workers than the 2 cores: the end-to-end tests spend much of their time waiting on subprocesses and
# the daemon; files are handed out in conftest.FILE_ORDER (longest first)
PYTEST_WORKERS ?= 4

.PHONY: venv demo demo-digest test test-fast lint ui bench bench-resolution bench-tcga-like check-defs screenshots clean

$(BIN)/pathomch: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[cpu,dev]'
	@touch $@

venv: $(BIN)/pathomch            ## create .venv with the package and test tools

#: `make ui` serves the demo's data_dir here; `make demo` and runs started from the UI link the figures that are
#: not inline in their events (per-slide heterogeneity maps) to it (reporting.figure_file)
FIGURES_PORT ?= 8001
FIGURES_DIR ?= data/output
PATHOMCH_FIGURES_URL ?= http://127.0.0.1:$(FIGURES_PORT)

demo: venv                       ## build the demo cohorts and materialize every asset
	PATHOMCH_FIGURES_URL=$(PATHOMCH_FIGURES_URL) $(BIN)/pathomch demo

demo-digest: venv                ## store the digest of the demo's tables and figures that test_demo_results compares with
	$(BIN)/python -m pathomch_assets_tests.demo_digest --write

#: science modules whose docstring examples run as tests
DOCTESTS := $(addprefix pathomch_assets/,augment.py ensemble.py evaluation.py heterogeneity.py layout.py labels.py sites.py slides.py splits.py training.py)

test: venv                       ## every test, slow end-to-end ones included, and the docstring examples
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 --doctest-modules pathomch_assets_tests $(DOCTESTS)

test-fast: venv                  ## skip the slow end-to-end tests
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" --doctest-modules pathomch_assets_tests $(DOCTESTS)

lint: venv                       ## ruff (lint and format) and mypy, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

ui: venv                         ## the Dagster UI on http://127.0.0.1:3000 over the demo's instance, its figures served
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory $(FIGURES_DIR) $(FIGURES_PORT) >/dev/null 2>&1 & \
	trap "kill $$! 2>/dev/null" EXIT; \
	PATHOMCH_FIGURES_URL=$(PATHOMCH_FIGURES_URL) $(BIN)/dagster dev -w workspace.yaml

screenshots: venv               ## docs/screenshots/*.png from `dagster dev` over the demo (needs chromium)
	PATHOMCH_FIGURES_URL=$(PATHOMCH_FIGURES_URL) $(BIN)/python -m pathomch_assets_tests.browser

check-defs: venv                 ## validate the Dagster definitions
	$(BIN)/dagster definitions validate -w workspace.yaml

bench: venv                      ## benchmarks -> bench/results.json
	$(BIN)/python -m bench.performance

bench-resolution: venv           ## HTI error, slide AUC and cost against input px and slide size -> bench/resolution*.json (~45 min)
	$(BIN)/python bench/resolution.py
	$(BIN)/python bench/resolution.py --sizes 32 --grid-scale 2 4 --work /tmp/pathomch-resolution-slides \
		--out bench/resolution_slides.json

bench-tcga-like: venv            ## issue 28's QC and site tables on the TCGA-like family -> bench/tcga_like.json (~25 min)
	$(BIN)/python -m bench.tcga_like --stain

clean:
	rm -rf data/output data/demo
