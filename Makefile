# The commands the README shows. `make run` and `make test` set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
.PHONY: install dev run serve test test-unit test-integration chaos bench docs lint format clean

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

## The whole test suite, on whatever DATABASE_URL and ORCH_BROKER select.
test: dev $(MERMAID)
	$(BIN)/pytest

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
	$(BIN)/ruff format --check .

format: dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
