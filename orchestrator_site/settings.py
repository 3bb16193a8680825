"""Settings for the orchestrator, read from the environment and an optional `.env` file.

Every variable is listed with its default in `.env.example` and described in
docs/CONFIGURATION.md. A malformed value stops start-up with an ImproperlyConfigured
error that names the variable.
"""

import os
import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from workflow_orchestrator.conf import SETTINGS as APP_SETTINGS
from workflow_orchestrator.conf import q_cluster

BASE_DIR = Path(__file__).resolve().parent.parent

environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
env = environ.Env()


def _raw(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name, "true" if default else "false").lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {value!r}")


def env_number(name: str, default: float, *, minimum: float, whole: bool = False) -> float:
    value = _raw(name, str(default))
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ImproperlyConfigured(f"{name} must be {kind}, got {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value!r}")
    return number


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(name, default).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in _raw(name, default).split(",") if item.strip()]


def env_setting(name: str):
    """The app's setting `name` from the environment variable of the same name, read as its
    type and bounded by its minimum (workflow_orchestrator.conf); the app's default when unset."""
    setting = APP_SETTINGS[name]
    if name not in os.environ:
        return setting.default
    if setting.kind is list:
        return env_list(name, "")
    if setting.kind is str:
        return _raw(name, "")
    return env_number(name, setting.default, minimum=setting.minimum, whole=setting.kind is int)


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = _raw("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
    SECRET_KEY = "insecure-development-key-set-DJANGO_SECRET_KEY-in-production"
# Earlier keys, after a rotation: sessions signed with them stay valid, and the audit log's
# rows and heads signed with them still verify.
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS", "")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")

