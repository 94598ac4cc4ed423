"""The SDK's ActionReporter against a real registry (pytest-django's live server)."""

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from actions.models import ActionEvent
from agent_passport.reporter import DENY_SPACING, ActionReporter, default_spill_path
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


class BatchRecordingReporter(ActionReporter):
    """Remembers the size of each batch it posted (the network and the registry stay real)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def _post(self, events):
        if events:
            self.batches.append(len(events))
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
def test_details_are_stored_with_the_event_and_oversized_details_are_noted(
    actions_url, token, make_reporter
):
    reporter = make_reporter(actions_url, token).start()
    now = time.time()
    reporter.record(now, "tool:files:read", None, None, True, "ok", {"arguments": ["path"]})
    reporter.record(now, "tool:files:write", None, None, False, "no", {"blob": "x" * 5000})
    reporter.record(now, "tool:files:list", None, None, True, "ok", {"nul": "a\x00b"})
    assert reporter.flush(timeout=10)

    details = dict(ActionEvent.objects.values_list("resource", "details"))  # tool:files + read
    assert details["read"] == {"arguments": ["path"]}
    assert "limit 4096" in details["write"]["omitted"]
    assert details["list"] == {"nul": "a\\x00b"}


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
def test_events_the_registry_rejects_are_dropped_and_flush_says_so(
    actions_url, token, make_reporter
):
    reporter = make_reporter(actions_url, token).start()
    reporter.record(-5, "fs:write", "/workspace/before-1970", None, True, "")
    reporter.record(time.time(), "fs:write", "/workspace/now", None, True, "")
    assert reporter.flush(timeout=10) is False, "an event was dropped"
    assert (reporter.sent, reporter.dropped, reporter.spilled) == (1, 1, 0)
    assert list(ActionEvent.objects.values_list("resource", flat=True)) == ["/workspace/now"]
    assert reporter.flush(timeout=10) is True, "nothing was dropped since the last flush"


@transactional
def test_dropped_events_are_counted_on_the_agents_record(actions_url, token, make_reporter, agent):
    reporter = make_reporter(actions_url, token, max_buffer=2)
    record_many(reporter, 5)  # three find the buffer full
    assert reporter.flush(timeout=10) is False
    assert (reporter.sent, reporter.dropped) == (2, 3)
    wait_until(lambda: Agent.objects.get(pk=agent.pk).events_dropped == 3)
    record_many(reporter, 1)
    assert reporter.flush(timeout=10) is True
    assert Agent.objects.get(pk=agent.pk).events_dropped == 3, "each drop is reported once"


@transactional
def test_event_stamped_by_a_clock_minutes_ahead_is_kept(actions_url, token, make_reporter):
    reporter = make_reporter(actions_url, token)
    reporter.record(time.time() + 360, "fs:write", "/workspace/ahead", None, True, "")
    assert reporter.flush(timeout=10) is True
    assert (reporter.sent, reporter.dropped) == (1, 0)
    assert ActionEvent.objects.get().clock_skewed


def spill_line(i: int) -> str:
    event = {"id": str(uuid.uuid4()), "action": "fs:write", "resource": f"/spilled/{i}"}
    return json.dumps({**event, "decision": "deny", "reason": "", "at": time.time()})


@transactional
def test_a_torn_spill_file_loses_only_its_torn_line(actions_url, token, make_reporter, tmp_path):
    spill_path = tmp_path / "spill.jsonl"
    lines = [spill_line(i) for i in range(1500)]
    lines[1200] = '{"id": "not json'  # a malformed line past the first batch
    spill_path.write_text("\n".join(lines) + "\n" + spill_line(1500)[:40])  # cut mid-write
    reporter = make_reporter(closed_port_url(), token).start()
    reporter.record(time.time(), "fs:write", "/workspace/after-the-crash", None, False, "")
    wait_until(lambda: reporter.buffered == 0 and b"after-the-crash" in spill_path.read_bytes())
    last = spill_path.read_bytes().splitlines()[-1]
    assert json.loads(last)["resource"] == "/workspace/after-the-crash", (
        "not glued to the torn line"
    )

    reporter.url = actions_url
    assert reporter.flush(timeout=20) is False, "two lines were lost"
    assert (reporter.sent, reporter.dropped, reporter.spilled) == (1500, 2, 0)
    stored = set(ActionEvent.objects.values_list("resource", flat=True))
    assert stored == {f"/spilled/{i}" for i in range(1500) if i != 1200} | {
        "/workspace/after-the-crash"
    }


def test_a_full_spill_file_keeps_what_it_holds_and_counts_the_rest(caplog, tmp_path):
    spill_path = tmp_path / "spill.jsonl"
    reporter = ActionReporter(
        closed_port_url(), "a.b.c", spill_path=spill_path, max_spill_bytes=20_000
    ).start()
    with caplog.at_level(logging.WARNING, logger="agent_passport.reporter"):
        record_many(reporter, 500)
        wait_until(lambda: reporter.buffered == 0 and reporter.spilled + reporter.dropped == 500)
    reporter.close(timeout=5)
    held = spill_path.read_bytes().splitlines()
    assert 0 < len(held) == reporter.spilled and spill_path.stat().st_size <= 20_000
    assert [json.loads(line)["resource"] for line in held[:3]] == [
        f"/workspace/f{i}" for i in (0, 1, 2)
    ]
    assert reporter.dropped == 500 - len(held)
    assert any("spill file is full" in r.getMessage() for r in caplog.records)


class ScriptedRegistry:
    """A real HTTP/1.1 server on loopback (keep-alive) whose answers a test scripts.

    ``answer(number, body)`` gets the request's number on its connection (1, 2, ...) and its
    JSON body, and returns ``(status, headers, body)``, or None to close the connection without
    answering — what gunicorn does when an idle keep-alive connection times out just as the
    client reuses it.
    """

    def __init__(self, answer: Callable[[int, dict], tuple[int, dict, dict] | None]) -> None:
        self.connections = 0
        self.bodies: list[dict] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else the body waits for the client's delayed ACK
            served = 0

            def setup(self) -> None:
                super().setup()
                registry.connections += 1

            def do_POST(self) -> None:
                self.served += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                registry.bodies.append(body)
                scripted = answer(self.served, body)
                if scripted is None:
                    self.close_connection = True
                    return
                status, headers, document = scripted
                data = json.dumps(document).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/actions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted_registry():
    made: list[ScriptedRegistry] = []

    def _make(answer) -> ScriptedRegistry:
        made.append(ScriptedRegistry(answer))
        return made[-1]

    yield _make
    for registry in made:
        registry.close()


def accepted(body: dict) -> tuple[int, dict, dict]:
    return 200, {}, {"accepted": len(body["events"]), "duplicates": 0, "errors": {}}


def test_a_409_that_says_retry_is_retried(scripted_registry, make_reporter):
    answers = iter([(409, {"Retry-After": "0"}, {"detail": "stored concurrently; retry"})])
    registry = scripted_registry(lambda number, body: next(answers, None) or accepted(body))
    reporter = make_reporter(registry.url, "a.b.c")
    reporter.record(time.time(), "fs:write", "/workspace/a", None, True, "")
    assert reporter.flush(timeout=10) is True
    assert (reporter.sent, reporter.dropped) == (1, 0)
    first, second = (body["events"][0]["id"] for body in registry.bodies)
    assert first == second, "the same event, with its id, was sent again"


def test_keep_alive_connection_closed_by_the_server_is_retried_without_a_warning(
    scripted_registry, make_reporter, caplog
):
    # Every connection serves one request; the second request on it finds it closed.
    registry = scripted_registry(lambda number, body: accepted(body) if number == 1 else None)
    reporter = make_reporter(registry.url, "a.b.c")
    with caplog.at_level(logging.WARNING, logger="agent_passport.reporter"):
        for i in range(3):
            reporter.record(time.time(), "fs:write", f"/workspace/{i}", None, True, "")
            assert reporter.flush(timeout=10) is True
    assert (reporter.sent, reporter.spilled, reporter.dropped) == (3, 0, 0)
    assert registry.connections == 3, "each retry used a fresh connection"
    assert not [r.getMessage() for r in caplog.records]


def test_the_heartbeat_carries_a_supervisors_process_tree(scripted_registry, make_reporter):
    tree = {"mechanism": "cgroup", "child_pid": 7, "processes": 3, "state": "running"}
    beats = iter([{"epoch": 1, "supervisor": tree}, {"epoch": 2, "supervisor": {"x": object()}}])
    registry = scripted_registry(lambda number, body: accepted(body))
    reporter = make_reporter(registry.url, "a.b.c", heartbeat=lambda: next(beats, {}))
    for _ in range(2):
        reporter.record(time.time(), "proc:start", "agent", None, True, "")
        assert reporter.flush(timeout=10) is True
    first, second = (body["heartbeat"] for body in registry.bodies[:2])
    assert first == {"epoch": 1, "supervisor": tree}
    assert second == {"epoch": 2}, "a supervisor object that is not JSON is left out"


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
    reporter.record(time.time(), "fs:read", "/etc/passwd\x00.png", None, False, "nul\x00")
    assert reporter.flush(timeout=20)
    assert (reporter.sent, reporter.dropped) == (1002, 0)
    assert ActionEvent.objects.count() == 1002 == len(set(reporter.posted_ids))
    assert ActionEvent.objects.filter(resource="/etc/passwd\\x00.png", reason="nul\\x00").exists()
    longest = ActionEvent.objects.filter(resource__startswith="/data/0/").get()
    assert len(longest.resource) == 1000 and longest.resource.endswith("…")
    assert ActionEvent.objects.filter(resource="/data/\\udcff.bin").exists()


def idle(reporter: ActionReporter) -> ActionReporter:
    """The reporter, started, past its first cycles: its thread waits for the flush timer."""
    reporter.start()
    assert reporter.flush(timeout=10)
    time.sleep(0.5)  # the cycle flush() asked for may still be running
    return reporter


@transactional
def test_a_deny_is_sent_at_once_while_allows_wait_for_the_timer(actions_url, token, make_reporter):
    reporter = idle(make_reporter(actions_url, token, flush_interval=30))
    reporter.record(time.time(), "fs:read", "/workspace/a", None, True, "allowed")
    time.sleep(1.0)
    assert ActionEvent.objects.count() == 0, "an allow waits for the 30 s timer"

    reporter.record(time.time(), "fs:write", "/etc/passwd", None, False, "not in scope")
    wait_until(lambda: ActionEvent.objects.count() == 2, timeout=5)  # the allow goes with it
    assert sorted(ActionEvent.objects.values_list("decision", flat=True)) == ["allow", "deny"]


@transactional
def test_a_burst_of_denies_goes_out_in_a_few_posts(actions_url, token, make_reporter):
    reporter = idle(
        make_reporter(actions_url, token, cls=BatchRecordingReporter, flush_interval=30)
    )
    now = time.time()
    for i in range(1000):
        reporter.record(now, "fs:write", f"/etc/{i}", None, False, "not in scope")
    wait_until(lambda: reporter.sent == 1000, timeout=10)
    assert ActionEvent.objects.filter(decision="deny").count() == 1000
    assert len(reporter.batches) <= 5, reporter.batches


def test_a_stream_of_denies_is_posted_at_most_every_deny_spacing(scripted_registry, make_reporter):
    # A registry that answers at once, so only the reporter paces the posts.
    registry = scripted_registry(lambda number, body: accepted(body))
    reporter = idle(
        make_reporter(registry.url, "a.b.c", cls=BatchRecordingReporter, flush_interval=30)
    )
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < 1.0:
        reporter.record(time.time(), "fs:write", f"/etc/{elapsed}", None, False, "not in scope")
        time.sleep(0.001)
    wait_until(lambda: reporter.sent == sum(reporter.batches) > 0 and not reporter.buffered)
    # One post per deny would be hundreds; one per DENY_SPACING is at most 1 / 0.1 + 1.
    assert 2 <= len(reporter.batches) <= 1.0 / DENY_SPACING + 3, reporter.batches


def test_a_deny_does_not_cut_the_backoff_short_but_heartbeat_now_does(
    scripted_registry, make_reporter
):
    registry = scripted_registry(lambda number, body: (503, {}, {"detail": "down"}))
    # The first retry waits 2-4 s (two flush intervals, the upper half of the step).
    reporter = make_reporter(registry.url, "a.b.c", flush_interval=2.0)
    reporter.record(time.time(), "fs:read", "/workspace/a", None, True, "allowed")
    reporter.start()
    wait_until(lambda: len(registry.bodies) == 1, timeout=5)
    for i in range(50):
        reporter.record(time.time(), "fs:write", f"/etc/{i}", None, False, "not in scope")
    time.sleep(1.0)
    assert len(registry.bodies) == 1, "the denies waited for the retry"
    wait_until(lambda: reporter.spilled == 51, timeout=5)  # on disk meanwhile

    reporter.heartbeat_now()  # an explicit request still goes at once
    wait_until(lambda: len(registry.bodies) == 2, timeout=0.9)


def test_default_spill_path_is_per_passport_and_hides_the_token(tmp_path):
    token = "eyJhbGciOiJFZERTQSJ9.eyJqdGkiOiAiYWJjLTEyMyJ9.c2ln"  # payload {"jti": "abc-123"}
    assert default_spill_path(token).name == "agent-passport-actions-abc-123.jsonl"
    assert "c2ln" not in default_spill_path("x.y.c2ln").name
    reporter = ActionReporter("http://127.0.0.1:1/", token, spill_path=tmp_path / "s")
    assert token not in repr(reporter)
