"""The system checks refuse, at start-up, settings the app cannot work with, naming each."""

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from workflow_orchestrator.apps import import_task_modules
from workflow_orchestrator.conf import ORM_BROKER, SETTINGS, q_cluster
from workflow_orchestrator.queue import JOB_TIMEOUT_GRACE

# The checks read the database too: the definition versions that workflows still use
# (checks.check_definition_versions, whose own tests are in tests/test_versions.py).
pytestmark = pytest.mark.django_db

NUMBERS = [name for name, setting in SETTINGS.items() if setting.kind in (int, float)]


def messages() -> dict[str, str]:
    """The app's check messages by id: each id at most once in these tests."""
    found = [message for message in run_checks() if message.id.startswith("workflow_orchestrator.")]
    return {message.id.removeprefix("workflow_orchestrator."): message.msg for message in found}


def test_the_example_sites_settings_pass_every_check():
    assert messages() == {}


@pytest.mark.parametrize("redis", [None, "redis://127.0.0.1:6379/0"])
def test_a_cluster_from_q_cluster_passes_with_any_task_timeout(settings, redis):
    settings.ORCH_TASK_TIMEOUT = 3600
    settings.Q_CLUSTER = q_cluster(name="host", workers=2, task_timeout=settings.ORCH_TASK_TIMEOUT, redis=redis)
    assert messages() == {}


# --- the app's settings --------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETTINGS)
def test_a_setting_of_the_wrong_type_is_refused_naming_it(settings, name):
    setattr(settings, name, object())
    error = messages()["E001"]
    assert error.startswith(f"{name} must be a ")


@pytest.mark.parametrize(
    "name, value, problem",
    [
        ("ORCH_LEASE_SECONDS", "30", "must be a number, got '30'"),
        ("ORCH_MAX_ATTEMPTS", 2.5, "must be a whole number, got 2.5"),
        ("ORCH_WEBHOOK_MAX_ATTEMPTS", True, "must be a whole number, got True"),
        ("ORCH_RETRY_BACKOFF", float("inf"), "must be a finite number, got inf"),
        ("ORCH_TASK_MODULES", "myapp.tasks", "must be a list of strings, got 'myapp.tasks'"),
        ("ORCH_WEBHOOK_ALLOWED_HOSTS", ["example.com", None], "must be a list of strings, got ['example.com', None]"),
        ("ORCH_WEBHOOK_SECRET", None, "must be a string, got None"),
    ],
)
def test_the_type_error_says_what_is_wrong(settings, name, value, problem):
    setattr(settings, name, value)
    assert messages() == {"E001": f"{name} {problem}."}


@pytest.mark.parametrize("name", NUMBERS)
def test_a_number_below_its_minimum_is_refused_naming_it(settings, name):
    minimum = SETTINGS[name].minimum
    setattr(settings, name, minimum - 1)
    assert messages() == {"E002": f"{name} must be at least {minimum}, got {minimum - 1!r}."}


def test_values_of_other_fitting_types_pass(settings):
    settings.ORCH_TASK_TIMEOUT = 120  # a whole number where any number will do
    settings.ORCH_RETRY_BACKOFF = 0  # the minimum itself
    settings.ORCH_TASK_MODULES = ("tests.outcome_tasks",)
    settings.ORCH_WEBHOOK_ALLOWED_HOSTS = []
    assert messages() == {}


def test_a_project_that_sets_none_of_them_gets_the_defaults(settings):
    for name in SETTINGS:
        delattr(settings, name)
    assert messages() == {}


def test_one_module_in_place_of_a_list_stops_start_up_before_it_is_read_letter_by_letter(settings):
    settings.ORCH_TASK_MODULES = "tests.outcome_tasks"
    with pytest.raises(ImproperlyConfigured, match="ORCH_TASK_MODULES must be a list of strings"):
        import_task_modules()


# --- Q_CLUSTER -----------------------------------------------------------------------------------


