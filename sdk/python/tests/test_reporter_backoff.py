"""Reporters cut off by the same outage do not retry in lock-step: their backoff has jitter.
Real reporters post to a real HTTP server that answers 503 and notes when each post arrives."""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent_passport.reporter import ActionReporter

REPORTERS = 30
FLUSH_INTERVAL = 0.05  # backoff steps 0.1, 0.2, 0.4 s


class Unavailable(BaseHTTPRequestHandler):
    arrivals: dict[str, list[float]] = defaultdict(list)

    def do_POST(self) -> None:
        self.arrivals[self.headers["Authorization"]].append(time.monotonic())
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_registry() -> Iterator[tuple[str, dict[str, list[float]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    Unavailable.arrivals = defaultdict(list)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/actions", Unavailable.arrivals
    server.shutdown()
    server.server_close()


def test_reporters_failing_together_retry_at_different_moments(unavailable_registry, tmp_path):
    url, arrivals = unavailable_registry
    reporters = [
        ActionReporter(
            url, f"token-{i}", spill_path=tmp_path / f"spill-{i}", flush_interval=FLUSH_INTERVAL
        )
        for i in range(REPORTERS)
    ]
    for reporter in reporters:
        reporter.record(time.time(), "fs:read", "/workspace/a", None, True, "allowed")
    for reporter in reporters:
        reporter.start()
    # First post at once, then waits in [0.05, 0.1], [0.1, 0.2], [0.2, 0.4] s. Close only once
    # every reporter made its fourth post: close() posts at once, which would cut a wait short.
    deadline = time.monotonic() + 20
    while any(len(arrivals[f"Bearer token-{i}"]) < 4 for i in range(REPORTERS)):
        assert time.monotonic() < deadline, "a reporter did not retry four times"
        time.sleep(0.05)
    for reporter in reporters:
        reporter.close(timeout=5)
    posts = [arrivals[f"Bearer token-{i}"] for i in range(REPORTERS)]
    third_waits = [times[3] - times[2] for times in posts]  # the 0.4 s step
    assert min(third_waits) >= 0.2 - 0.01, third_waits
    quartiles = statistics.quantiles(third_waits, n=4)
    # Without jitter every reporter waits the whole step (0.4 s, a few ms apart); with it the
    # waits spread over its upper half.
    assert quartiles[2] - quartiles[0] >= 0.04, third_waits
    print(
        f"\n{REPORTERS} reporters, third wait (0.4 s step): {min(third_waits):.3f}.."
        f"{max(third_waits):.3f} s, IQR {quartiles[2] - quartiles[0]:.3f} s"
    )
