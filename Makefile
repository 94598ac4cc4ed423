# The two commands: `make run` (the service, with demo login) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench

$(VENV)/.installed: requirements.txt requirements-dev.txt sdk/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m registry.devserver run

# The TypeScript SDK: `npm ci` from the committed lock file, again only when the lock file changes.
TS_SDK := sdk/typescript

$(TS_SDK)/node_modules/.installed: $(TS_SDK)/package-lock.json
	cd $(TS_SDK) && npm ci --no-audit --no-fund
	touch $@

test: $(VENV)/.installed $(TS_SDK)/node_modules/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m mypy --strict --config-file sdk/python/pyproject.toml sdk/python/agent_passport
	PYTHON=$(PY) sdk/python/test-installed-wheel -q
	cd $(TS_SDK) && npm test
	$(PY) -m registry.devserver test $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	$(PY) bench/bench_passports.py
