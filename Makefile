# The two commands of the README: `make run` and `make test`. Each sets everything up first
# (system packages, a virtual environment, the embedded models), so a fresh machine needs
# nothing else. Re-running skips what is already done.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.llamacpp
# The CPU build of torch. On a machine with an NVIDIA GPU use for example:
#   make run TORCH=torch TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
HOST ?= 127.0.0.1
PORT ?= 8765
PYTEST_ARGS ?=

.PHONY: all setup run test lint typecheck models system system-test bench bench-reference llamacpp clean

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

models: $(STAMP)
	$(BIN)/voicebot models pull

setup: system $(STAMP) models

run: setup
	$(BIN)/voicebot serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check voicebot tests
	$(BIN)/ruff format --check voicebot tests
	$(BIN)/mypy

test: system-test $(STAMP) $(LLAMA_STAMP) models lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The llama.cpp reference run is part of the benchmark: build it first.
bench: setup $(LLAMA_STAMP)
	$(BIN)/voicebot bench --json bench-results.json

# llama-cpp-python: the optional llama-cpp chat backend (`[llm] backend = "llama-cpp"`) and the
# benchmark's reference run; the tests cover it. It compiles llama.cpp (several minutes on 2
# cores). The native build crashes on CPUs with AMX (seen here), so the SIMD flags are set from
# /proc/cpuinfo; the multimodal library is not needed.
LLAMA_FLAGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF \
	$(if $(shell grep -m1 -o avx512f /proc/cpuinfo 2>/dev/null),-DGGML_AVX512=ON) \
	$(if $(shell grep -m1 -o avx512_vnni /proc/cpuinfo 2>/dev/null),-DGGML_AVX512_VNNI=ON) \
	$(if $(shell grep -m1 -o avx512_bf16 /proc/cpuinfo 2>/dev/null),-DGGML_AVX512_BF16=ON)

$(LLAMA_STAMP): $(STAMP)
	@scripts/install-system-deps.sh --build
	CMAKE_ARGS="$(LLAMA_FLAGS)" $(BIN)/python -m pip install -q --no-cache-dir -e '.[llamacpp]'
	touch $(LLAMA_STAMP)

llamacpp: $(LLAMA_STAMP)

bench-reference: bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
