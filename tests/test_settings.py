"""The example site's settings, as a user meets them: each variable (from the environment or
`.env`) becomes the setting it names, the app's settings default to workflow_orchestrator.conf,
and a bad value stops start-up with an error that names its variable."""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from workflow_orchestrator.conf import SETTINGS

CLEAN = {key: value for key, value in os.environ.items() if not key.startswith(("ORCH_", "DJANGO_", "REDIS_"))}


def run(code: str, cwd=ROOT, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**CLEAN, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_up(**env) -> subprocess.CompletedProcess:
    """Load the settings in a fresh process, as start-up does."""
    return run("import django; django.setup(); print('ok')", **env)


def site(*names: str, cwd=ROOT, **env) -> list:
    """The values of the settings `names` (expressions over the settings module) in a
    fresh process with the variables `env`."""
    probe = f"import json, orchestrator_site.settings as s; print(json.dumps([eval(n, vars(s)) for n in {names!r}]))"
    result = run(probe, cwd=cwd, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "variable, value",
    [
        ("ORCH_WORKERS", "many"),
        ("ORCH_WORKERS", "0"),
        ("ORCH_BROKER", "rabbit"),
        ("CONN_MAX_AGE", "-1"),
        ("DJANGO_DEBUG", "perhaps"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("DATABASE_URL", "postgres://user@host:port/name"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("PORT", "http"),
        ("ORCH_API_THROTTLE_USER", "lots"),
        ("ORCH_API_THROTTLE_ANON", "10/fortnight"),
    ],
)
def test_a_malformed_value_stops_start_up_naming_the_variable(variable, value):
    result = start_up(**{variable: value})
    assert result.returncode != 0
    assert last_line(result).startswith(f"django.core.exceptions.ImproperlyConfigured: {variable} ")
    assert repr(value) in last_line(result)


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("ORCH_LEASE_SECONDS", "0", "ORCH_LEASE_SECONDS must be at least 1, got '0'"),
        ("ORCH_TASK_TIMEOUT", "soon", "ORCH_TASK_TIMEOUT must be a number, got 'soon'"),
        ("ORCH_MAX_ATTEMPTS", "2.5", "ORCH_MAX_ATTEMPTS must be a whole number, got '2.5'"),
        ("ORCH_WEBHOOK_BACKOFF", "-1", "ORCH_WEBHOOK_BACKOFF must be at least 0, got '-1'"),
        ("DJANGO_DEBUG", " Perhaps ", "DJANGO_DEBUG must be true or false, got 'Perhaps'"),
        ("ORCH_BROKER", "rabbit", "ORCH_BROKER must be one of orm, redis, got 'rabbit'"),
    ],
)
def test_a_malformed_value_is_refused_with_what_it_must_be(variable, value, message):
    assert last_line(start_up(**{variable: value})) == f"django.core.exceptions.ImproperlyConfigured: {message}"


def app_settings_in_a_fresh_process(**env) -> dict:
    probe = (
        "import django, json; django.setup(); from workflow_orchestrator.conf import SETTINGS, app_settings; "
        "print(json.dumps({name: getattr(app_settings, name) for name in SETTINGS}))"
    )
    found = run(probe, **env)
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)


def test_the_site_leaves_each_app_setting_at_its_default_when_its_variable_is_unset():
    defaults = {name: list(setting.default) if setting.kind is list else setting.default
                for name, setting in SETTINGS.items()}  # fmt: skip
    assert app_settings_in_a_fresh_process() == defaults


def test_the_site_reads_each_app_setting_from_the_variable_of_the_same_name():
    given = {
        float: ("7.5", 7.5),
        int: ("7", 7),
        str: ("a token", "a token"),
        list: (" tests.outcome_tasks, ", ["tests.outcome_tasks"]),
    }
    env = {name: given[setting.kind][0] for name, setting in SETTINGS.items()}
    expected = {name: given[setting.kind][1] for name, setting in SETTINGS.items()}
    assert app_settings_in_a_fresh_process(**env) == expected


def test_booleans_lists_and_numbers_read_as_the_documentation_says():
    assert site(
        "DEBUG", "ALLOWED_HOSTS", "SECRET_KEY_FALLBACKS", "PORT", "CONN_MAX_AGE", "LOG_LEVEL",
        DJANGO_DEBUG="Off", DJANGO_SECRET_KEY="k", DJANGO_ALLOWED_HOSTS=" a.example, ,b.example ",
        DJANGO_SECRET_KEY_FALLBACKS="old-1, old-2", PORT=" 8080 ", CONN_MAX_AGE="0", LOG_LEVEL="Warning",
    ) == [False, ["a.example", "b.example"], ["old-1", "old-2"], 8080, 0, "WARNING"]  # fmt: skip


def test_debug_off_turns_on_the_https_hardening_each_switch_can_turn_off():
    hardening = ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "SECURE_HSTS_SECONDS", "SECURE_HSTS_PRELOAD")
    production = {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "k"}
    assert site(*hardening) == [False, False, 0, False]
    assert site(*hardening, **production) == [True, True, 31536000, True]
    assert site(*hardening, **production, DJANGO_SSL_REDIRECT="no", DJANGO_HSTS_SECONDS="60")[::2] == [False, 60]


def test_production_refuses_to_start_without_a_secret_key():
    result = start_up(DJANGO_DEBUG="false")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in last_line(result)
    assert start_up(DJANGO_DEBUG="false", DJANGO_SECRET_KEY="s" * 50).stdout.strip() == "ok"


