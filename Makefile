# The two commands of the README. Each makes its own virtual environment in .venv.
#   make serve   set up, then serve the built-in example models on ports 8000 (HTTP), 8001 (gRPC), 8002 (metrics)
#   make test    set up, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test setup setup-test perf-analyzer bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

setup-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench,loadtest]'

serve: setup
	$(BIN)/model-runtime serve --allow-client-shm true

perf-analyzer: $(BIN)/python
	PATH="$(CURDIR)/$(BIN):$$PATH" bash bench/install_perf_analyzer.sh

# perf_analyzer is optional for the suite: its test skips, saying why, when it cannot be installed.
test: setup-test
	-@$(MAKE) --no-print-directory perf-analyzer
	$(BIN)/python -m pytest -p no:cacheprovider -q tests

bench: setup-test perf-analyzer
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info runtime/_pb/*_pb2*.py* runtime/*/_*.so csrc/*.c
