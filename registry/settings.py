"""Settings for the Agent Passport Registry. Everything comes from the environment (see README)."""

import hashlib
import re
from pathlib import Path

import environ
import redis
from django.core.exceptions import ImproperlyConfigured

from agent_passport.protocol import STREAM_MAXLEN

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# One flag switches on production-only safety (HTTPS cookies, HSTS, no debug).
PRODUCTION = env.bool("PRODUCTION", default=False)
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="insecure-dev-only-secret-key-change-me-in-production")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "passports",
    "killswitch",
    "actions",
    "signals",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "registry.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "registry.middleware.RejectNulCharacters",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "registry.urls"
WSGI_APPLICATION = "registry.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.access.role_context",
                "console.context_processors.kill_banner",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server and the Celery worker write without "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
try:
    redis.ConnectionPool.from_url(REDIS_URL)
except ValueError as exc:
    raise ImproperlyConfigured(f"REDIS_URL {REDIS_URL!r} is not a Redis URL: {exc}") from exc


def _database_namespace(database: dict) -> str:
    """``aps-`` and a hash of where the database lives: instances that share a Redis but not a
    database (two clones, a test run next to ``make run``) never see each other's keys."""
    where = "|".join(str(database.get(key, "")) for key in ("ENGINE", "HOST", "PORT", "NAME"))
    return "aps-" + hashlib.sha256(where.encode()).hexdigest()[:8]


# Every Redis key of this instance starts with "<REDIS_NAMESPACE>:" (README, Configuration).
REDIS_NAMESPACE = env.str("REDIS_NAMESPACE", default=_database_namespace(DATABASES["default"]))
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", REDIS_NAMESPACE):
    raise ImproperlyConfigured(
        f"REDIS_NAMESPACE {REDIS_NAMESPACE!r} must be 1-64 letters, digits, '_', '.' or '-'"
    )
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default=f"{REDIS_NAMESPACE}:cache"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:dashboard"
LOGOUT_REDIRECT_URL = "login"

CSRF_FAILURE_VIEW = "registry.errors.csrf_failure"

# --- Security headers and cookies -------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Strict"
CSRF_COOKIE_SAMESITE = "Strict"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
SECURE_HSTS_SECONDS = 31536000 if PRODUCTION else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if PRODUCTION else None

# --- Passports --------------------------------------------------------------------------------
PASSPORT_ISSUER = env.str("PASSPORT_ISSUER", default="http://127.0.0.1:8000")
PASSPORT_AUDIENCE = env.str("PASSPORT_AUDIENCE", default="agent-passport")
PASSPORT_DEFAULT_TTL_SECONDS = env.int("PASSPORT_DEFAULT_TTL_SECONDS", default=3600)
PASSPORT_MAX_TTL_SECONDS = env.int("PASSPORT_MAX_TTL_SECONDS", default=86400)
# Longest grace period a renewal may give the old passport before guards refuse it.
PASSPORT_RENEW_MAX_GRACE_SECONDS = env.int("PASSPORT_RENEW_MAX_GRACE_SECONDS", default=300)
# How long after its expiry a revoked passport's entry stays on the revocation channel (a guard
# whose clock runs this far behind could otherwise accept it again).
PASSPORT_REVOCATION_RETENTION_SECONDS = env.int(
    "PASSPORT_REVOCATION_RETENTION_SECONDS", default=3600
)
# How long a copy of an agent (a process that posts heartbeats) is remembered after its last one.
AGENT_COPY_RETENTION_SECONDS = env.int("AGENT_COPY_RETENTION_SECONDS", default=7 * 86400)
# Key-encryption key for private signing keys at rest. Any string; a 256-bit key is derived.
KEY_ENCRYPTION_KEY = env.str("KEY_ENCRYPTION_KEY", default="insecure-dev-only-key-encryption-key")
JWKS_CACHE_SECONDS = env.int("JWKS_CACHE_SECONDS", default=300)
REVOCATION_REDIS_PREFIX = env.str("REVOCATION_REDIS_PREFIX", default=REDIS_NAMESPACE)
# How long one kill-rule webhook POST may take (connect and read) before it is retried.
KILL_RULE_WEBHOOK_TIMEOUT_SECONDS = env.float("KILL_RULE_WEBHOOK_TIMEOUT_SECONDS", default=5.0)
# How often the revocation heartbeat (manage.py revocation_heartbeat) stamps Redis; agents fail
# closed after max_staleness (SDK default 2 s) without a new stamp, so keep it well below that.
REVOCATION_HEARTBEAT_SECONDS = env.float("REVOCATION_HEARTBEAT_SECONDS", default=1.0)
# Entries kept in the revocation stream (approximately); agents further behind reload.
REVOCATION_STREAM_MAXLEN = env.int("REVOCATION_STREAM_MAXLEN", default=STREAM_MAXLEN)

