"""Local set-up for the two README commands: ``python -m registry.devserver run|test``.

``run`` makes sure a Redis answers (starting ``redis-server`` on a free port if none does),
migrates, creates the first signing key and a demo admin (printing its login), then runs the
Celery worker (with beat), the revocation heartbeat and the web server on 127.0.0.1:8000 until
Ctrl-C.
``test`` makes sure a Redis answers, then runs pytest with the remaining arguments.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


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


def ensure_redis(url: str) -> tuple[str, subprocess.Popen | None]:
    """Return a Redis URL that answers, and the process we started for it (if any)."""
    if redis_answers(url):
        return url, None
    port = free_port()
    try:
        process = start_redis_server(port, tempfile.mkdtemp(prefix="aps-redis-"))
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


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, check=True)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    os.environ["REDIS_URL"], redis_process = ensure_redis(
        os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    )
    children: list[subprocess.Popen] = [redis_process] if redis_process else []
    address = os.environ.get("RUN_ADDRESS", "127.0.0.1:8000")
    try:
        _manage("migrate", "--noinput", "-v0")
        _manage("collectstatic", "--noinput", "-v0")
        _manage("ensure_signing_key")
        _manage("reconcile_revocations")
        print(f"\nDemo operator (admin role) — sign in at http://{address}/login/ :")
        _manage("create_operator", "demo", "--role", "admin", "--reset")
        python_bin = Path(sys.executable).parent
        children.append(
            subprocess.Popen(
                [
                    str(python_bin / "celery"),
                    "-A",
                    "registry",
                    "worker",
                    "--beat",
                    "--loglevel",
                    "INFO",
                    "--concurrency",
                    "2",
                    "--schedule",
                    str(BASE_DIR / "var" / "celerybeat"),
                ],
                cwd=BASE_DIR,
            )
        )
        # Stamps the revocation heartbeat every second: without it agents fail closed.
        children.append(
            subprocess.Popen([sys.executable, "manage.py", "revocation_heartbeat"], cwd=BASE_DIR)
        )
        children.append(
            subprocess.Popen(
                [
                    str(python_bin / "gunicorn"),
                    "registry.wsgi",
                    "--bind",
                    address,
                    "--workers",
                    "2",
                    "--threads",
                    "4",
                    "--access-logfile",
                    "-",
                ],
                cwd=BASE_DIR,
            )
        )
        print(f"\nServing on http://{address} (API docs: /api/docs/). Ctrl-C stops.\n")
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        sys.exit("a service process exited; stopping the others")
    except KeyboardInterrupt:
        print("\nstopping…")
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def test(pytest_args: list[str]) -> int:
    os.environ["REDIS_URL"], redis_process = ensure_redis(
        os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    )
    try:
        return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=BASE_DIR)
    finally:
        if redis_process:
            redis_process.terminate()


if __name__ == "__main__":
    (BASE_DIR / "var").mkdir(exist_ok=True)
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "run":
        run()
    elif command == "test":
        sys.exit(test(sys.argv[2:]))
    else:
        sys.exit("usage: python -m registry.devserver run|test [pytest args]")