def test_the_job_queue_follows_the_worker_variables():
    timeout, retry, workers, poll, name = site(
        *(f"Q_CLUSTER[{key!r}]" for key in ("timeout", "retry", "workers", "poll", "name")),
        ORCH_TASK_TIMEOUT="600", ORCH_WORKERS="3", ORCH_POLL="0.5", ORCH_CLUSTER_NAME="nightly",
    )  # fmt: skip
    assert timeout > 600, "django-q2's own timeout is only a backstop beyond the task's"
    assert retry > timeout, "django-q2 delivers again a job that runs longer than retry"
    assert (workers, poll, name) == (3, 0.5, "nightly")


def test_the_redis_broker_puts_jobs_and_the_shared_cache_on_redis_url():
    url = "redis://127.0.0.1:6379/9"
    broker, cache = site("Q_CLUSTER.get('redis')", "CACHES['default']", ORCH_BROKER="redis", REDIS_URL=url)
    assert broker == url
    assert (cache["BACKEND"], cache["LOCATION"]) == ("django.core.cache.backends.redis.RedisCache", url)
    orm_broker, orm_cache = site("Q_CLUSTER.get('orm')", "CACHES['default']['BACKEND']", ORCH_BROKER="orm")
    assert (orm_broker, orm_cache) == ("default", "django.core.cache.backends.db.DatabaseCache")


def test_database_url_names_the_database_and_conn_max_age_keeps_its_connections():
    [database] = site("DATABASES['default']", DATABASE_URL="postgres://someone:secret@db.example:6543/orders")
    assert {key: database[key] for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")} == {
        "ENGINE": "django.db.backends.postgresql", "NAME": "orders", "USER": "someone", "PASSWORD": "secret",
        "HOST": "db.example", "PORT": 6543,
    }  # fmt: skip
    assert (database["CONN_MAX_AGE"], database["CONN_HEALTH_CHECKS"]) == (60, True)
    [kept] = site("DATABASES['default']['CONN_HEALTH_CHECKS']", CONN_MAX_AGE="0")
    assert kept is False, "no check of a connection that is never kept"


def test_sqlite_is_opened_for_concurrent_workers(tmp_path):
    probe = (
        "import django; django.setup(); from django.db import connection; cursor = connection.cursor(); "
        "print(*(cursor.execute(f'PRAGMA {name}').fetchone()[0] for name in ('journal_mode', 'busy_timeout')))"
    )
    found = run(probe, DATABASE_URL=f"sqlite:///{tmp_path / 'site.sqlite3'}")
    assert found.stdout.split() == ["wal", "20000"], found.stderr
    [test_name] = site("DATABASES['default']['TEST']['NAME']", DATABASE_URL=f"sqlite:///{tmp_path / 'site.sqlite3'}")
    assert test_name == str(tmp_path / "test_site.sqlite3"), "a file: integration tests run clusters beside it"


def test_the_env_file_is_read_and_the_environment_wins_over_it(tmp_path):
    (tmp_path / "orchestrator_site").mkdir()
    (tmp_path / "orchestrator_site" / "__init__.py").touch()
    shutil.copy(ROOT / "orchestrator_site" / "settings.py", tmp_path / "orchestrator_site" / "settings.py")
    (tmp_path / ".env").write_text("ORCH_WORKERS=5\nORCH_LEASE_SECONDS=45\nORCH_CLUSTER_NAME=from-file\n")
    names = ("ORCH_WORKERS", "ORCH_LEASE_SECONDS", "ORCH_CLUSTER_NAME")
    assert site(*names, cwd=tmp_path) == [5, 45, "from-file"]
    assert site(*names, cwd=tmp_path, ORCH_CLUSTER_NAME="from-environment") == [5, 45, "from-environment"]


def test_a_value_starting_with_a_dollar_names_another_variable_unless_escaped():
    token = secrets.token_urlsafe(8)
    assert site("ORCH_METRICS_TOKEN", ORCH_METRICS_TOKEN="$SCRAPE_TOKEN", SCRAPE_TOKEN=token) == [token]
    assert site("ORCH_METRICS_TOKEN", ORCH_METRICS_TOKEN=r"\$literal") == ["$literal"]


def test_throttling_is_off_unless_a_rate_is_set():
    assert site("REST_FRAMEWORK.get('DEFAULT_THROTTLE_RATES')") == [None]
    rates, classes = site(
        "REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']", "REST_FRAMEWORK['DEFAULT_THROTTLE_CLASSES']",
        ORCH_API_THROTTLE_USER="5/min",
    )  # fmt: skip
    assert (rates, classes) == ({"user": "5/min"}, ["rest_framework.throttling.UserRateThrottle"])


def test_env_example_lists_every_variable():
    text = (ROOT / ".env.example").read_text()
    source = (ROOT / "orchestrator_site" / "settings.py").read_text()
    variables = set(re.findall(r'\benv(?:_\w+|\.\w+)?\("([A-Z_]+)"', source))
    assert len(variables) > 30, variables
    assert sorted(name for name in variables if f"{name}=" not in text) == []


def test_the_documented_production_settings_pass_the_deploy_check():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={
            **CLEAN,
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DJANGO_ALLOWED_HOSTS": "orchestrator.example",
            "DJANGO_BEHIND_PROXY": "true",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
