"""The real service for benchmarks: database, Redis, gunicorn, Celery, the revocation heartbeat.

Every child process is started in a session of its own (``start_new_session=True``) and stopped
through its own process group (``registry.devserver.stop_groups``), so gunicorn's and Celery's
worker processes go with it and nothing else on the machine is touched.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import requests
from psycopg import sql

from registry.devserver import free_port, start_redis_server, stop_groups

BASE_DIR = Path(__file__).resolve().parent.parent.parent
ERROR_MARKERS = ("Traceback", "ERROR", "CRITICAL", "WORKER TIMEOUT", "Internal Server Error")
AUDIENCE = "agent-passport"
# DRF's throttles keep every request of the window in one cached list, read and rewritten on
# each request, so a huge per-hour rate makes every request slower as the list grows (≈4 ms of
# CPU at 100k entries). A one-second window never limits and keeps that list short.
HIGH_RATE = "100000000/second"

# Every child process started through this module, so a last-resort cleanup can find them all.
CHILDREN: list[subprocess.Popen] = []


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def registry_env(
    *, database_url: str, redis_url: str, prefix: str, issuer: str, **extra: str
) -> dict[str, str]:
    """This process's environment for the service: its database and Redis, keys under
    ``prefix`` (cache under ``<prefix>-cache``), throttles that never limit, quiet logs."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": f"{prefix}-cache",
        "REVOCATION_REDIS_PREFIX": prefix,
        "THROTTLE_USER": HIGH_RATE,
        "PASSPORT_ISSUER": issuer,
        "PASSPORT_AUDIENCE": AUDIENCE,
        "LOG_LEVEL": "WARNING",
        "DEBUG": "false",
        **extra,
    }


# --- database -------------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    engine: str
    version: str
    name: str


def prepare_database(admin_url: str, name: str, fresh: bool, workdir: Path) -> Database:
    """A dedicated PostgreSQL database ``name`` (created if missing), else a temporary SQLite."""
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists and fresh:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                exists = None
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return Database(with_database(admin_url, name), "postgresql", version, name)
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL not reachable ({exc}); falling back to SQLite", file=sys.stderr)
        path = workdir / "bench.sqlite3"
        return Database(f"sqlite:///{path}", "sqlite", "sqlite", str(path))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# --- redis ------------------------------------------------------------------------------------


def redis_url_with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme or "redis", parts.netloc, f"/{db}", parts.query, ""))


def empty_redis_db(url: str) -> int:
    """The highest database index (15..1) holding no keys: a private Celery broker queue."""
    for db in range(15, 0, -1):
        try:
            client = redis.Redis.from_url(redis_url_with_db(url, db), socket_timeout=2)
            if client.dbsize() == 0:
                return db
        except redis.ResponseError:  # databases < 16 on this server
            continue
    raise RuntimeError(f"no empty Redis database on {url} for a private Celery broker")


