# Two commands: `make run` (demo service on 127.0.0.1:8000) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test lint typecheck pytest bench screenshots client-test client-types clean distclean

# The service, then its development tools (the local Stripe stand-in and the demo: a distribution
# of their own, which the service's wheel does not contain).
$(STAMP): pyproject.toml devtools/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (found %s)" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check -e devtools
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/chronote-billing demo

lint: $(STAMP)
	$(BIN)/ruff check src devtools tests bench tools
	$(BIN)/ruff format --check src devtools tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

test: lint typecheck pytest

# The TypeScript client (clients/typescript, needs Node 20+ and npm): its generated types must
# match the server's OpenAPI document, and its tests run against a real server they start.
CLIENT := clients/typescript
CLIENT_ENV := CHRONOTE_BILLING_CLI=$(CURDIR)/$(BIN)/chronote-billing

$(CLIENT)/node_modules/.package-lock.json: $(CLIENT)/package-lock.json
	cd $(CLIENT) && npm ci --no-audit --no-fund

client-types: $(STAMP) $(CLIENT)/node_modules/.package-lock.json
	cd $(CLIENT) && $(CLIENT_ENV) npm run --silent check:types

client-test: client-types
	cd $(CLIENT) && $(CLIENT_ENV) npm test

bench: $(STAMP)
	$(BIN)/python bench/ledger.py --seconds 10

screenshots: $(STAMP)
	$(BIN)/python tools/screenshots.py docs/screenshots

# The demo's database only: `make run` seeds it again. `distclean` also removes the environment.
clean:
	rm -f var/*.db var/*.db-wal var/*.db-shm

distclean: clean
	rm -rf $(VENV) $(CLIENT)/node_modules $(CLIENT)/build $(CLIENT)/dist
