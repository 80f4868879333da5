# mailgate: `make run` serves the gateway on the local test mail stack; `make test` runs
# every test against real Dovecot + Postfix; `make check` is what CI runs.
VENV ?= .venv
PYTHON ?= /usr/bin/python3
BIN := $(VENV)/bin
STACK_ENV ?= $${MAILSTACK_DIR:-/tmp/mailgate-stack}/env

.PHONY: venv lock lock-check spec-lint mailstack mailstack-stop stop test test-cyrus fuzz lint readme openapi openapi-check check run bench

# Locked, hashed dependencies (requirements-dev.lock), then the project itself.
$(BIN)/.installed: pyproject.toml requirements-dev.lock
	@echo "venv: installing the locked dependencies (about a minute the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install --progress-bar off --require-hashes -r requirements-dev.lock \
	  | grep --line-buffered -E '^(Collecting|Successfully installed)' || true
	$(BIN)/pip check
	$(BIN)/pip install -q --no-deps -e .
	touch $@

venv: $(BIN)/.installed

# `make lock` after changing dependencies in pyproject.toml: re-resolves with uv, keeping
# every pin that still fits (universal: any platform, with hashes). `lock-check` fails
# when pyproject.toml asks for something the locks do not hold.
UV := $(BIN)/uv
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --no-header -q
LOCKS := requirements.lock requirements-dev.lock

$(UV):
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv

lock: $(UV)
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) -o requirements.lock
	$(UV) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements-dev.lock

lock-check: $(UV)
	@tmp=$$(mktemp -d); cp $(LOCKS) $$tmp/; \
	  $(UV) pip compile pyproject.toml $(LOCK_FLAGS) -o $$tmp/requirements.lock && \
	  $(UV) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o $$tmp/requirements-dev.lock && \
	  for f in $(LOCKS); do diff -u $$f $$tmp/$$f || { echo "$$f is stale: run 'make lock'"; \
	    rm -rf $$tmp; exit 1; }; done; rm -rf $$tmp

mailstack:
	bash tests/mailstack/start.sh

mailstack-stop stop:
	bash tests/mailstack/stop.sh

test: venv mailstack
	$(BIN)/pytest

# The readers' tests again with IMAP and POP3 on a private Cyrus IMAP 3.6 instead of
# Dovecot (tests/mailstack/cyrus.sh; SMTP stays Postfix + Dovecot): contract, IMAP, POP3,
# modes, budgets, sync. Tests of Dovecot-only facts are skipped with their reason.
CYRUS_TESTS ?= tests/contract tests/integration/test_imap_adapter.py \
  tests/integration/test_imap_api.py tests/integration/test_pop3_api.py \
  tests/integration/test_remove_mode.py tests/integration/test_session_budget.py \
  tests/integration/test_stale_views.py tests/integration/test_sync_changes.py \
  tests/integration/test_sync_events.py tests/integration/test_sync_faults.py \
  tests/integration/test_sync_model.py tests/integration/test_sync_pop3.py \
  tests/integration/test_sync_journal.py \
  tests/integration/test_cyrus.py
test-cyrus: venv
	MAILSTACK_SERVER=cyrus bash tests/mailstack/cyrus.sh
	MAILSTACK_SERVER=cyrus $(BIN)/pytest $(CYRUS_TESTS)

# schemathesis against the app's own OpenAPI document, real mail stack behind it (~4 min)
fuzz: venv mailstack
	$(BIN)/python tests/fuzz/run.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

readme: venv
	$(BIN)/python -m service.settings_table README.md

openapi: venv
	$(BIN)/mailgate openapi > openapi/openapi.json

# Redocly CLI (pinned in tools/redocly/package-lock.json) lints the committed document.
REDOCLY := tools/redocly/node_modules/.bin/redocly
$(REDOCLY): tools/redocly/package-lock.json
	cd tools/redocly && npm ci --no-audit --no-fund --loglevel=error
	touch $@

spec-lint: $(REDOCLY)
	$(REDOCLY) lint --format=stylish openapi/openapi.json

openapi-check: venv
	$(BIN)/mailgate openapi | diff -u openapi/openapi.json - \
	  || (echo "openapi/openapi.json is stale: run 'make openapi'"; exit 1)

check: lint lock-check openapi-check spec-lint test fuzz

run: venv mailstack
	@. $(STACK_ENV); \
	  echo "demo mailboxes: alice@example.test / bob@example.test, password: $$MAILSTACK_PASSWORD"; \
	  MAILGATE_LOG_FORMAT=$${MAILGATE_LOG_FORMAT:-text} exec $(BIN)/mailgate serve

bench: venv mailstack
	$(BIN)/python bench/run.py
	$(BIN)/python bench/list_throughput.py
	$(BIN)/python bench/send_throughput.py
	$(BIN)/python bench/raw_memory.py
	$(BIN)/python bench/mime_budgets.py
	$(BIN)/python bench/changes_cost.py
	$(BIN)/python bench/remove_mode_loss.py
	$(BIN)/python bench/mailbox_load.py
	$(BIN)/python bench/upload_memory.py
	$(BIN)/python bench/lockout.py