def delete_keys(url: str, patterns: Iterable[str]) -> int:
    """Delete the keys matching ``patterns`` (SCAN + UNLINK); returns how many."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    deleted = 0
    for pattern in patterns:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    return deleted


def redis_version(url: str) -> str:
    try:
        return redis.Redis.from_url(url).info("server")["redis_version"]
    except redis.RedisError:
        return "?"


class PrivateRedis:
    """A redis-server of our own on a free port (no persistence); can be killed and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> float:
        """Start (empty) and return time.time() at which it first answered PING."""
        self.process = start_redis_server(
            self.port,
            self.dir,
            timeout=timeout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        CHILDREN.append(self.process)
        return time.time()

    def kill(self) -> float:
        """SIGKILL (a crash: no goodbye to clients); returns time.time() once it is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
        return time.time()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# --- processes ----------------------------------------------------------------------------


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def setup_registry(env: dict[str, str], operator: str = "benchks") -> str:
    """Migrate, make sure a signing key exists, and return a fresh operator API token."""
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "ensure_signing_key")
    output = manage(env, "create_operator", operator, "--role", "operator", "--reset")
    for line in output.splitlines():
        if line.startswith("token:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no 'token:' line in create_operator output:\n{output}")


def start_logged(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as log:
        process = subprocess.Popen(
            args,
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    CHILDREN.append(process)
    return process


def stop_group(process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group we created for ``process``; SIGKILL it after ``timeout``."""
    if process is not None:
        stop_groups([process], timeout)


def stop_all_children(timeout: float = 15.0) -> int:
    """Last resort (e.g. after Ctrl-C interrupted a normal stop): stop the process group of
    every child we started that is still running. Returns how many were."""
    alive = [p for p in CHILDREN if p.poll() is None]
    stop_groups(CHILDREN, timeout)
    CHILDREN.clear()
    return len(alive)


def problems_in(path: Path, since: int = 0, until: int | None = None) -> list[str]:
    """Error lines in ``path`` between byte offsets ``since`` and ``until``."""
    data = path.read_bytes() if path.exists() else b""
    text = data[since:until].decode(errors="replace")
    return [line for line in text.splitlines() if any(m in line for m in ERROR_MARKERS)]


def gunicorn_command(port: int, workers: int, threads: int, worker_class: str) -> list[str]:
    """The command line of gunicorn serving ``registry.wsgi`` on 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "registry.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        worker_class,
        "--log-level",
        "warning",
        "--error-logfile",
        "-",
    ]


def wait_healthy(
    process: subprocess.Popen, base_url: str, log_path: Path, timeout: float = 60.0
) -> None:
    """Until gunicorn answers ``/healthz`` with 200; raises if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()[-4000:]}")
        try:
            if requests.get(base_url + "/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn did not answer /healthz:\n{log_path.read_text()}")
        time.sleep(0.1)


@dataclass(frozen=True)
class GunicornConfig:
    worker_class: str
    workers: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> GunicornConfig:
        """``gthread:2x4`` (workers x threads) or ``sync:3`` (workers)."""
        match = re.fullmatch(r"(sync|gthread):(\d+)(?:x(\d+))?", text.strip())
        if not match:
            raise argparse.ArgumentTypeError(f"bad gunicorn config {text!r} (gthread:2x4, sync:3)")
        kind, workers, threads = match.group(1), int(match.group(2)), int(match.group(3) or 1)
        if kind == "sync" and threads != 1:
            raise argparse.ArgumentTypeError("sync workers have no threads (sync:3)")
        return cls(kind, workers, threads)

    @classmethod
    def of(cls, workers: int, threads: int) -> GunicornConfig:
        """gthread if there are threads to run, else sync."""
        return cls("gthread" if threads > 1 else "sync", workers, threads)

    @property
    def name(self) -> str:
        if self.worker_class == "sync":
            return f"sync:{self.workers}"
        return f"gthread:{self.workers}x{self.threads}"

    def describe(self) -> str:
        if self.worker_class == "sync":
            return f"sync, {self.workers} workers"
        return f"gthread, {self.workers} workers x {self.threads} threads"


@dataclass
class Server:
    config: GunicornConfig
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def problems(self) -> list[str]:
        """Error lines the server wrote (tracebacks, ERROR logs, worker timeouts)."""
        return problems_in(self.log_path)


