"""The watcher's lifecycle and health (status), and the guard's, against a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

from agent_passport.errors import RevocationStateStale
from agent_passport.guard import Guard
from agent_passport.watcher import RevocationWatcher, WatcherState, WatcherStatus
from conftest import CHANNEL, RedisServer, Registry, wait_until
from test_tokens import HEADER, KEYS, claims, signed


def state_of(watcher: RevocationWatcher) -> WatcherState:
    return watcher.status().state


def test_status_goes_from_off_to_initializing_to_valid_and_back_to_off(redis_server):
    watcher = RevocationWatcher(redis_server.url, channel=CHANNEL)
    assert watcher.status() == WatcherStatus(WatcherState.OFF, "not loaded yet", float("inf"))
    watcher.start()
    assert wait_until(lambda: "no snapshot" in (watcher.status().last_error or ""))
    assert state_of(watcher) is WatcherState.INITIALIZING
    publisher = Registry(redis_server.url, CHANNEL)
    publisher.start()
    try:
        assert wait_until(lambda: state_of(watcher) is WatcherState.VALID)
        status = watcher.status()
        assert status.last_error is None and status.staleness_s < 1.0
    finally:
        publisher.stop()
        watcher.stop()
    assert state_of(watcher) is WatcherState.OFF


def test_redis_killed_then_restarted_is_interrupted_then_valid_again(redis_server, registry):
    with RevocationWatcher(redis_server.url, channel=CHANNEL) as watcher:
        assert wait_until(lambda: state_of(watcher) is WatcherState.VALID)
        redis_server.kill()
        assert wait_until(lambda: state_of(watcher) is WatcherState.INTERRUPTED)
        assert "Redis unreachable" in (watcher.status().last_error or "")
        time.sleep(0.3)
        assert watcher.status().staleness_s >= 0.3  # nothing confirmed during the outage
        redis_server.start()
        assert wait_until(lambda: state_of(watcher) is WatcherState.VALID)
        assert watcher.status().staleness_s < 1.0


def test_stop_closes_the_connection_the_watcher_opened(redis_server, registry):
    before = redis_server.connected_clients()
    with RevocationWatcher(redis_server.url, channel=CHANNEL) as watcher:
        assert wait_until(lambda: state_of(watcher) is WatcherState.VALID)
        assert redis_server.connected_clients() == before + 1
    assert wait_until(lambda: redis_server.connected_clients() == before)


def test_stop_leaves_a_client_passed_in_open(redis_server, registry):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    before = redis_server.connected_clients()
    watcher = RevocationWatcher(channel=CHANNEL, client=client).start()
    assert wait_until(lambda: state_of(watcher) is WatcherState.VALID)
    watcher.stop()
    assert redis_server.connected_clients() == before + 1  # the caller's connection is open
    assert client.ping()
    client.close()


def test_a_stopped_watcher_cannot_be_restarted(redis_server, registry):
    watcher = RevocationWatcher(redis_server.url, channel=CHANNEL).start()
    assert watcher.start() is watcher  # starting a running watcher again is harmless
    watcher.stop()
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        watcher.start()
    assert state_of(watcher) is WatcherState.OFF


def test_retry_delays_must_be_positive_and_ordered():
    with pytest.raises(ValueError, match="retry_delay"):
        RevocationWatcher(retry_delay=1.0, max_retry_delay=0.5)
    with pytest.raises(ValueError, match="retry_delay"):
        RevocationWatcher(retry_delay=0)


def make_guard(server: RedisServer) -> Guard:
    token = signed(HEADER, claims(rev={"stream": f"{CHANNEL.stream_key}"}))
    return Guard(
        token,
        keys=KEYS,
        issuer="https://registry.example",
        redis_url=server.url,
        max_staleness=0.3,
        jurisdiction="DE",
    )


def test_guard_is_a_context_manager_that_stops_the_watcher_it_started(redis_server, registry):
    with make_guard(redis_server) as guard:
        assert guard.check("fs:read", "/workspace/a.csv").allowed
        watcher = guard.watcher
        assert state_of(watcher) is WatcherState.VALID
    assert watcher.status().state is WatcherState.OFF
    time.sleep(0.4)  # past max_staleness: nothing confirms the state any more
    with pytest.raises(RevocationStateStale, match=r"watcher off: stopped"):
        guard.check("fs:read", "/workspace/a.csv")


def test_guard_refusing_as_stale_names_the_watcher_status(redis_server, registry):
    with make_guard(redis_server) as guard:
        redis_server.kill()
        assert wait_until(lambda: state_of(guard.watcher) is WatcherState.INTERRUPTED)
        time.sleep(0.4)
        with pytest.raises(RevocationStateStale, match="watcher interrupted: Redis unreachable"):
            guard.check("fs:read", "/workspace/a.csv")
