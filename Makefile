# The commands the README shows. `make run` and `make test` set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
.PHONY: install dev run serve test test-pg test-unit test-integration chaos bench docs lint format clean

# HOST, PORT and WEB_CONCURRENCY come from the settings (environment, then .env, then defaults).
SERVER_SETTINGS = $(BIN)/python manage.py shell --no-imports -c \
	"from django.conf import settings as s; print(s.HOST, s.PORT, s.WEB_CONCURRENCY)"

## The example site's runtime (requirements.txt): what `make run` and `make serve` need.
$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

install: $(VENV)/.installed

## The runtime plus the test tools and the linter (requirements-dev.txt).
$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

dev: $(VENV)/.dev-installed

## Set up, migrate, and start the development web server and a worker cluster together (SQLite by default).
# honcho is told not to read .env itself, so that it cannot disagree with the settings. It runs as
# the terminal's foreground job (orchestrator_dev/foreground.py), so that Ctrl-C stops it and make
# exits 0 instead of reporting an interrupted target.
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py createadmin
	@set -e; \
	addr=$$($(SERVER_SETTINGS)); \
	set -- $$addr; \
	printf '\n  Admin:  http://%s:%s/admin/\n\n' "$$1" "$$2"; \
	HOST="$$1" PATH="$(CURDIR)/$(BIN):$$PATH" exec $(BIN)/python -m orchestrator_dev.foreground \
		$(BIN)/honcho start --env /dev/null --port "$$2"

## The production web server: collect the static files, then gunicorn with WEB_CONCURRENCY workers.
# Migrate first, and run worker clusters beside it (`manage.py qcluster`): see the README.
# No control socket: gunicorn's is one path per user, which a second server would take over.
serve: install
	$(BIN)/python manage.py collectstatic --noinput
	@set -e; \
	addr=$$($(SERVER_SETTINGS)); \
	set -- $$addr; \
	exec $(BIN)/gunicorn orchestrator_site.wsgi --bind "$$1:$$2" --workers "$$3" \
		--access-logfile - --no-control-socket

# The pinned Mermaid renderer the documentation's diagrams are checked with (tests/test_docs.py),
# installed when npm is here; without npm, that one test is skipped.
MERMAID := docs/mermaid/node_modules/.package-lock.json
$(MERMAID): docs/mermaid/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix docs/mermaid --no-audit --no-fund --loglevel=error || echo "make: npm ci failed in docs/mermaid"; \
	else echo "make: no npm: the Mermaid rendering test will be skipped"; fi

## The tests. The engine's tests (the `engine` marker: tests/conftest.py's ENGINE_MODULES) run on
## PostgreSQL + Redis as well as SQLite; the others check what is the same on any database.
# `make test`, the everyday loop and CI's command: the whole suite on SQLite with the ORM broker
# (whatever .env says), then the engine's tests on PostgreSQL + Redis at TEST_PG_URL and
# TEST_REDIS_URL, which must be running. One after the other: on 2 cores, side by side, the
# tests that wait on real clusters ran out of their bounds (the SQLite pass's contract tests
# keep a PostgreSQL database of their own, TEST_PG_URL + _contract, all the same). When DATABASE_URL or ORCH_BROKER is set in the
# environment (or on make's command line), that choice is the user's: the whole suite runs once,
# on what they select, and nothing else.
# `make test-pg`: the whole suite on PostgreSQL + Redis (all but the install test, whose fresh
# project has a SQLite database of its own whatever the suite runs on).
# `make test-unit`: the quick loop, on what the environment selects (SQLite by default): the
# tests that start no qcluster and no server. `make test-integration`: the ones that do.
TEST_PG_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
ON_SQLITE = DATABASE_URL="sqlite:///$(CURDIR)/db.sqlite3" ORCH_BROKER=orm ORCH_TEST_POSTGRES_URL="$(TEST_PG_URL)_contract"
ON_PG = DATABASE_URL="$(TEST_PG_URL)" ORCH_BROKER=redis REDIS_URL="$(TEST_REDIS_URL)"

test: dev $(MERMAID)
ifneq ($(DATABASE_URL)$(ORCH_BROKER),)
	$(BIN)/pytest
else
	@# Both passes run, whichever fails; make fails if either did.
	@echo "=== make test: the whole suite on SQLite, ORM broker ==="
	$(ON_SQLITE) $(BIN)/pytest; sqlite=$$?; \
	echo "=== make test: the engine's tests on PostgreSQL, Redis broker ==="; \
	$(ON_PG) $(BIN)/pytest -m "engine and not install"; pg=$$?; \
	test $$sqlite = 0 && test $$pg = 0
endif

test-pg: dev $(MERMAID)
	$(ON_PG) $(BIN)/pytest -m "not install"

test-unit: dev $(MERMAID)
	$(BIN)/pytest -m "not integration"

test-integration: dev
	$(BIN)/pytest -m integration

## Kill workers and a whole cluster while N workflows run; nothing may be lost, happen twice or run out of order.
N ?= 200
chaos: dev
	CHAOS_WORKFLOWS=$(N) $(BIN)/pytest -m chaos -s -p no:cacheprovider tests/test_chaos.py

## Orchestrator against bare django-q2 on a cluster of its own; ARGS="--api" for the API at scale.
bench: install
	$(BIN)/python manage.py bench $(ARGS)

## Regenerate docs/SCHEMA.md from the models (the test suite fails when it is stale).
docs: install
	$(BIN)/python manage.py docs_schema

lint: dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .

format: dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
