"""The SDK guard against the real service code and a real Redis: kills, lifts, outages."""

import json
import time

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent_passport.errors import (
    PassportExpired,
    PassportInvalid,
    PassportNotYetValid,
    PassportRevoked,
    RevocationStateStale,
    ScopeDenied,
)
from agent_passport.guard import Guard
from agent_passport.protocol import PROTOCOL_VERSION, RevocationChannel
from killswitch import publisher, services
from tests.killswitch.conftest import wait_until
from tests.passports.test_tokens import sign_with_active_key

pytestmark = pytest.mark.django_db(transaction=True)

SCOPE = ["fs:*:/workspace/**", "tool:python:*", "!net:connect:*:22"]


@pytest.fixture
def passport(issue):
    publisher.reconcile()  # a deployed service has written the snapshot before agents start
    return issue(scope=SCOPE, jurisdiction=["EU"])


@pytest.fixture
def make_guard(pinned_keys, settings, watcher_for):
    guards = []

    def _make(token, watcher=None, **options):
        guard = Guard(
            token,
            keys=pinned_keys,
            issuer=settings.PASSPORT_ISSUER,
            audience=settings.PASSPORT_AUDIENCE,
            watcher=watcher or watcher_for(),
            jurisdiction="DE",
            **options,
        )
        guards.append(guard)
        return guard

    return _make


def kill_agent(agent, reason="crypto miner"):
    return services.revoke(
        target=services.Target("agent", str(agent.pk)), reason=reason, actor=None, source="api"
    )


def refuses(guard) -> bool:
    try:
        guard.check("fs:read:/workspace/data.csv")
    except PassportRevoked:
        return True
    return False


def test_guard_allows_in_scope_and_denies_out_of_scope_with_reasons(passport, make_guard):
    guard = make_guard(passport["token"])
    assert guard.check("fs:write:/workspace/out.txt").allowed
    with pytest.raises(ScopeDenied, match="denied by rule '!net:connect:\\*:22'"):
        guard.check("net:connect:203.0.113.9:22")
    with pytest.raises(ScopeDenied, match="not in the passport's scope"):
        guard.check("proc:exec:xmrig")
    with pytest.raises(ScopeDenied, match="outside the passport's jurisdiction"):
        guard.check("tool:python:run", jurisdiction="US")


def test_decorator_and_context_manager(passport, make_guard):
    guard = make_guard(passport["token"])

    @guard.requires("tool:python:run")
    def allowed():
        return "ran"

    @guard.requires("tool:shell:exec")
    def forbidden():
        raise AssertionError("must not run")

    assert allowed() == "ran"
    with pytest.raises(ScopeDenied):
        forbidden()
    with guard.requires("fs:read:/workspace/a") as decision:
        assert decision.allowed
    with pytest.raises(ScopeDenied), guard.requires("fs:read:/etc/shadow"):
        raise AssertionError("must not run")


def test_guards_started_before_and_after_a_kill_both_refuse(passport, make_guard, agent):
    before = make_guard(passport["token"])
    assert not refuses(before)
    killed_at = time.monotonic()
    kill_agent(agent)
    assert wait_until(lambda: refuses(before), timeout=1.0)
    assert time.monotonic() - killed_at < 1.0
    after = make_guard(passport["token"])
    with pytest.raises(PassportRevoked, match="crypto miner"):
        after.check("fs:read:/workspace/data.csv")


def test_kill_runs_callbacks_and_wakes_wait_for_kill(passport, make_guard, agent):
    guard = make_guard(passport["token"])
    seen = []
    guard.on_kill(seen.append)
    assert guard.wait_for_kill(timeout=0.05) is None
    kill_agent(agent, reason="reverse tunnel")
    entry = guard.wait_for_kill(timeout=2.0)
    assert entry is not None and entry.reason == "reverse tunnel"
    assert wait_until(lambda: len(seen) == 1)
    assert seen[0].target_type == "agent" and guard.killed


@pytest.mark.parametrize("target_kind", ["passport", "fleet", "all"])
def test_passport_fleet_and_global_kills_reach_the_guard(passport, make_guard, target_kind):
    guard = make_guard(passport["token"])
    value = {"passport": passport["jti"], "fleet": "gpu-a", "all": "*"}[target_kind]
    services.revoke(
        target=services.Target(target_kind, value), reason="r", actor=None, source="api"
    )
    assert wait_until(lambda: refuses(guard), timeout=1.0)


