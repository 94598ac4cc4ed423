"""The revocation channel under faults (issue 13): guards in processes of their own, checked in
a tight loop, paused with SIGSTOP; real kills through the service; Redis trimmed, restored from
an older copy, or refusing writes. A killed agent's guard must never allow again."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from django.db import transaction

from agent_passport.protocol import STREAM_ENTRY_FIELD, RevocationChannel
from agent_passport.revocations import RevocationEntry, revocations_digest
from killswitch import publisher, services
from killswitch.models import EpochCounter, Revocation
from passports import signing
from passports.models import Agent
from tests.killswitch.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
BASE_DIR = Path(__file__).resolve().parents[2]


class Probe:
    """tests/killswitch/probe_guard.py in a process (group) of its own; collects its outcomes."""

    def __init__(self, token: str, settings, prefix: str, max_staleness: float) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(BASE_DIR),
            "PROBE_TOKEN": token,
            "PROBE_JWKS": json.dumps(signing.jwks()),
            "PROBE_ISSUER": settings.PASSPORT_ISSUER,
            "PROBE_AUDIENCE": settings.PASSPORT_AUDIENCE,
            "PROBE_REDIS": settings.REDIS_URL,
            "PROBE_PREFIX": prefix,
            "PROBE_MAX_STALENESS": str(max_staleness),
        }
        self.process = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "tests" / "killswitch" / "probe_guard.py")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.process.stdout:
            at, outcome = line.split()
            self.lines.append((float(at), outcome))

    def current(self) -> str | None:
        return self.lines[-1][1] if self.lines else None

    def wait_for(self, outcome: str, timeout: float = 5.0) -> bool:
        return wait_until(lambda: self.current() == outcome, timeout=timeout)

    def outcomes_since(self, at: float) -> list[str]:
        return [outcome for when, outcome in self.lines if when >= at]

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> float:
        resumed = time.time()
        os.kill(self.process.pid, signal.SIGCONT)
        return resumed

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def probe(settings, revocation_prefix, pinned_keys):
    """Start probes of guards on the service's Redis and prefix; killed after the test."""
    probes = []

    def _start(token: str, max_staleness: float = 0.5) -> Probe:
        started = Probe(token, settings, revocation_prefix, max_staleness)
        probes.append(started)
        return started

    yield _start
    for started in probes:
        started.close()


@pytest.fixture
def victim(issue, agent, revocation_heartbeat):
    """The passport of the agent the tests kill; the service (heartbeat) is running."""
    publisher.reconcile()
    return issue()["token"]


def kill(agent: Agent, reason: str = "crypto miner") -> Revocation:
    return services.revoke(
        target=services.Target("agent", str(agent.pk)), reason=reason, actor=None, source="api"
    )


def queue_revocations(count: int) -> None:
    """``count`` revocations of fleets no agent belongs to, committed and pushed like any other
    (in bulk: thousands through the API would take minutes)."""
    with transaction.atomic():
        counter, _ = EpochCounter.objects.select_for_update().get_or_create(pk=1)
        first = counter.value + 1
        Revocation.objects.bulk_create(
            Revocation(
                epoch=epoch,
                target_type=Revocation.TargetType.FLEET,
                target_value=f"filler-{epoch}",
                reason="filler",
                source=Revocation.Source.API,
            )
            for epoch in range(first, first + count)
        )
        counter.value += count
        counter.save(update_fields=["value"])
    publisher.push_pending()


def test_a_guard_paused_past_the_stream_cap_never_allows_after_resuming(
    victim, agent, probe, settings, revocation_heartbeat, revocation_prefix
):
    settings.REVOCATION_STREAM_MAXLEN = 100  # production: 100,000; same code path
    guard = probe(victim)
    assert guard.wait_for("allow")
    guard.pause()
    revocation_heartbeat.stop()  # the bulk pushes below are the service's only writer meanwhile
    queue_revocations(1)  # answers the read the guard had pending, so the kill is not in it
    killed = kill(agent)
    queue_revocations(1200)
    revocation_heartbeat.start()
    stream = RevocationChannel(revocation_prefix).stream_key
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    [(_id, first)] = client.xrange(stream, count=1)
    first_epoch = RevocationEntry.parse(first[STREAM_ENTRY_FIELD]).epoch
    assert first_epoch > killed.epoch + 1, "the kill and what followed it must be trimmed"
    time.sleep(0.6)  # longer than max_staleness since the kill

    resumed = guard.resume()
    assert guard.wait_for("revoked", timeout=5.0), guard.lines[-5:]
    time.sleep(0.5)
    assert "allow" not in guard.outcomes_since(resumed)


