# The two commands of the quick start. Each builds .venv on first use with only Python 3.11+.
# The tests run in two processes (pytest-xdist): compiling is single-threaded on XLA:CPU.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: test test-slow soak demo lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The documentation's tools, kept out of $(STAMP) so that `make test` does not install them.
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

# The suite without the tests marked slow (over ~17 s each on 2 CPU cores: CLI jobs, crash
# and resume, two hosts, the heaviest checks), under 10 minutes; CI runs those too, by
# test-slow.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/pyright src
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not soak"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m slow

# The soak test (tests/test_soak.py): the digits model for 20,000 steps (SOAK_STEPS), its
# memory and checkpoint count watched; about 15 minutes, not run by CI.
soak: $(STAMP)
	$(BIN)/python -m pytest -q -s -m soak

demo: $(STAMP)
	$(BIN)/python -m adaptive_diffusion.demo

# The site in site/ (mkdocs.yml, strict: any warning fails the build). The variable only
# silences mkdocs-material's banner about MkDocs 2.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/pyright src

clean:
	rm -rf $(VENV)