# HTTPS hardening: on by default when DEBUG is off (`manage.py check --deploy` is clean),
# each switch overridable. Behind a TLS-terminating proxy, set DJANGO_BEHIND_PROXY=true so
# that Django trusts its X-Forwarded-Proto header.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = int(env_number("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0, whole=True))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", not DEBUG)
if env_bool("DJANGO_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

HOST = _raw("HOST", "127.0.0.1")
PORT = int(env_number("PORT", 8000, minimum=1, whole=True))
# gunicorn worker processes of `make serve` (gunicorn's own variable; its advice: 2 per CPU, plus one).
WEB_CONCURRENCY = int(env_number("WEB_CONCURRENCY", 2 * (os.cpu_count() or 1) + 1, minimum=1, whole=True))

INSTALLED_APPS = [
    # First, so that its admin/base_site.html (favicon, small-screen styles) wraps the admin's own.
    "workflow_orchestrator",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # workflow_orchestrator comes before django_q too: the project's `qcluster` command (graceful stop)
    # replaces django-q2's.
    "django_q",
    "orchestrator_dev",  # this repository's own tools (bench, docs_schema, demo, createadmin): no host needs them
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the static files (the admin's, Swagger UI's) from STATIC_ROOT without another server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "orchestrator_site.urls"
WSGI_APPLICATION = "orchestrator_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------

CONN_MAX_AGE = int(env_number("CONN_MAX_AGE", 60, minimum=0, whole=True))
_database_url = _raw("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
if _database_url.split("://", 1)[0] not in environ.Env.DB_SCHEMES:
    raise ImproperlyConfigured(
        f"DATABASE_URL must start with a known scheme such as sqlite:// or postgres://, got {_database_url!r}"
    )
try:
    DATABASES = {"default": env.db_url_config(_database_url)}
except Exception as exc:  # django-environ raises several types for a malformed URL
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
DATABASES["default"]["CONN_MAX_AGE"] = CONN_MAX_AGE
DATABASES["default"]["CONN_HEALTH_CHECKS"] = CONN_MAX_AGE > 0
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent workers on SQLite: without WAL, IMMEDIATE transactions and a generous
    # busy timeout, four workers lose about a third of their writes to "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "timeout": 20,
    }
    # The test database must be a file: integration tests run a qcluster in another process.
    db_name = Path(DATABASES["default"]["NAME"])
    DATABASES["default"]["TEST"] = {"NAME": str(db_name.with_name(f"test_{db_name.name}"))}

# Under pytest only, a second database: the contract tests (tests/test_contract.py) run the
# PostgreSQL backend's statements in the everyday SQLite run too. Its test database is made
# only when a test asks for it; the tests skip it when the server does not answer.
if "pytest" in sys.modules and DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["postgresql"] = env.db_url_config(
        os.environ.get("ORCH_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Orchestrator ---------------------------------------------------------------------

ORCH_BROKER = env_choice("ORCH_BROKER", "orm", ("orm", "redis"))
REDIS_URL = _raw("REDIS_URL", "redis://127.0.0.1:6379/0")
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL must be a redis:// URL, got {REDIS_URL!r}")
ORCH_WORKERS = int(env_number("ORCH_WORKERS", os.cpu_count() or 2, minimum=1, whole=True))
ORCH_POLL = env_number("ORCH_POLL", 0.2, minimum=0.01)
ORCH_CLUSTER_NAME = _raw("ORCH_CLUSTER_NAME", "orchestrator")

# The app's settings (docs/CONFIGURATION.md), each from the variable of the same name.
ORCH_TASK_TIMEOUT = env_setting("ORCH_TASK_TIMEOUT")
ORCH_MAX_ATTEMPTS = env_setting("ORCH_MAX_ATTEMPTS")
ORCH_RETRY_BACKOFF = env_setting("ORCH_RETRY_BACKOFF")
ORCH_RETRY_BACKOFF_MAX = env_setting("ORCH_RETRY_BACKOFF_MAX")
ORCH_LEASE_SECONDS = env_setting("ORCH_LEASE_SECONDS")
ORCH_REQUEUE_SECONDS = env_setting("ORCH_REQUEUE_SECONDS")
ORCH_TASK_MODULES = env_setting("ORCH_TASK_MODULES")
ORCH_METRICS_TOKEN = env_setting("ORCH_METRICS_TOKEN")
ORCH_WEBHOOK_SECRET = env_setting("ORCH_WEBHOOK_SECRET")
ORCH_WEBHOOK_ALLOWED_HOSTS = env_setting("ORCH_WEBHOOK_ALLOWED_HOSTS")
ORCH_WEBHOOK_MAX_ATTEMPTS = env_setting("ORCH_WEBHOOK_MAX_ATTEMPTS")
ORCH_WEBHOOK_TIMEOUT = env_setting("ORCH_WEBHOOK_TIMEOUT")
ORCH_WEBHOOK_BACKOFF = env_setting("ORCH_WEBHOOK_BACKOFF")
ORCH_WEBHOOK_BACKOFF_MAX = env_setting("ORCH_WEBHOOK_BACKOFF_MAX")

# The engine's django-q2 cluster: its broker, worker processes and job timeouts.
Q_CLUSTER = q_cluster(
    name=ORCH_CLUSTER_NAME,
    workers=ORCH_WORKERS,
    task_timeout=ORCH_TASK_TIMEOUT,
    redis=REDIS_URL if ORCH_BROKER == "redis" else None,
    poll=ORCH_POLL,
)

# django-q2 keeps cluster statistics in the cache, so every process must share it.
if ORCH_BROKER == "redis":
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": ORCH_CLUSTER_NAME,
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "orchestrator_cache",
        }
    }

# --- REST API -----------------------------------------------------------------------------

# Request bodies larger than this are refused with 400 (the API's JSON parser enforces it).
DATA_UPLOAD_MAX_MEMORY_SIZE = int(env_number("ORCH_MAX_BODY_BYTES", 1024 * 1024, minimum=1024, whole=True))

# The app's API declares its own parser, renderers, pagination, filters and error handling;
# these are the site's defaults for DRF views (the browsable API's login among them).
REST_FRAMEWORK = {
    # Token first, so that an anonymous request gets 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# Throttling (off unless set), e.g. ORCH_API_THROTTLE_USER=600/min: counted in the shared cache.
_throttle_rates = {
    scope: rate
    for scope, rate in [("user", _raw("ORCH_API_THROTTLE_USER", "")), ("anon", _raw("ORCH_API_THROTTLE_ANON", ""))]
    if rate
}
for _scope, _rate in _throttle_rates.items():
    _count, _, _period = _rate.partition("/")
    if not _count.isdigit() or _period[:1] not in {"s", "m", "h", "d"}:
        raise ImproperlyConfigured(
            f"ORCH_API_THROTTLE_{_scope.upper()} must look like 100/min (per s, min, hour or day), got {_rate!r}"
        )
if _throttle_rates:
    REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = [
        f"rest_framework.throttling.{'User' if scope == 'user' else 'Anon'}RateThrottle" for scope in _throttle_rates
    ]
    REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = _throttle_rates

SPECTACULAR_SETTINGS = {
    "TITLE": "Workflow orchestrator API",
    "DESCRIPTION": "Start workflows, follow them through their phases, step, retry and cancel them.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI's files come from drf-spectacular-sidecar, served locally: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "StateEnum": "workflow_orchestrator.models.State",
        "PhaseEnum": "workflow_orchestrator.models.Phase",
    },
}

LOGIN_URL = "rest_framework:login"
LOGIN_REDIRECT_URL = "/workflows/"

# --- Internationalisation, static files -----------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Times with seconds (orchestrator_site/formats/en/formats.py); other formats stay Django's.
FORMAT_MODULE_PATH = ["orchestrator_site.formats"]

STATIC_URL = "static/"
# `make serve` collects the static files here (`manage.py collectstatic`); WhiteNoise serves
# them, compressed, when DEBUG is off, and straight from the apps when it is on.
STATIC_ROOT = Path(_raw("DJANGO_STATIC_ROOT", "") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Logging --------------------------------------------------------------------------

LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")).upper()
# text: one readable line per record; json: one JSON object per line, with the engine's
# fields (workflow_id, task_id, attempt, event) where a record has them.
LOG_FORMAT = env_choice("LOG_FORMAT", "text", ("text", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django-q": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}},
}
