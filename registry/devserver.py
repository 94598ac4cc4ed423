"""Local set-up for the two README commands: ``python -m registry.devserver run|test``.

``run`` refuses if something already serves on its address, makes sure a Redis answers
(starting ``redis-server`` on a free port if none does), migrates, creates the first signing key
and the demo admin (printing its login), then runs the Celery worker (with beat), the revocation
heartbeat and the web server until Ctrl-C, SIGTERM or SIGHUP, or until one of them dies. Each
child runs in its own process group, and stopping means the whole group: SIGTERM, then SIGKILL
after a timeout.
``test`` makes sure a Redis answers, then runs pytest with the remaining arguments.
"""

import ctypes
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

BASE_DIR = Path(__file__).resolve().parent.parent


def witness_file() -> Path:
    """Where ``make run`` keeps the tree heads of its log: next to an SQLite database (so it goes
    with it: a fresh database must not meet the heads of a deleted one), else under var/."""
    url = os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite:///"))
        database = database if database.is_absolute() else BASE_DIR / database
        return database.with_name(database.name + ".heads.jsonl")
    return BASE_DIR / "var" / f"heads-{hashlib.sha256(url.encode()).hexdigest()[:8]}.jsonl"


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STOP_TIMEOUT_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis_server(
    port: int, workdir: str | os.PathLike[str], *, timeout: float = 10.0, **popen_options
) -> subprocess.Popen:
    """Start an empty, non-persistent redis-server on 127.0.0.1:``port`` and wait for PING.

    Raises RuntimeError if it is not installed or does not answer within ``timeout``.
    """
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError(
            "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
        )
    process = subprocess.Popen(
        [
            server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        **popen_options,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if redis_answers(url, timeout=0.2):
            return process
        time.sleep(0.005)
    process.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


def _terminate_with_parent() -> None:
    """In the child, before exec: get SIGTERM if this command is killed outright (SIGKILL),
    when it cannot stop its children itself (Linux only)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# Popen options of every process the run command starts: its own process group, and SIGTERM
# if the run command itself is killed outright.
OWN_GROUP: dict[str, Any] = {
    "start_new_session": True,
    "preexec_fn": _terminate_with_parent if sys.platform == "linux" else None,
}


def check_redis_url(url: str) -> None:
    """Exit with one sentence if ``url`` is not a Redis URL at all (e.g. no scheme)."""
    try:
        redis.ConnectionPool.from_url(url)
    except ValueError as exc:
        sys.exit(f"REDIS_URL {url!r} is not a Redis URL: {exc}")


def ensure_redis(url: str) -> tuple[str, subprocess.Popen | None]:
    """Return a Redis URL that answers, and the process we started for it (if any).

    The process we start leads its own process group; stop it with :func:`stop_group`.
    """
    check_redis_url(url)
    if redis_answers(url):
        return url, None
    port = free_port()
    try:
        # Non-persistent: it writes nothing, so it needs no directory of its own.
        process = start_redis_server(port, tempfile.gettempdir(), **OWN_GROUP)
    except RuntimeError as exc:
        sys.exit(
            f"No Redis answers at {url} and none could be started here ({exc}).\n"
            "Set REDIS_URL to a running Redis, then run this command again."
        )
    parts = urlsplit(url)
    local_url = urlunsplit(
        (parts.scheme or "redis", f"127.0.0.1:{port}", parts.path or "/0", "", "")
    )
    print(f"No Redis answered at {url}; started redis-server at {local_url}")
    return local_url, process


def _group_alive(process: subprocess.Popen) -> bool:
    """Whether the process, or anything left in the process group it leads, still runs."""
    if process.poll() is None:
        return True
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def stop_groups(processes: list[subprocess.Popen], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM every process group (each led by one of ``processes``), SIGKILL what remains
    after ``timeout``, and wait until every group is empty."""
    for process in reversed(processes):
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_group_alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in processes:
        if _group_alive(process):
            print(f"process group {process.pid} ignored SIGTERM; killing it", file=sys.stderr)
            _signal_group(process, signal.SIGKILL)
    for process in processes:
        process.wait()
        while _group_alive(process):
            time.sleep(0.05)


def address_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        sys.exit(f"RUN_ADDRESS {address!r} must be HOST:PORT, e.g. 127.0.0.1:8000")
    return host, int(port)


def _manage(*args: str) -> None:
    if subprocess.call([sys.executable, "manage.py", *args], cwd=BASE_DIR) != 0:
        sys.exit(f"`manage.py {args[0]}` failed (see above); nothing was started.")


class _Stop(Exception):
    """Raised by the SIGINT/SIGTERM/SIGHUP handler: stop everything and exit."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _start(args: list[str]) -> subprocess.Popen:
    """Start a service process in a session (and process group) of its own."""
    return subprocess.Popen(args, cwd=BASE_DIR, **OWN_GROUP)


def _wait_until_serving(address: str, children: list[subprocess.Popen]) -> bool:
    """Poll /healthz until it answers; False if a child died or it took too long."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline and all(c.poll() is None for c in children):
        try:
            with urllib.request.urlopen(f"http://{address}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def _start_services(address: str, children: list[subprocess.Popen]) -> None:
    """Start the Celery worker (with beat; no banner, warnings and errors only), the revocation
    heartbeat (without its stamp every agent fails closed) and the web server."""
    python_bin = Path(sys.executable).parent
    worker = [str(python_bin / "celery"), "-A", "registry", "--quiet", "worker", "--beat"]
    worker += ["--loglevel", "WARNING", "--concurrency", "2"]
    web = [str(python_bin / "gunicorn"), "registry.wsgi", "--bind", address]
    web += ["--workers", "2", "--threads", "4", "--access-logfile", "-"]
    heartbeat = [sys.executable, "manage.py", "revocation_heartbeat"]
    for command in (worker, heartbeat, web):
        children.append(_start(command))


def run() -> None:
    address = os.environ.get("RUN_ADDRESS", "127.0.0.1:8000")
    if address_in_use(*_parse_address(address)):
        sys.exit(
            f"Something already serves on {address} (another `make run`?): stop it, "
            "or set RUN_ADDRESS to a free address."
        )
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    children: list[subprocess.Popen] = []
    try:
        os.environ["REDIS_URL"], redis_process = ensure_redis(
            os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
        )
        children += [redis_process] if redis_process else []
        # Tree heads go to an append-only file a verifier can check the log against, and to Redis.
        os.environ.setdefault("AUDIT_WITNESSES", f"file://{witness_file()},redis:")
        _manage("migrate", "--noinput", "-v0")
        _manage("collectstatic", "--noinput", "-v0")
        _manage("ensure_signing_key")
        _manage("reconcile_revocations")
        print(f"\nDemo operator (admin role) — sign in at http://{address}/login/ :")
        _manage("create_operator", "demo", "--role", "admin", "--keep-password")
        _start_services(address, children)
        if not _wait_until_serving(address, children):
            sys.exit(f"The web server did not come up on {address}; stopped.")
        print(f"\nServing on http://{address} (API docs: /api/docs/). Ctrl-C stops.\n", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        sys.exit("A service process exited; stopped the others.")
    except _Stop as stop:
        print(f"\n{stop}: stopping…", flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stop_groups(children)


def test(pytest_args: list[str]) -> int:
    os.environ["REDIS_URL"], redis_process = ensure_redis(
        os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    )
    try:
        return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=BASE_DIR)
    finally:
        if redis_process:
            stop_groups([redis_process])


if __name__ == "__main__":
    (BASE_DIR / "var").mkdir(exist_ok=True)
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "run":
        run()
    elif command == "test":
        sys.exit(test(sys.argv[2:]))
    else:
        sys.exit("usage: python -m registry.devserver run|test [pytest args]")
