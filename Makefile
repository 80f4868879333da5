# mailgate: `make run` serves the gateway on the local test mail stack; `make test` runs
# every test against real Dovecot + Postfix; `make check` is what CI runs.
VENV ?= .venv
PYTHON ?= /usr/bin/python3
BIN := $(VENV)/bin
STACK_ENV ?= $${MAILSTACK_DIR:-/tmp/mailgate-stack}/env

.PHONY: venv mailstack mailstack-stop test lint openapi openapi-check check run bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

mailstack:
	bash tests/mailstack/start.sh

mailstack-stop:
	bash tests/mailstack/stop.sh

test: venv mailstack
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

openapi: venv
	$(BIN)/mailgate openapi > openapi/openapi.json

openapi-check: venv
	$(BIN)/mailgate openapi | diff -u openapi/openapi.json - \
	  || (echo "openapi/openapi.json is stale: run 'make openapi'"; exit 1)

check: lint openapi-check test

run: venv mailstack
	@. $(STACK_ENV); echo "mailgate on http://127.0.0.1:8025 — docs: http://127.0.0.1:8025/docs"; \
	  echo "demo mailboxes: alice@example.test / bob@example.test, password: $$MAILSTACK_PASSWORD"; \
	  exec $(BIN)/mailgate serve

bench: venv mailstack
	$(BIN)/python bench/run.py
	$(BIN)/python bench/list_throughput.py
	$(BIN)/python bench/send_throughput.py
	$(BIN)/python bench/raw_memory.py
	$(BIN)/python bench/mime_budgets.py
