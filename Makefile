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

# The tests of `[llm] backend = "openai"` run a real OpenAI-compatible server: llama-cpp-python's
# llama_cpp.server on the embedded GGUF. PyPI has it only as source, so it is compiled, once, for
# the tests only (`make run` never compiles); the wheel is kept in WHEEL_CACHE for later setups.
LLM_SERVER_VENV ?= .venv-llm-server
LLM_SERVER_STAMP := $(LLM_SERVER_VENV)/.installed
LLAMA_CPP_PYTHON ?= 0.3.36
WHEEL_CACHE ?= $(HOME)/.cache/voicebot/wheels

$(LLM_SERVER_STAMP):
	$(PYTHON) -m venv $(LLM_SERVER_VENV)
	$(LLM_SERVER_VENV)/bin/python -m pip install -q --upgrade pip
	mkdir -p $(WHEEL_CACHE)
	ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_PYTHON)-*.whl >/dev/null 2>&1 || \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
	  $(LLM_SERVER_VENV)/bin/python -m pip wheel -q --no-deps -w $(WHEEL_CACHE) "llama-cpp-python==$(LLAMA_CPP_PYTHON)"
	$(LLM_SERVER_VENV)/bin/python -m pip install -q --find-links $(WHEEL_CACHE) "llama-cpp-python[server]==$(LLAMA_CPP_PYTHON)"
	touch $(LLM_SERVER_STAMP)

models: $(STAMP)
	$(BIN)/voicebot models pull

setup: system $(STAMP) models

run: setup
	$(BIN)/voicebot serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check voicebot tests
	$(BIN)/ruff format --check voicebot tests
	$(BIN)/mypy

test: system-test $(STAMP) models lint $(SATELLITE_STAMP) $(LLM_SERVER_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The benchmark: both the machine's best path and the plain AVX2 path (docs/benchmarks.md).
bench: setup
	$(BIN)/voicebot bench --json bench-results.json

clean:
	rm -rf $(VENV) $(SATELLITE_VENV) $(LLM_SERVER_VENV) .pytest_cache .mypy_cache .ruff_cache
