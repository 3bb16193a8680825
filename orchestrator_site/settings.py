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


class Env(environ.Env):
    """django-environ's reader, strict: a value that its cast refuses (see the casts below:
    django-environ's own would read "perhaps" as false) stops start-up with an
    ImproperlyConfigured error that names the variable and quotes the value."""

    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except ValueError as refused:
            raise ImproperlyConfigured(
                f"{var} {refused}, got {str(self.ENVIRON.get(var, default)).strip()!r}"
            ) from None


def text(value: str) -> str:
    return value.strip()


def boolean(value: str) -> bool:
    word = value.strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def number(*, minimum: float, whole: bool = False):
    def cast(value: str) -> float:
        try:
            read = int(value) if whole else float(value)
        except ValueError:
            raise ValueError("must be a whole number" if whole else "must be a number") from None
        if read < minimum:
            raise ValueError(f"must be at least {minimum}")
        return read

    return cast


def one_of(*choices: str):
    def cast(value: str) -> str:
        if value.strip().lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value.strip().lower()

    return cast


def items(value: str) -> list[str]:
    """A comma-separated list, each item stripped, empty ones dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def database(url: str) -> dict:
    if url.split("://", 1)[0] not in environ.Env.DB_SCHEMES:
        raise ValueError("must start with a known scheme such as sqlite:// or postgres://")
    try:
        return environ.Env.db_url_config(url.strip())
    except Exception as exc:  # django-environ raises several types for a malformed URL
        raise ValueError(f"is not a valid database URL ({exc})") from None


def redis_url(url: str) -> str:
    if not url.strip().startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis:// URL")
    return url.strip()


def throttle_rate(rate: str) -> str:
    count, _, period = rate.strip().partition("/")
    if rate.strip() and (not count.isdigit() or period[:1] not in {"s", "m", "h", "d"}):
        raise ValueError("must look like 100/min (per s, min, hour or day)")
    return rate.strip()


def env_setting(name: str):
    """The app's setting `name` from the variable of the same name, read as its type and
    bounded by its minimum (workflow_orchestrator.conf); the app's default when unset."""
    setting = APP_SETTINGS[name]
    cast = {list: items, str: text}.get(setting.kind) or number(minimum=setting.minimum, whole=setting.kind is int)
    return env(name, cast=cast, default=setting.default)


# Variables set in the environment win over the file's. A value that starts with $ names
# another variable (django-environ's proxy); write \$ for a literal $.
Env.read_env(BASE_DIR / ".env", overwrite=False)
env = Env()
env.escape_proxy = True

DEBUG = env("DJANGO_DEBUG", cast=boolean, default=True)
SECRET_KEY = env("DJANGO_SECRET_KEY", cast=text, default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
    SECRET_KEY = "insecure-development-key-set-DJANGO_SECRET_KEY-in-production"
# Earlier keys, after a rotation: sessions signed with them stay valid, and the audit log's
# rows and heads signed with them still verify.
SECRET_KEY_FALLBACKS = env("DJANGO_SECRET_KEY_FALLBACKS", cast=items, default=[])
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", cast=items, default=["localhost", "127.0.0.1", "[::1]", "testserver"])

# HTTPS hardening: on by default when DEBUG is off (`manage.py check --deploy` is clean),
# each switch overridable. Behind a TLS-terminating proxy, set DJANGO_BEHIND_PROXY=true so
# that Django trusts its X-Forwarded-Proto header.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env("DJANGO_SECURE_COOKIES", cast=boolean, default=not DEBUG)
SECURE_SSL_REDIRECT = env("DJANGO_SSL_REDIRECT", cast=boolean, default=not DEBUG)
SECURE_HSTS_SECONDS = env("DJANGO_HSTS_SECONDS", cast=number(minimum=0, whole=True), default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env("DJANGO_HSTS_INCLUDE_SUBDOMAINS", cast=boolean, default=not DEBUG)
SECURE_HSTS_PRELOAD = env("DJANGO_HSTS_PRELOAD", cast=boolean, default=not DEBUG)
if env("DJANGO_BEHIND_PROXY", cast=boolean, default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

HOST = env("HOST", cast=text, default="127.0.0.1")
PORT = env("PORT", cast=number(minimum=1, whole=True), default=8000)
# gunicorn worker processes of `make serve` (gunicorn's own variable; its advice: 2 per CPU, plus one).
WEB_CONCURRENCY = env("WEB_CONCURRENCY", cast=number(minimum=1, whole=True), default=2 * (os.cpu_count() or 1) + 1)

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

CONN_MAX_AGE = env("CONN_MAX_AGE", cast=number(minimum=0, whole=True), default=60)
DATABASES = {
    "default": env("DATABASE_URL", cast=database, default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}", parse_default=True)
}
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
        env.str("ORCH_TEST_POSTGRES_URL", default="postgres://postgres@127.0.0.1:5432/test")
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Orchestrator ---------------------------------------------------------------------

ORCH_BROKER = env("ORCH_BROKER", cast=one_of("orm", "redis"), default="orm")
REDIS_URL = env("REDIS_URL", cast=redis_url, default="redis://127.0.0.1:6379/0")
ORCH_WORKERS = env("ORCH_WORKERS", cast=number(minimum=1, whole=True), default=os.cpu_count() or 2)
ORCH_POLL = env("ORCH_POLL", cast=number(minimum=0.01), default=0.2)
ORCH_CLUSTER_NAME = env("ORCH_CLUSTER_NAME", cast=text, default="orchestrator")

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
ORCH_RETENTION_DAYS = env_setting("ORCH_RETENTION_DAYS")

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
DATA_UPLOAD_MAX_MEMORY_SIZE = env("ORCH_MAX_BODY_BYTES", cast=number(minimum=1024, whole=True), default=1024 * 1024)

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
    for scope, rate in [
        ("user", env("ORCH_API_THROTTLE_USER", cast=throttle_rate, default="")),
        ("anon", env("ORCH_API_THROTTLE_ANON", cast=throttle_rate, default="")),
    ]
    if rate
}
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
STATIC_ROOT = Path(env("DJANGO_STATIC_ROOT", cast=text, default="") or BASE_DIR / "staticfiles")
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

LOG_LEVEL = env("LOG_LEVEL", cast=one_of("debug", "info", "warning", "error", "critical"), default="info").upper()
# text: one readable line per record; json: one JSON object per line, with the engine's
# fields (workflow_id, task_id, attempt, event) where a record has them.
LOG_FORMAT = env("LOG_FORMAT", cast=one_of("text", "json"), default="text")
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
