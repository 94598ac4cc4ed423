"""The README's run command: it serves, refuses to start twice on one address, never rotates a
running instance's password, and leaves no process, Redis key or temporary folder behind."""

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from django.contrib.auth.hashers import check_password

from registry.devserver import free_port

BASE_DIR = Path(__file__).resolve().parent.parent
MARKER = "APS_RUNTEST"  # set in the environment of the run command: every descendant inherits it


def run_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
        "RUN_ADDRESS": f"127.0.0.1:{port}",
        "REDIS_NAMESPACE": f"aps-runtest-{port}",
        MARKER: str(port),
        **extra,
    }


def start_run(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "registry.devserver", "run"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until_serving(process: subprocess.Popen) -> str:
    output = ""
    deadline = time.monotonic() + 120
    while "Serving on" not in output and time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line or process.poll() is None, output
        output += line
    assert "Serving on" in output, output
    return output


def processes_marked(port: int) -> list[tuple[int, str]]:
    """(session id, command line) of the live processes started by the run command on ``port``."""
    found = []
    needle = f"{MARKER}={port}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                session = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[4])
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((session, command))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def celery_sessions(port: int) -> set[int]:
    return {session for session, command in processes_marked(port) if "celery" in command}


def stop(process: subprocess.Popen, signum: int) -> str:
    process.send_signal(signum)
    rest, _ = process.communicate(timeout=60)
    return rest


def machine_redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


def celery_keys_appear(port: int, timeout: float = 60) -> bool:
    """Whether the worker's keys appear in the instance's namespace. 'Serving on' waits for the
    web server only: the worker declares its queues (and writes its keys) when it is ready."""
    deadline = time.monotonic() + timeout
    while not any(machine_redis().scan_iter(f"aps-runtest-{port}:celery:*")):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def remove_instance_keys(port: int) -> list[bytes]:
    """Delete every Redis key of the run command's namespace; returns what is left (nothing,
    unless a process of it still writes)."""
    client = machine_redis()
    keys = list(client.scan_iter(f"aps-runtest-{port}:*"))
    if keys:
        client.delete(*keys)
    return list(client.scan_iter(f"aps-runtest-{port}:*"))


def stop_if_running(process: subprocess.Popen) -> None:
    """After a failed assertion: stop the run command the way a user would (it stops its
    children); kill it only if that does not work."""
    if process.poll() is None:
        process.terminate()
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def demo_credentials(tmp_path: Path) -> tuple[str, int]:
    """The demo user's password hash and its number of API tokens, read from the database."""
    with sqlite3.connect(tmp_path / "run.sqlite3") as db:
        (user_id, password_hash), *_ = db.execute(
            "SELECT id, password FROM auth_user WHERE username = 'demo'"
        )
        (tokens,), *_ = db.execute(
            "SELECT count(*) FROM passports_apitoken WHERE user_id = ?", (user_id,)
        )
    return password_hash, tokens


def agents_status(base: str, token: str) -> int:
    headers = {"Authorization": f"Token {token}"}
    return requests.get(f"{base}/api/v1/agents", headers=headers, timeout=10).status_code


def test_run_serves_refuses_a_second_copy_and_keeps_the_password(tmp_path):
    port = free_port()
    env = run_env(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    process = start_run(env)
    try:
        output = read_until_serving(process)
        assert requests.get(f"{base}/healthz", timeout=5).ok, "'Serving on' before it serves"
        token = re.search(r"^token:\s+(\S+)$", output, re.M).group(1)
        password = re.search(r"^password:\s+(\S+)$", output, re.M).group(1)
        agent = requests.post(
            f"{base}/api/v1/agents",
            json={"name": "smoke"},
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        )
        assert agent.status_code == 201, agent.text
        workers = celery_sessions(port)
        assert celery_keys_appear(port), "Celery's keys are not in the instance's namespace"

        second = subprocess.run(
            [sys.executable, "-m", "registry.devserver", "run"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = second.stdout + second.stderr
        assert second.returncode != 0 and "already serves on" in said, said
        assert "Serving on" not in said and "Traceback" not in said
        password_hash, tokens = demo_credentials(tmp_path)
        assert check_password(password, password_hash), "the running instance's password changed"
        assert tokens == 1 and agents_status(base, token) == 200
        assert celery_sessions(port) == workers, "the second run started another worker"

        assert "SIGHUP" in stop(process, signal.SIGHUP)
        assert process.returncode == 0
        assert processes_marked(port) == [], "a process outlived the run command"
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, "web server still running"

        # Started again on the same database: the password stays, the token is replaced.
        process = start_run(env)
        output = read_until_serving(process)
        assert re.search(r"^password:\s+\(unchanged; .*--reset", output, re.M), output
        new_token = re.search(r"^token:\s+(\S+)$", output, re.M).group(1)
        assert agents_status(base, new_token) == 200 and agents_status(base, token) == 401
        assert demo_credentials(tmp_path) == (password_hash, 1)
        stop(process, signal.SIGINT)
        assert processes_marked(port) == []
    finally:
        stop_if_running(process)
        left = remove_instance_keys(port)
    assert left == [], "keys written after the run command stopped"


def test_when_one_service_dies_the_rest_stop_and_nothing_is_left(tmp_path):
    port = free_port()
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"  # the run command starts its own Redis
    temp = tmp_path / "tmp"  # the run command's temporary directory: it must stay empty
    temp.mkdir()
    env = run_env(tmp_path, port, REDIS_URL=nothing_there, TMPDIR=str(temp))
    process = start_run(env)
    try:
        output = read_until_serving(process)
        assert "started redis-server" in output
        (web_pid,) = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit()
            and (entry / "cmdline").exists()
            and b"gunicorn" in (entry / "cmdline").read_bytes()
            and f"PPid:\t{process.pid}\n" in (entry / "status").read_text()
        ]
        os.kill(web_pid, signal.SIGKILL)
        rest, _ = process.communicate(timeout=60)
    finally:
        stop_if_running(process)
    assert process.returncode != 0 and "A service process exited" in rest, rest
    assert processes_marked(port) == [], "a process outlived the run command"
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize(
    "command", [["-m", "registry.devserver", "run"], ["manage.py", "check"]], ids=["run", "django"]
)
def test_a_redis_url_without_scheme_is_one_sentence_and_a_failure(tmp_path, command):
    env = run_env(tmp_path, free_port(), REDIS_URL="localhost:6379")
    result = subprocess.run(
        [sys.executable, *command], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    said = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert "Traceback" not in said and len(said.splitlines()) == 1, said
    assert "REDIS_URL 'localhost:6379' is not a Redis URL" in said


def test_killing_the_run_command_outright_still_stops_its_services(tmp_path):
    port = free_port()
    process = start_run(run_env(tmp_path, port))
    try:
        read_until_serving(process)
        process.kill()  # SIGKILL: no chance to stop its children itself
        process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while processes_marked(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_marked(port) == [], "services outlived a killed run command"
    finally:
        stop_if_running(process)
        remove_instance_keys(port)