def test_kill_of_another_fleet_does_not_stop_the_guard(passport, make_guard, operator):
    from passports.models import Agent

    Agent.objects.create(name="other", fleet="cpu-b", owner=operator)
    guard = make_guard(passport["token"])
    services.revoke(target=services.Target("fleet", "cpu-b"), reason="r", actor=None, source="api")
    time.sleep(0.3)
    assert guard.check("fs:read:/workspace/x").allowed


def test_lifting_restores_the_guard(passport, make_guard, agent):
    guard = make_guard(passport["token"])
    revocation = kill_agent(agent)
    assert wait_until(lambda: refuses(guard))
    services.lift(revocation=revocation, actor=None, reason="cleared")
    assert wait_until(lambda: not refuses(guard))
    assert not guard.killed


def test_passport_signed_by_an_unknown_key_is_rejected(passport, pinned_keys, settings):
    stranger = Ed25519PrivateKey.generate()
    foreign = {"stranger": stranger.public_key()}
    with pytest.raises(PassportInvalid, match="not known"):
        Guard(
            passport["token"],
            keys=foreign,
            issuer=settings.PASSPORT_ISSUER,
            redis_url=settings.REDIS_URL,
        )


def test_expired_passport_is_refused_by_check(issue, make_guard, settings):
    publisher.reconcile()
    settings.PASSPORT_DEFAULT_TTL_SECONDS = 1
    guard = make_guard(issue(ttl_seconds=1)["token"])
    time.sleep(1.1)
    with pytest.raises(PassportExpired):
        guard.check("fs:read:/workspace/x")


def test_an_agent_clock_minutes_slow_can_start_but_expiry_has_no_leeway(passport, make_guard):
    # A passport valid from 4 minutes "in the future" is what an agent whose clock is 4
    # minutes slow sees right after issuance.
    claims, now = passport["claims"], int(time.time())
    slow = {**claims, "iat": now + 240, "nbf": now + 240}
    assert make_guard(sign_with_active_key(slow)).check("fs:write:/workspace/out.txt").allowed
    too_slow = {**claims, "iat": now + 600, "nbf": now + 600}
    with pytest.raises(PassportNotYetValid, match="check this machine's clock"):
        make_guard(sign_with_active_key(too_slow))
    with pytest.raises(PassportExpired):
        make_guard(sign_with_active_key({**claims, "exp": now - 1}))


def test_redis_outage_fails_closed_then_recovers(
    operator, agent, issue, private_redis, make_guard, watcher_for
):
    publisher.reconcile()
    token = issue()["token"]
    guard = make_guard(token, watcher=watcher_for(), max_staleness=0.5)
    assert guard.check("fs:read:/workspace/x").allowed

    private_redis.stop()
    stopped = time.monotonic()
    assert wait_until(lambda: _stale(guard), timeout=2.0)
    assert time.monotonic() - stopped < 0.5 + 0.5 + 0.3

    private_redis.start()  # empty: the service's heartbeat notices and rewrites the snapshot
    assert wait_until(lambda: not _stale(guard), timeout=2.0)


def test_flushall_is_healed_and_nothing_revoked_comes_back(
    agent, issue, private_redis, make_guard, watcher_for
):
    publisher.reconcile()
    token = issue()["token"]
    guard = make_guard(token, watcher=watcher_for(), max_staleness=0.5)
    kill_agent(agent)
    assert wait_until(lambda: refuses(guard))

    redis.Redis.from_url(private_redis.url).flushall()
    time.sleep(0.8)
    with pytest.raises((PassportRevoked, RevocationStateStale)):
        guard.check("fs:read:/workspace/x")
    publisher.reconcile()
    time.sleep(0.3)
    with pytest.raises(PassportRevoked):
        guard.check("fs:read:/workspace/x")
    fresh = make_guard(token, watcher=watcher_for())
    with pytest.raises(PassportRevoked):
        fresh.check("fs:read:/workspace/x")


def test_fail_open_is_explicit_and_logged(
    agent, issue, private_redis, make_guard, watcher_for, caplog
):
    publisher.reconcile()
    guard = make_guard(issue()["token"], watcher=watcher_for(), max_staleness=0.3, fail_open=True)
    assert "FAIL-OPEN" in caplog.text
    private_redis.stop()
    time.sleep(0.8)
    assert guard.check("fs:read:/workspace/x").allowed
    assert "FAIL-OPEN" in caplog.text and "allowing anyway" in caplog.text