def test_without_q_cluster_the_check_command_fails_naming_it(settings):
    del settings.Q_CLUSTER
    with pytest.raises(SystemCheckError, match=r"workflow_orchestrator.E003.*Q_CLUSTER is not set"):
        call_command("check")


def test_a_q_cluster_that_is_not_a_dict_is_refused(settings):
    settings.Q_CLUSTER = [("workers", 4)]
    assert messages() == {"E003": "Q_CLUSTER must be a dict, got list: the engine runs its jobs on django-q2."}


@pytest.mark.parametrize(
    "change, error, key",
    [
        ({"max_attempts": 0}, "E004", "max_attempts"),
        ({"max_attempts": None}, "E004", "max_attempts"),
        ({"ack_failures": False}, "E005", "ack_failures"),
        ({"ack_failures": None}, "E005", "ack_failures"),
        ({"timeout": None}, "E006", "timeout"),
        ({"timeout": 300, "retry": 400}, "E006", "timeout"),
        ({"retry": None}, "E007", "retry"),  # django-q2's default, 60 seconds
        ({"retry": 360}, "E007", "retry"),
        ({"broker_class": None}, "E008", "broker_class"),
        ({"broker_class": "django_q.brokers.orm.ORM"}, "E008", "broker_class"),
    ],
)
def test_a_q_cluster_the_engine_cannot_work_with_is_refused_naming_the_key(settings, change, error, key):
    cluster = {**q_cluster(), **change}
    settings.Q_CLUSTER = {name: value for name, value in cluster.items() if value is not None}
    found = messages()
    assert list(found) == [error]
    assert found[error].startswith(f"Q_CLUSTER['{key}'] must be ")


def test_the_job_timeout_must_leave_the_task_timeout_and_the_grace(settings):
    settings.ORCH_TASK_TIMEOUT = 600
    settings.Q_CLUSTER = q_cluster()  # built for the default task timeout: too short now
    assert messages()["E006"].startswith(f"Q_CLUSTER['timeout'] must be at least {600 + JOB_TIMEOUT_GRACE} seconds")

    settings.Q_CLUSTER = q_cluster(task_timeout=settings.ORCH_TASK_TIMEOUT)
    assert messages() == {}


def test_the_app_must_come_before_django_q():
    from django.conf import settings

    apps = [app for app in settings.INSTALLED_APPS if app != "workflow_orchestrator"]
    with override_settings(INSTALLED_APPS=[*apps, "workflow_orchestrator"]):
        found = messages()
    assert list(found) == ["E009"]
    assert found["E009"].startswith("INSTALLED_APPS must list workflow_orchestrator before django_q")


@pytest.mark.parametrize(
    "app, label", [("rest_framework.authtoken", "authtoken"), ("django_filters", "django_filters")]
)
def test_an_app_the_engine_needs_missing_from_installed_apps_is_an_error(settings, app, label):
    with override_settings(INSTALLED_APPS=[each for each in settings.INSTALLED_APPS if each != app]):
        found = messages()
    assert list(found) == ["E010"]
    assert found["E010"].startswith(f"INSTALLED_APPS lacks {label}: ")


@pytest.mark.parametrize("backend", ["locmem.LocMemCache", "dummy.DummyCache"])
def test_a_per_process_cache_is_a_warning(settings, backend):
    settings.CACHES = {"default": {"BACKEND": f"django.core.cache.backends.{backend}"}}
    warning = messages()["W001"]
    assert warning.startswith(f"CACHES['default'] is {backend.split('.')[1]}, which each process keeps to itself")


def test_the_cache_checked_is_the_one_django_q_uses(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "orchestrator_cache"},
    }
    settings.Q_CLUSTER = q_cluster(cache="shared")
    assert messages() == {}
    settings.Q_CLUSTER = {**q_cluster(cache="default"), "broker_class": ORM_BROKER}
    assert list(messages()) == ["W001"]
