import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from tests.conftest import ROOT
from workflow_orchestrator.conf import SETTINGS


def start_up(**env) -> subprocess.CompletedProcess:
    """Load the settings in a fresh process, as start-up does."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("ORCH_", "DJANGO_"))}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('ok')"],
        cwd=ROOT,
        env={**environment, "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "variable, value",
    [
        ("ORCH_WORKERS", "many"),
        ("ORCH_WORKERS", "0"),
        ("ORCH_TASK_TIMEOUT", "soon"),
        ("ORCH_BROKER", "rabbit"),
        ("CONN_MAX_AGE", "-1"),
        ("DJANGO_DEBUG", "perhaps"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("PORT", "http"),
    ],
)
def test_a_malformed_value_stops_start_up_naming_the_variable(variable, value):
    result = start_up(**{variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("ORCH_LEASE_SECONDS", "0", "ORCH_LEASE_SECONDS must be at least 1, got '0'"),
        ("ORCH_TASK_TIMEOUT", "soon", "ORCH_TASK_TIMEOUT must be a number, got 'soon'"),
        ("ORCH_MAX_ATTEMPTS", "2.5", "ORCH_MAX_ATTEMPTS must be a whole number, got '2.5'"),
        ("ORCH_WEBHOOK_BACKOFF", "-1", "ORCH_WEBHOOK_BACKOFF must be at least 0, got '-1'"),
    ],
)
def test_a_malformed_value_of_an_app_setting_is_refused_as_conf_bounds_it(variable, value, message):
    result = start_up(**{variable: value})
    assert result.stderr.strip().splitlines()[-1] == f"django.core.exceptions.ImproperlyConfigured: {message}"


def app_settings_in_a_fresh_process(**env) -> dict:
    probe = (
        "import django, json; django.setup(); from workflow_orchestrator.conf import SETTINGS, app_settings; "
        "print(json.dumps({name: getattr(app_settings, name) for name in SETTINGS}))"
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ORCH_")}
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**environment, **env, "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
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


def test_production_refuses_to_start_without_a_secret_key():
    result = start_up(DJANGO_DEBUG="false")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr
    assert start_up(DJANGO_DEBUG="false", DJANGO_SECRET_KEY="s" * 50).stdout.strip() == "ok"


def test_the_job_queue_is_configured_for_durable_jobs():
    q = settings.Q_CLUSTER
    assert q["timeout"] < q["retry"], "django-q2 re-delivers jobs that run longer than retry"
    assert q["max_attempts"] >= 1
    assert q["catch_up"] is False
    assert q["save_limit"] < 0
    assert settings.DATABASES["default"]["CONN_MAX_AGE"] == 60


def test_sqlite_is_opened_for_concurrent_workers():
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
        pytest.skip("the database is not SQLite")
    options = settings.DATABASES["default"]["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in options["init_command"] and "synchronous=NORMAL" in options["init_command"]
    assert options["timeout"] == 20


def test_every_process_shares_one_cache():
    backend = settings.CACHES["default"]["BACKEND"]
    assert backend.endswith(("DatabaseCache", "RedisCache"))


def test_env_example_lists_every_variable():
    text = (ROOT / ".env.example").read_text()
    source = (ROOT / "orchestrator_site" / "settings.py").read_text()
    import re

    variables = set(re.findall(r'env_\w+\("([A-Z_]+)"', source)) | set(re.findall(r'_raw\("([A-Z_]+)"', source))
    assert variables, "no variables found in settings.py"
    missing = sorted(name for name in variables if f"{name}=" not in text)
    assert not missing


def test_the_documented_production_settings_pass_the_deploy_check():
    import secrets

    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "DJANGO_"))},
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


@pytest.mark.parametrize("value", ["lots", "10/fortnight", "/min"])
def test_a_malformed_throttle_rate_stops_start_up(value):
    result = start_up(ORCH_API_THROTTLE_USER=value)
    assert result.returncode != 0 and "ORCH_API_THROTTLE_USER" in result.stderr


def test_throttling_is_configurable():
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
         "print(settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'])"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
             "ORCH_API_THROTTLE_USER": "5/min"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "{'user': '5/min'}" in result.stdout, result.stderr


def test_earlier_secret_keys_come_from_the_environment():
    probe = "from django.conf import settings; print(settings.SECRET_KEY_FALLBACKS)"
    found = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {probe}"],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "DJANGO_SECRET_KEY_FALLBACKS": "old-key-1, old-key-2",
        },  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.stdout.strip() == "['old-key-1', 'old-key-2']", found.stderr
