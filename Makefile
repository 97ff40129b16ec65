# Quick start: `make demo` and `make test` each set up .venv (torch + udm_fast, kernels compiled) and run.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1
BIN := $(VENV)/bin
SOURCES := setup.py pyproject.toml $(shell find csrc kernels -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

.PHONY: setup demo test lint format bench clean

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

# style: ruff (pyproject.toml) for Python, clang-format (.clang-format) for C++/CUDA; `make format` applies both
CXX_SOURCES = $(shell git ls-files 'csrc/*' 'kernels/*' | grep -E '\.(cpp|h|cc|cu|cuh)$$')
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/clang-format --dry-run --Werror $(CXX_SOURCES)

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/clang-format -i $(CXX_SOURCES)

# every suite timed, the JSON kept in bench.json, then the per-group comparison table (bench/summarize.py)
BENCH_JSON ?= bench.json
bench: setup
	$(BIN)/python -m pytest bench -q --benchmark-only --benchmark-json=$(BENCH_JSON); status=$$?; \
	$(BIN)/python bench/summarize.py $(BENCH_JSON); exit $$status

clean:
	rm -rf $(VENV) build *.egg-info udm_fast/_C*.so
