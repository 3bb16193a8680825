import os
import subprocess
import sys

import pytest
from django.conf import settings

from tests.conftest import ROOT


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
