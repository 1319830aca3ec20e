# The two commands of the quick start. Each builds .venv on first use with only Python 3.11+.
# The tests run in two processes (pytest-xdist): compiling is single-threaded on XLA:CPU.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pyright src
	$(BIN)/python -m pytest -q -n 2

demo: $(STAMP)
	$(BIN)/python -m adaptive_diffusion.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pyright src

clean:
	rm -rf $(VENV)
