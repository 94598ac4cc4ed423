import shutil
import subprocess
import tempfile
import time

import pytest

from agent_passport.protocol import RevocationChannel
from agent_passport.tokens import keys_from_jwks
from agent_passport.watcher import RevocationWatcher
from passports import signing
from registry import redis_connection
from registry.devserver import free_port, start_redis_server


class RedisProcess:
    """A private redis-server that a test may stop, restart and flush."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.gettempdir()  # non-persistent: it writes nothing there
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_redis_server(self.port, self.dir)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_redis(settings):
    """Point the service at a redis-server of this test's own."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the outage tests")
    server = RedisProcess()
    server.start()
    settings.REDIS_URL = server.url
    yield server
    server.stop()
    redis_connection._clients.pop(server.url, None)


@pytest.fixture
def pinned_keys(db):
    signing.active_signing_key()
    return keys_from_jwks(signing.jwks())


@pytest.fixture
def watcher_for(settings, revocation_prefix, revocation_heartbeat):
    """Start a watcher on the service's current Redis and prefix (the service's heartbeat
    running); stopped after the test."""
    started = []

    def _start(**options) -> RevocationWatcher:
        watcher = RevocationWatcher(
            settings.REDIS_URL, channel=RevocationChannel(revocation_prefix), **options
        ).start()
        started.append(watcher)
        return watcher

    yield _start
    for watcher in started:
        watcher.stop()


def wait_until(predicate, timeout: float = 3.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
