# One command each: `make run` sets up and serves mcpd on its embedded defaults,
# `make test` sets up and runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup test-deps run test fuzz bench lint clean

$(BIN)/twistd: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "make: $(PYTHON) cannot make a virtualenv (no ensurepip): install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
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

# The property-based fuzz suite (tests/test_fuzz.py) at length: MCPD_FUZZ_EXAMPLES random examples
# per transport instead of CI's few fixed ones; each test prints its figures, failures are kept in
# .hypothesis/ and replayed first next time. MCPD_FUZZ_SURVEY=1 lists every kind of problem met
# instead of stopping (and shrinking) at the first.
MCPD_FUZZ_EXAMPLES ?= 2000
fuzz: setup
	MCPD_FUZZ_EXAMPLES=$(MCPD_FUZZ_EXAMPLES) $(BIN)/trial tests.test_fuzz

bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	PYTHONPATH=. $(BIN)/python bench/run.py $(ARGS)

lint: setup
	$(BIN)/ruff check mcpd tests bench twisted
	$(BIN)/ruff format --check mcpd tests bench twisted
	$(BIN)/mypy mcpd
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info .hypothesis
