import signal
import threading
import time
import uuid

import pytest
import redis
from django.db.backends.signals import connection_created
from rest_framework.test import APIClient

from killswitch import publisher
from killswitch.publisher import revocation_channel
from passports.auth import create_api_token
from passports.models import Agent
from passports.roles import Role, assign_role


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped with SIGTERM (``timeout``, CI) still runs the fixtures' teardown: the
    servers they started in process groups of their own would outlive it otherwise."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """SQLite's test flush empties tables with DELETE, which the append-only triggers refuse;
    open their administrator escape hatch for the SQLite test database only."""
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("INSERT INTO actions_audit_maintenance VALUES ('sqlite test flush')")


@pytest.fixture(scope="session", autouse=True)
def celery_queue_of_this_session():
    """Tasks that tests hand to Celery (e.g. a push retried during a Redis outage) go to queues
    of this session's own, removed afterwards: no worker consumes them, and they must not reach
    a running instance's worker."""
    from django.conf import settings

    from registry.celery import app

    prefix = f"aps-test-{uuid.uuid4().hex[:10]}:celery:"
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    yield
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def revocation_prefix(settings) -> str:
    """Each test gets its own Redis key prefix (revocation channel and cache), removed
    afterwards: the real Redis is shared."""
    prefix = f"aps-test-{uuid.uuid4().hex[:10]}"
    settings.REVOCATION_REDIS_PREFIX = prefix
    # Rate-limit and sign-in-throttle counters are per test too (they live in the same Redis).
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": prefix}}
    url = settings.REDIS_URL  # a test may point settings at a private Redis meanwhile
    yield prefix
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def make_user(django_user_model, name: str, role: Role):
    user = django_user_model.objects.create_user(username=name, password="unused-test-password")
    assign_role(user, role)
    return user


def api_client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {create_api_token(user=user)}")
    return client


@pytest.fixture
def operator(django_user_model):
    return make_user(django_user_model, "olivia-operator", Role.OPERATOR)


@pytest.fixture
def viewer(django_user_model):
    return make_user(django_user_model, "victor-viewer", Role.VIEWER)


@pytest.fixture
def admin_user(django_user_model):
    return make_user(django_user_model, "ada-admin", Role.ADMIN)


@pytest.fixture
def operator_api(operator) -> APIClient:
    return api_client_for(operator)


@pytest.fixture
def viewer_api(viewer) -> APIClient:
    return api_client_for(viewer)


@pytest.fixture
def agent(operator) -> Agent:
    return Agent.objects.create(name="trainer-1", fleet="gpu-a", owner=operator, host="10.0.0.5")


STANDARD_SCOPE = ["fs:*:/workspace/**", "tool:python:*", "!net:connect:*:22"]


@pytest.fixture
def issue(operator_api, agent):
    """Issue a passport through the API; returns the 201 response body."""

    def _issue(**overrides):
        body = {"agent": str(agent.id), "scope": STANDARD_SCOPE, "jurisdiction": ["EU"]}
        body.update(overrides)
        response = operator_api.post("/api/v1/passports", body, format="json")
        assert response.status_code == 201, response.content
        return response.json()

    return _issue


HEARTBEAT_INTERVAL = 0.05  # seconds; below every max_staleness the tests use


class RevocationHeartbeat:
    """The service's revocation heartbeat (``manage.py revocation_heartbeat``) in a thread.

    On SQLite's shared-cache in-memory test database a reading connection locks tables against
    other connections' writes ("database table is locked"); the heartbeat's connection reads
    uncommitted instead, so it never makes the test's own writes fail.
    """

    def __init__(self, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        connection_created.connect(self._read_uncommitted, weak=False)

    def _read_uncommitted(self, sender, connection, **kwargs) -> None:
        if connection.vendor == "sqlite" and threading.current_thread() is self._thread:
            connection.cursor().execute("PRAGMA read_uncommitted = 1")

    def start(self) -> None:
        """Start stamping; returns once a stamp is in Redis (as with a deployed service)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=publisher.run_heartbeat, args=(self._stop, self.interval), daemon=True
        )
        self._thread.start()
        key = revocation_channel().heartbeat_key
        deadline = time.monotonic() + 5
        while not publisher.redis_client().exists(key):
            assert time.monotonic() < deadline, "the heartbeat wrote no stamp in 5 s"
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._thread = None

    def close(self) -> None:
        self.stop()
        connection_created.disconnect(self._read_uncommitted)


@pytest.fixture
def revocation_heartbeat(transactional_db, settings):
    """The heartbeat running for the test (guards fail closed without its stamps); it follows
    settings.REDIS_URL as the test changes it. ``stop()``/``start()`` pause the service's side."""
    heartbeat = RevocationHeartbeat()
    heartbeat.start()
    yield heartbeat
    heartbeat.close()
