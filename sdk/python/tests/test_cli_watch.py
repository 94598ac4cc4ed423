"""``agent-passport watch`` prints the watcher's status whenever it changes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from queue import Empty, Queue

from conftest import CHANNEL


def read_until(lines: Queue[str], text: str, timeout: float = 10.0) -> str:
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except Empty:
            raise AssertionError(f"no {text!r} in {seen}") from None
        seen.append(line)
        if text in line:
            return line


def test_watch_prints_the_status_as_it_changes(redis_server, registry):
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_passport", "watch", "--redis", redis_server.url,
         "--prefix", CHANNEL.prefix, "--status-interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: Queue[str] = Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    try:
        read_until(lines, "epoch 0: 0 active revocation(s)")
        assert read_until(lines, "status: ").startswith("status: valid (confirmed current")
        redis_server.kill()
        read_until(lines, "status: interrupted: Redis unreachable")
        redis_server.start()
        read_until(lines, "status: valid")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait(10)


def test_watch_refuses_a_status_interval_that_is_not_positive(capsys):
    from agent_passport.cli import main

    assert main(["watch", "--prefix", "x", "--status-interval", "0"]) == 2
    assert "--status-interval must be a positive" in capsys.readouterr().err
