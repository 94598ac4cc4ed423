"""The SDK's ActionReporter against a real registry (pytest-django's live server)."""

import json
import logging
import socket
import time
from collections.abc import Callable

import pytest

from actions.models import ActionEvent
from agent_passport.reporter import ActionReporter, default_spill_path
from passports.models import Agent
from passports.services import issue_passport

transactional = pytest.mark.django_db(transaction=True)  # the live server needs real commits


def closed_port_url() -> str:
    """A URL where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1/actions"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class IdRecordingReporter(ActionReporter):
    """Remembers the ids it put on the wire (the network and the registry stay real)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.posted_ids: list[str] = []

    def _post(self, events):
        self.posted_ids.extend(event["id"] for event in events)
        return super()._post(events)


@pytest.fixture
def actions_url(live_server) -> str:
    return f"{live_server.url}/api/v1/actions"


@pytest.fixture
def token(agent, operator) -> str:
    return issue_passport(
        agent=agent,
        scope=["fs:*:/workspace/**"],
        jurisdiction=["EU"],
        ttl_seconds=None,
        issued_by=operator,
    ).token


@pytest.fixture
def make_reporter(tmp_path):
    """Build reporters that spill under tmp_path and are always closed after the test."""
    made: list[ActionReporter] = []

    def _make(url: str, token: str, cls=ActionReporter, **options) -> ActionReporter:
        options.setdefault("spill_path", tmp_path / "spill.jsonl")
        options.setdefault("flush_interval", 0.05)
        options.setdefault("timeout", 5.0)
        reporter = cls(url, token, **options)
        made.append(reporter)
        return reporter

    yield _make
    for reporter in made:
        reporter.close(timeout=5)


def record_many(reporter: ActionReporter, count: int, *, start: int = 0) -> None:
    now = time.time()
    for i in range(start, start + count):
        reporter.record(now, "fs:write", f"/workspace/f{i}", "DE", i % 3 != 0, f"reason {i}")


@transactional
def test_recorded_events_arrive_with_the_reporters_ids(actions_url, token, make_reporter, agent):
    reporter = make_reporter(actions_url, token, cls=IdRecordingReporter).start()
    record_many(reporter, 2500)  # three batches
    reporter.record(time.time(), "net:connect", None, None, False, "denied by !net:connect:*:22")
    assert reporter.flush(timeout=20)

    stored = dict(ActionEvent.objects.values_list("id", "resource"))
    assert len(stored) == 2501
    assert {str(i) for i in stored} == set(reporter.posted_ids)
    assert len(reporter.posted_ids) == 2501, "each event was posted exactly once"
    assert (reporter.sent, reporter.spilled, reporter.dropped) == (2501, 0, 0)
    denied = ActionEvent.objects.get(action="net:connect")
    assert (denied.decision, denied.resource, denied.jurisdiction) == ("deny", "", "")
    assert denied.agent_id == agent.id and denied.fleet == "gpu-a"
    assert ActionEvent.objects.filter(decision="deny").count() == 1 + 834


@transactional
def test_unreachable_registry_spills_then_delivers_exactly_once(
    actions_url, token, make_reporter, tmp_path
):
    spill_path = tmp_path / "spill.jsonl"
    reporter = make_reporter(closed_port_url(), token).start()
    record_many(reporter, 1500)
    wait_until(lambda: reporter.spilled == 1500)
    spilled_lines = spill_path.read_text().splitlines()
    spilled_ids = [json.loads(line)["id"] for line in spilled_lines]
    assert len(set(spilled_ids)) == 1500
    assert ActionEvent.objects.count() == 0 and reporter.sent == 0

    reporter.url = actions_url  # the registry is back
    record_many(reporter, 10, start=1500)
    assert reporter.flush(timeout=20)

    stored_ids = {str(i) for i in ActionEvent.objects.values_list("id", flat=True)}
    assert len(stored_ids) == ActionEvent.objects.count() == 1510
    assert set(spilled_ids) <= stored_ids
    assert (reporter.sent, reporter.spilled, reporter.dropped) == (1510, 0, 0)
    assert spill_path.read_text() == ""

    # A crash after delivery but before the spill file was emptied: a new reporter resends the
    # same lines on start, and the registry stores nothing twice.
    spill_path.write_text("\n".join(spilled_lines) + "\n")
    again = make_reporter(actions_url, token)
    assert again.spilled == 1500
    assert again.flush(timeout=20)
    assert ActionEvent.objects.count() == 1510
    assert (again.sent, again.spilled) == (1500, 0)