if PRODUCTION:
    if DEBUG:
        raise environ.ImproperlyConfigured(
            "DEBUG=true is refused when PRODUCTION=true: debug pages show settings and stack "
            "traces to anyone who can make an error."
        )
    for name, value in (("SECRET_KEY", SECRET_KEY), ("KEY_ENCRYPTION_KEY", KEY_ENCRYPTION_KEY)):
        if value.startswith("insecure-dev-only"):
            raise environ.ImproperlyConfigured(f"{name} must be set when PRODUCTION=true")

# --- REST API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "passports.auth.ApiTokenAuthentication",
        # The console's session reaches read endpoints such as exports; DRF enforces CSRF on it.
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["passports.roles.IsViewer"],
    "DEFAULT_PARSER_CLASSES": ["registry.parsers.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "registry.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "registry.throttling.AnonThrottle",
        "registry.throttling.UserThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("THROTTLE_ANON", default="120/minute"),
        # DRF keeps one timestamp per request in the window: keep windows short and small.
        "user": env.str("THROTTLE_USER", default="2000/minute"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # ?format= is ours (export jsonl/csv), not DRF's renderer override.
    "URL_FORMAT_OVERRIDE": None,
}
# Action-log batches (up to 1,000 events each) per agent.
ACTIONS_RATE_LIMIT = env.str("ACTIONS_RATE_LIMIT", default="600/minute")
# Self-renewals (POST /api/v1/passports/self/renew) per agent.
SELF_RENEW_RATE_LIMIT = env.str("SELF_RENEW_RATE_LIMIT", default="20/minute")
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Passport Registry API",
    "DESCRIPTION": "Issue, verify and revoke signed passports for AI agents.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["passports.roles.IsViewer"],
    "SERVE_AUTHENTICATION": [
        "passports.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
# Queues, bindings and broadcast channels of this instance only (kombu prefixes every key).
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": f"{REDIS_NAMESPACE}:celery:"}
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / "var" / f"celerybeat-{REDIS_NAMESPACE}")
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Signed audit checkpoints and signed tree heads of the transparency log: at most this often.
AUDIT_CHECKPOINT_SECONDS = env.float("AUDIT_CHECKPOINT_SECONDS", default=60.0)
# Where signed tree heads are published outside the database (actions.witnesses): comma-separated
# file:///path.jsonl, http(s)://webhook and redis: (next to the revocation channel).
AUDIT_WITNESSES = env.list("AUDIT_WITNESSES", default=["redis:"])
CELERY_BEAT_SCHEDULE = {
    "expire-passports": {"task": "passports.tasks.expire_passports", "schedule": 60.0},
    "retire-signing-keys": {"task": "passports.tasks.retire_signing_keys", "schedule": 300.0},
    "checkpoint-audit-chains": {
        "task": "actions.tasks.create_checkpoints",
        "schedule": AUDIT_CHECKPOINT_SECONDS,
    },
    "sign-tree-head": {
        "task": "actions.tasks.sign_tree_head",
        "schedule": AUDIT_CHECKPOINT_SECONDS,
    },
    "retire-expired-passport-revocations": {
        "task": "killswitch.tasks.retire_expired_passport_revocations",
        "schedule": 300.0,
    },
    "prune-agent-copies": {"task": "actions.tasks.prune_agent_copies", "schedule": 3600.0},
    "ensure-audit-partitions": {"task": "actions.tasks.ensure_partitions", "schedule": 86400.0},
    "reconcile-revocations": {
        "task": "killswitch.tasks.reconcile_revocations",
        "schedule": env.float("REVOCATION_RECONCILE_SECONDS", default=10.0),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