def test_a_guard_catching_up_on_a_backlog_refuses_until_it_reaches_the_kill(
    victim, agent, probe, revocation_heartbeat
):
    guard = probe(victim)
    assert guard.wait_for("allow")
    guard.pause()
    revocation_heartbeat.stop()  # the bulk push below is the service's only writer meanwhile
    queue_revocations(5000)  # five reads of 1,000 entries before the kill
    kill(agent)
    revocation_heartbeat.start()
    time.sleep(0.6)  # longer than max_staleness since the kill

    resumed = guard.resume()
    assert guard.wait_for("revoked", timeout=10.0), guard.lines[-5:]
    assert "allow" not in guard.outcomes_since(resumed)


def test_restoring_an_older_copy_of_redis_never_lets_a_revoked_agent_through(
    victim, agent, operator, probe, settings, revocation_heartbeat, revocation_prefix
):
    client = redis.Redis.from_url(settings.REDIS_URL)
    running = probe(victim, max_staleness=0.5)
    assert running.wait_for("allow")
    copy = {key: client.dump(key) for key in client.scan_iter(f"{revocation_prefix}:*")}
    time.sleep(0.6)  # the copy's heartbeat stamp is older than max_staleness by now
    killed = kill(agent)
    assert running.wait_for("revoked", timeout=2.0)

    # A failover to a replica that lags: every key back as it was before the kill, and the
    # service's heartbeat (which would heal it) not running.
    revocation_heartbeat.stop()
    restored = time.time()
    for key, value in copy.items():
        client.restore(key, 0, value, replace=True)
    fresh = probe(victim, max_staleness=0.5)
    time.sleep(1.5)
    assert set(running.outcomes_since(restored)) <= {"revoked"} and running.current() == "revoked"
    assert fresh.lines and "allow" not in fresh.outcomes_since(restored)

    # A kill published into the restored copy must not give it a current epoch without the
    # first kill: the publisher notices and rewrites the snapshot from the database.
    other = Agent.objects.create(name="other", fleet="cpu-b", owner=operator)
    kill(other)
    snapshot = RevocationChannel(revocation_prefix).snapshot_key
    assert client.hexists(snapshot, f"r:{killed.pk}")

    revocation_heartbeat.start()
    assert fresh.wait_for("revoked", timeout=3.0), fresh.lines[-5:]
    assert "allow" not in running.outcomes_since(restored) + fresh.outcomes_since(restored)


def test_writes_paused_guards_fail_closed_within_max_staleness(
    private_redis, victim, agent, probe, revocation_heartbeat
):
    publisher.reconcile()
    guard = probe(victim, max_staleness=1.0)
    assert guard.wait_for("allow")
    client = redis.Redis.from_url(private_redis.url)
    client.execute_command("CLIENT", "PAUSE", 4000, "WRITE")
    paused = time.time()
    kill(agent)  # committed; its push waits for Redis and gives up (socket timeout)
    assert guard.wait_for("stale", timeout=3.0), guard.lines[-5:]
    stopped = next(at for at, outcome in guard.lines if at >= paused and outcome != "allow")
    assert stopped - paused <= 1.0 + 0.5
    # Writes resume after 4 s: the heartbeat pushes the pending kill and stamps again.
    assert guard.wait_for("revoked", timeout=6.0), guard.lines[-5:]
    assert "allow" not in guard.outcomes_since(stopped)


def test_acknowledged_only_when_the_digest_matches_what_was_applied(
    victim, agent, operator_api, viewer_api, client
):
    first = kill(agent)
    services.lift(revocation=first, actor=None, reason="false alarm")
    second = kill(agent, reason="again")
    agent_api = client
    agent_api.defaults["HTTP_AUTHORIZATION"] = f"Bearer {victim}"
    url = f"/api/v1/killswitch/{second.pk}/acknowledgements"

    def report(epoch: int, digest: str) -> dict:
        body = {"events": [], "heartbeat": {"epoch": epoch, "digest": digest, "host": "h"}}
        response = agent_api.post("/api/v1/actions", body, content_type="application/json")
        assert response.status_code in (200, 201), response.content
        return viewer_api.get(url).json()

    assert report(first.epoch, revocations_digest([first.pk]))["agents"][0]["state"] == "waiting"
    # The epoch reached but holding nothing: an agent that skipped the kill (trimmed stream,
    # older snapshot) while reporting the highest epoch it saw.
    acks = report(second.epoch, revocations_digest([]))
    assert acks["agents"][0]["state"] == "mismatched"
    assert (acks["acknowledged"], acks["mismatched"]) == (0, 1)
    acks = report(first.epoch, revocations_digest([first.pk]))
    assert acks["agents"][0]["state"] == "mismatched", "a late, older heartbeat changes nothing"
    assert report(second.epoch, revocations_digest([second.pk]))["acknowledged"] == 1
    bad = agent_api.post(
        "/api/v1/actions",
        {"events": [], "heartbeat": {"epoch": 1, "digest": "abc"}},
        content_type="application/json",
    )
    assert bad.status_code == 400 and "digest" in bad.content.decode()