def test_malformed_stream_entry_and_snapshot_do_not_kill_the_watcher(
    passport, make_guard, watcher_for, agent, settings, revocation_prefix
):
    watcher = watcher_for(block_ms=50)
    guard = make_guard(passport["token"], watcher=watcher)
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    keys = RevocationChannel(revocation_prefix)
    client.xadd(keys.stream_key, {"entry": "{not json"})
    client.xadd(keys.stream_key, {"entry": json.dumps({"id": "x", "epoch": 1, "kind": "revoke"})})
    time.sleep(0.3)
    assert watcher._thread.is_alive()
    assert guard.check("fs:read:/workspace/x").allowed
    # A corrupted snapshot is distrusted (fail closed) until the service rewrites it.
    client.hset(keys.snapshot_key, "r:999", "garbage")
    client.hset(keys.snapshot_key, "_generation", "tampered")
    assert wait_until(lambda: _stale(guard, max_staleness=0.3), timeout=2.0)
    publisher.reconcile()
    assert wait_until(lambda: not _stale(guard), timeout=2.0)
    kill_agent(agent)
    assert wait_until(lambda: refuses(guard))


def test_a_snapshot_in_an_unknown_protocol_version_is_refused_at_once(
    passport, make_guard, watcher_for, settings, revocation_prefix
):
    guard = make_guard(passport["token"], watcher=watcher_for(block_ms=50), max_staleness=60)
    assert guard.check("fs:read:/workspace/x").allowed
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    keys = RevocationChannel(revocation_prefix)
    client.hset(keys.snapshot_key, mapping={"_v": "2", "_generation": "a-newer-registry"})
    assert wait_until(lambda: _stale(guard), timeout=2.0)  # long before max_staleness
    with pytest.raises(
        RevocationStateStale, match=r"protocol version 2 is not supported \(this SDK knows 1\)"
    ):
        guard.check("fs:read:/workspace/x")
    assert publisher.reconcile()  # the registry writes the version it speaks again
    assert client.hget(keys.snapshot_key, "_v") == str(PROTOCOL_VERSION)
    assert wait_until(lambda: not _stale(guard), timeout=3.0)


def test_a_snapshot_without_a_version_is_read_as_version_1_and_reconcile_adds_it(
    passport, make_guard, watcher_for, settings, revocation_prefix
):
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    keys = RevocationChannel(revocation_prefix)
    client.hdel(keys.snapshot_key, "_v")  # as a registry from before versions wrote it
    guard = make_guard(passport["token"], watcher=watcher_for(block_ms=50))
    assert guard.check("fs:read:/workspace/x").allowed
    assert publisher.reconcile()
    assert client.hget(keys.snapshot_key, "_v") == str(PROTOCOL_VERSION)
    assert not publisher.reconcile()  # written once


def _stale(guard, max_staleness=None) -> bool:
    if max_staleness is not None:
        guard.max_staleness = max_staleness
    try:
        guard.check("fs:read:/workspace/x")
    except RevocationStateStale:
        return True
    return False


def test_every_check_is_reported_with_the_agent_heartbeat(
    passport, make_guard, agent, live_server, tmp_path
):
    from actions.models import ActionEvent
    from agent_passport.reporter import ActionReporter

    reporter = ActionReporter(
        f"{live_server.url}/api/v1/actions", passport["token"], spill_path=tmp_path / "spill"
    ).start()
    guard = make_guard(passport["token"], reporter=reporter)
    guard.check("fs:write:/workspace/out.txt")
    with pytest.raises(ScopeDenied):
        guard.check("proc:exec:xmrig")
    assert reporter.flush(timeout=5)
    revocation = kill_agent(agent)
    assert guard.wait_for_kill(timeout=1.0) is not None
    # The guard sends its heartbeat as soon as it applies the kill (no check needed): the
    # acknowledgement the console shows. The idle heartbeat alone would take up to 2 s.
    assert wait_until(lambda: _epoch_seen(agent) == revocation.epoch, timeout=1.0)
    assert refuses(guard)
    assert reporter.flush(timeout=5)
    reporter.close()
    events = {f"{e.action}:{e.resource}": e for e in ActionEvent.objects.filter(agent=agent)}
    assert events["fs:write:/workspace/out.txt"].decision == "allow"
    assert events["proc:exec:xmrig"].decision == "deny"
    assert "not in the passport's scope" in events["proc:exec:xmrig"].reason
    assert any("crypto miner" in e.reason for e in events.values())
    # The agent acknowledged the kill: the digest it sent is that of the revocations it holds.
    from killswitch.selectors import acknowledgements

    acks = acknowledgements(revocation)
    assert [row.state for row in acks.agents] == ["acknowledged"]


def _epoch_seen(agent):
    agent.refresh_from_db()
    return agent.last_seen_epoch
