"""A test run stopped with SIGTERM (``timeout``, CI) leaves no redis-server behind: the servers
tests start live in process groups of their own, so only the fixtures' teardown stops them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
REGISTRY_TEST = (
    "tests/killswitch/test_faults.py::test_writes_paused_guards_fail_closed_within_max_staleness"
)


def redis_servers(*, parent: int | None = None, pids: list[int] | None = None) -> list[int]:
    """The redis-servers among ``pids``, or those whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"redis-server" not in (entry / "cmdline").read_bytes():
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # gone meanwhile
            continue
        if ppid == parent or (pids is not None and int(entry.name) in pids):
            found.append(int(entry.name))
    return found


def test_sigterm_during_a_test_stops_the_redis_server_it_started():
    # On SQLite (in memory): the nested run's teardown must not drop this run's test database.
    env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", REGISTRY_TEST],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (started := redis_servers(parent=run.pid)):
            assert run.poll() is None, run.stdout.read()
            assert time.monotonic() < deadline, "the test never started its redis-server"
            time.sleep(0.02)
        time.sleep(1)  # into the test's body, which runs for seconds with its server
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    left = redis_servers(pids=started)
    for pid in left:  # stop what the teardown did not, then fail
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"redis-server outlived the interrupted run:\n{output}"
    assert "stopped by signal 15" in output, f"the run was not interrupted:\n{output}"
