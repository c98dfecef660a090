# One command each: `make run` sets up and serves mcpd on its embedded defaults,
# `make test` sets up and runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup test-deps run test bench lint clean

$(BIN)/twistd: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[tests]'
	@touch $@

setup: $(BIN)/twistd

run: setup
	$(BIN)/twistd -n --pidfile= mcpd $(ARGS)

test-deps: setup
	PYTHON=$(BIN)/python tests/install-deps.sh

test: test-deps
	MCPD_NODE_TOOLS=$(CURDIR)/.ci-tools $(BIN)/trial tests

bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	PYTHONPATH=. $(BIN)/python bench/run.py $(ARGS)

lint: setup
	$(BIN)/ruff check mcpd tests bench twisted
	$(BIN)/ruff format --check mcpd tests bench twisted
	$(BIN)/mypy mcpd

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info