@contextmanager
def gunicorn(
    config: GunicornConfig, env: dict[str, str], workdir: Path, port: int | None = None
) -> Iterator[Server]:
    """gunicorn serving ``registry.wsgi`` (no Celery) on ``port`` (a free one by default),
    healthy when this yields and stopped afterwards."""
    port = port or free_port()
    log_path = workdir / f"gunicorn-{config.name.replace(':', '-')}.log"
    args = gunicorn_command(port, config.workers, config.threads, config.worker_class)
    process = start_logged(args, env, log_path)
    server = Server(config, process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_healthy(process, server.base_url, log_path, timeout=60)
        yield server
    finally:
        stop_group(process)


@dataclass
class Service:
    """gunicorn (web) and a Celery worker with beat, sharing one environment."""

    env: dict[str, str]
    base_url: str
    logs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, workdir: Path, tag: str, *, workers: int = 2, threads: int = 4) -> Service:
        port = urlsplit(self.base_url).port
        bin_dir = Path(sys.executable).parent
        self.logs = {
            "web": workdir / f"{tag}-gunicorn.log",
            "celery": workdir / f"{tag}-celery.log",
            "heartbeat": workdir / f"{tag}-heartbeat.log",
        }
        self.processes["celery"] = start_logged(
            [
                str(bin_dir / "celery"),
                "-A",
                "registry",
                "worker",
                "--beat",
                "--loglevel",
                "INFO",
                "--concurrency",
                "1",
                "--schedule",
                str(workdir / f"{tag}-celerybeat"),
                "--hostname",
                f"bench-{tag}-{os.getpid()}@%h",
            ],
            self.env,
            self.logs["celery"],
        )
        self.processes["heartbeat"] = start_logged(
            [sys.executable, "manage.py", "revocation_heartbeat"], self.env, self.logs["heartbeat"]
        )
        self.processes["web"] = start_logged(
            gunicorn_command(port, workers, threads, "gthread" if threads > 1 else "sync"),
            self.env,
            self.logs["web"],
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /healthz answers and the Celery worker logged that it is ready."""
        deadline = time.monotonic() + timeout
        web_ok = celery_ok = False
        while not (web_ok and celery_ok):
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{self.logs[name].read_text()[-4000:]}")
            if not web_ok:
                try:
                    response = requests.get(self.base_url + "/healthz", timeout=1)
                    web_ok = response.status_code == 200
                except requests.RequestException:
                    pass
            if not celery_ok:
                celery_ok = " ready." in self.logs["celery"].read_text(errors="replace")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"service not ready after {timeout:.0f} s (web {web_ok}, celery {celery_ok})"
                )
            time.sleep(0.1)

    def log_offsets(self) -> dict[str, int]:
        return {name: path.stat().st_size for name, path in self.logs.items() if path.exists()}

    def problems(
        self, since: dict[str, int] | None = None, until: dict[str, int] | None = None
    ) -> dict[str, list[str]]:
        """Error lines per log, optionally only after ``since`` / before ``until`` offsets."""
        return {
            name: problems_in(
                path, (since or {}).get(name, 0), None if until is None else until.get(name)
            )
            for name, path in self.logs.items()
        }

    def stop(self) -> None:
        for name in ("web", "heartbeat", "celery"):
            stop_group(self.processes.pop(name, None))


# --- API client ---------------------------------------------------------------------------


class Api:
    """A thin ``requests`` client for the registry's API with an operator token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.session = self.new_session()

    def post(self, path: str, body: dict, expect: int, session: requests.Session | None = None):
        response = (session or self.session).post(self.base_url + path, json=body, timeout=30)
        if response.status_code != expect:
            raise RuntimeError(
                f"POST {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json()

    def create_agent(self, body: dict, session: requests.Session | None = None) -> str:
        """A new agent (``name``, ``fleet``, ``description``); returns its id."""
        return self.post("/api/v1/agents", body, 201, session)["id"]

    def issue(
        self,
        agent: str,
        scope: list[str],
        jurisdiction: list[str],
        session: requests.Session | None = None,
    ) -> str:
        """A passport for ``agent`` valid for an hour; returns its token."""
        body = {"agent": agent, "scope": scope, "jurisdiction": jurisdiction, "ttl_seconds": 3600}
        return self.post("/api/v1/passports", body, 201, session)["token"]

    def get(self, path: str, params: dict | None = None) -> dict:
        response = self.session.get(self.base_url + path, params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def new_session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        return session
