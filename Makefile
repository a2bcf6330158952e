# Two commands on a fresh machine: `make demo` (set-up + main job) and `make test` (set-up + tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extras for the local environment; the Dockerfile runs the same script with pipeline,trainer,gcp,export,serve.
EXTRAS ?= pipeline,trainer,gcp,export,serve,test
PYTEST_ARGS ?= -n 2

.PHONY: install install-system test test-cluster lint format demo bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt scripts/install.sh
	@test -n "$(PYTHON)" || { echo "error: no python3.11/python3 on PATH; install Python 3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	EXTRAS=$(EXTRAS) PIP="$(BIN)/python -m pip" EDITABLE=1 sh scripts/install.sh
	@touch $@

install: $(STAMP)

# Debian packages (jpegtran; chromium + chromium-driver for the browser test): .ci/run runs this.
install-system:
	sh scripts/install-system.sh test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Flink and Spark session clusters on 127.0.0.1 (tests/test_*_cluster.py): one test process, since the
# tests share one cluster per engine; the first run fetches Flink, Spark and Beam's job servers into
# ~/.cache/rotnet (about 700 MB, checksummed). Skipped with the reason when Java is missing and CI unset.
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -m cluster -p no:xdist tests/test_flink_cluster.py tests/test_spark_cluster.py

demo: $(STAMP)
	$(BIN)/python -m tools.demo

bench: $(STAMP)
	$(BIN)/rotnet-bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
