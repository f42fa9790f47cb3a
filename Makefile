# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv themselves; nothing has to be installed beforehand but python3.
PYTHON ?= python3
VENV := .venv
# Lint only the source trees that exist (state/, invoke/ arrive with their issues).
SRC := $(wildcard bus components runtime state invoke tests benchmarks examples)
PKGS := $(wildcard bus components runtime state invoke)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Node app of the end-to-end tests (express, like Dapr's quickstarts); npm's hidden lockfile
# marks a finished `npm ci`. Without npm the Node test is skipped locally and fails under CI=true.
# Also Dapr's hello-world Node app (examples/hello-world), run unchanged by its end-to-end test.
NODE_APPS := tests/apps/node examples/hello-world/node
NODE_DEPS := $(addsuffix /node_modules/.package-lock.json,$(NODE_APPS))

.PHONY: install test lint typecheck pytest demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	# arq is the async-invocation baseline of `omnibus bench`; its release pins redis<6, which
	# omnibus outgrew, and it runs on redis 8 unchanged, so it is installed without its pins.
	$(BIN)/pip install --quiet --no-deps 'arq==0.28.0'
	touch $(STAMP)

$(NODE_DEPS): %/node_modules/.package-lock.json: %/package-lock.json
	if command -v npm >/dev/null 2>&1; then npm ci --prefix $* --no-audit --no-fund; \
	else echo "npm not found: $* is not installed"; fi

install: $(STAMP) $(NODE_DEPS)

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

typecheck: $(STAMP)
	$(BIN)/mypy $(PKGS)

pytest: $(STAMP) $(NODE_DEPS)
	$(BIN)/pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/omnibus bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
