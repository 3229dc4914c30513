# The two commands of the README: `make run` and `make test`. Each sets everything up first
# (system packages, a virtual environment, the embedded models), so a fresh machine needs
# nothing else. Re-running skips what is already done.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch. On a machine with an NVIDIA GPU use for example:
#   make run TORCH=torch TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
HOST ?= 127.0.0.1
PORT ?= 8765
PYTEST_ARGS ?=

.PHONY: all setup run test lint typecheck models system system-test bench clean

all: setup

system:
	@scripts/install-system-deps.sh

system-test:
	@scripts/install-system-deps.sh --test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The real wyoming-satellite (tests of `voicebot wyoming --satellite`) pins wyoming 1.4.1 and
# zeroconf 0.88, older than ours: it gets an environment of its own.
SATELLITE_VENV ?= .venv-satellite
SATELLITE_STAMP := $(SATELLITE_VENV)/.installed

$(SATELLITE_STAMP):
	$(PYTHON) -m venv $(SATELLITE_VENV)
	$(SATELLITE_VENV)/bin/python -m pip install -q "wyoming-satellite==1.0.0"
	touch $(SATELLITE_STAMP)

models: $(STAMP)
	$(BIN)/voicebot models pull

setup: system $(STAMP) models

run: setup
	$(BIN)/voicebot serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check voicebot tests
	$(BIN)/ruff format --check voicebot tests
	$(BIN)/mypy

test: system-test $(STAMP) models lint $(SATELLITE_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The benchmark: both the machine's best path and the plain AVX2 path (docs/benchmarks.md).
bench: setup
	$(BIN)/voicebot bench --json bench-results.json

clean:
	rm -rf $(VENV) $(SATELLITE_VENV) .pytest_cache .mypy_cache .ruff_cache