@pytest.mark.django_db
def test_record_never_blocks_while_the_registry_is_unreachable(token, make_reporter):
    reporter = make_reporter(closed_port_url(), token, timeout=30.0).start()
    started = time.perf_counter()
    for i in range(10_000):
        reporter.record(1767225600.0, "fs:write", f"/workspace/{i}", "DE", True, "allowed")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"10,000 record() calls took {elapsed:.3f} s"
    assert reporter.dropped == 0


def test_a_full_buffer_drops_and_warns_once(caplog, tmp_path):
    reporter = ActionReporter(
        closed_port_url(), "a.b.c", spill_path=tmp_path / "s.jsonl", max_buffer=5
    )
    with caplog.at_level(logging.WARNING, logger="agent_passport.reporter"):
        for _ in range(8):
            reporter.record(time.time(), "gpu:use", None, None, True, "")
    assert (reporter.buffered, reporter.dropped) == (5, 3)
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1


@transactional
def test_events_the_registry_rejects_are_dropped_not_retried(actions_url, token, make_reporter):
    reporter = make_reporter(actions_url, token).start()
    reporter.record(time.time() + 3600, "fs:write", "/workspace/later", None, True, "")
    reporter.record(time.time(), "fs:write", "/workspace/now", None, True, "")
    assert reporter.flush(timeout=10)
    assert (reporter.sent, reporter.dropped, reporter.spilled) == (1, 1, 0)
    assert list(ActionEvent.objects.values_list("resource", flat=True)) == ["/workspace/now"]


@transactional
def test_idle_reporter_sends_heartbeats(actions_url, token, make_reporter, agent):
    beats = {"epoch": 3}

    def heartbeat() -> dict:
        return {"epoch": beats["epoch"], "host": "trainer-1", "pid": 4242}

    make_reporter(actions_url, token, heartbeat=heartbeat).start()
    wait_until(lambda: Agent.objects.get(pk=agent.pk).last_seen_epoch == 3)
    seen = Agent.objects.get(pk=agent.pk)
    assert seen.last_seen_address == "trainer-1 (127.0.0.1)"
    beats["epoch"] = 4
    wait_until(lambda: Agent.objects.get(pk=agent.pk).last_seen_epoch == 4, timeout=5)
    assert Agent.objects.get(pk=agent.pk).last_seen_at > seen.last_seen_at
    assert ActionEvent.objects.count() == 0


@transactional
def test_large_batches_are_split_and_odd_text_survives(actions_url, token, make_reporter):
    reporter = make_reporter(actions_url, token, cls=IdRecordingReporter).start()
    for i in range(1000):  # about 3 MB of UTF-8: more than Django accepts in one body
        reporter.record(time.time(), "fs:read", f"/data/{i}/" + "é" * 1200, "FR", True, "ü" * 600)
    reporter.record(time.time(), "fs:read", "/data/\udcff.bin", None, True, "")
    assert reporter.flush(timeout=20)
    assert (reporter.sent, reporter.dropped) == (1001, 0)
    assert ActionEvent.objects.count() == 1001 == len(set(reporter.posted_ids))
    longest = ActionEvent.objects.filter(resource__startswith="/data/0/").get()
    assert len(longest.resource) == 1000 and longest.resource.endswith("…")
    assert ActionEvent.objects.filter(resource="/data/\\udcff.bin").exists()


def test_default_spill_path_is_per_passport_and_hides_the_token(tmp_path):
    token = "eyJhbGciOiJFZERTQSJ9.eyJqdGkiOiAiYWJjLTEyMyJ9.c2ln"  # payload {"jti": "abc-123"}
    assert default_spill_path(token).name == "agent-passport-actions-abc-123.jsonl"
    assert "c2ln" not in default_spill_path("x.y.c2ln").name
    reporter = ActionReporter("http://127.0.0.1:1/", token, spill_path=tmp_path / "s")
    assert token not in repr(reporter)
