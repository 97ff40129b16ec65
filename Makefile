# Quick start: `make demo` and `make test` each set up .venv (torch + udm_fast, kernels compiled) and run.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1
BIN := $(VENV)/bin
SOURCES := setup.py pyproject.toml $(shell find csrc kernels -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" numpy ninja "setuptools>=64" wheel
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[test]"
	touch $@

demo: setup
	$(BIN)/udm-fast demo --out udm_fast_demo

test: setup
	$(BIN)/python -m pytest tests -q

bench: setup
	$(BIN)/python -m pytest bench -q --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info udm_fast/_C*.so
