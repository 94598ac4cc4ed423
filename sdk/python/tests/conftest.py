"""Fixtures of the SDK's own tests: a private redis-server (a real process on loopback, in its own
process group, killed and started again on the same port by outage tests) and the registry's
side of the revocation channel as README's protocol describes it. No Django."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from agent_passport.protocol import (
    HEARTBEAT_AT_FIELD,
    HEARTBEAT_EPOCH_FIELD,
    SNAPSHOT_EPOCH_FIELD,
    SNAPSHOT_GENERATION_FIELD,
    RevocationChannel,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class RedisServer:
    """An empty, non-persistent redis-server on 127.0.0.1, which a test can kill (SIGKILL, like
    a crash) and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [server, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            assert wait_until(self._answers(client), timeout=10), "redis-server did not start"
        finally:
            client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> Callable[[], bool]:
        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        return answers

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def connected_clients(self) -> int:
        """Clients connected besides the one asking."""
        with redis.Redis.from_url(self.url) as client:
            return int(client.info("clients")["connected_clients"]) - 1


class Registry:
    """The registry's side of the channel: a snapshot (epoch 0, no revocations) and a heartbeat
    stamp on Redis's clock every ``interval``, from a thread; after a Redis restart it writes the
    snapshot again, as the service's reconciliation does."""

    def __init__(self, url: str, channel: RevocationChannel, interval: float = 0.05) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5)
        self.channel = channel
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish()
            except redis.RedisError:
                pass  # Redis is down (an outage test): try again at the next beat
            self._stop.wait(self.interval)

    def publish(self) -> None:
        keys = self.channel
        if not self.client.exists(keys.snapshot_key):
            self.client.hset(
                keys.snapshot_key,
                mapping={SNAPSHOT_EPOCH_FIELD: 0, SNAPSHOT_GENERATION_FIELD: "g1"},
            )
        seconds, microseconds = self.client.time()
        at_ms = seconds * 1000 + microseconds // 1000
        self.client.hset(
            keys.heartbeat_key, mapping={HEARTBEAT_EPOCH_FIELD: 0, HEARTBEAT_AT_FIELD: at_ms}
        )


CHANNEL = RevocationChannel("sdk-test")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def registry(redis_server: RedisServer) -> Iterator[Registry]:
    """The registry publishing on the private Redis (snapshot written before the test runs)."""
    publisher = Registry(redis_server.url, CHANNEL)
    publisher.publish()
    publisher.start()
    yield publisher
    publisher.stop()
