"""``agent-passport run -- COMMAND``: run a command under a passport, from outside its code.

The supervisor verifies the passport offline and refuses to start when it is revoked, expired,
not yet valid, or the revocation state is not current. It starts COMMAND in its own session and
owns its whole process tree (:mod:`agent_passport.proctree`: a cgroup v2 where one can be
created, else a child subreaper tracking descendants; the mechanism is printed at start). Then it
follows the revocation channel; the decisions are taken on the supervisor's main thread:

- a kill of the passport, its agent, its fleet or every agent: SIGTERM to every process of the
  tree, SIGKILL after ``--grace`` seconds, then the acknowledgement heartbeat (epoch applied and
  ``supervisor.stopped``: processes, sigkilled) and a ``proc:kill`` event are delivered before
  the supervisor exits;
- revocation state not confirmed current for ``--max-staleness`` seconds: ``--on-stale stop``
  (default) stops the tree; ``pause`` freezes it and thaws it once the state is current again
  and nothing was revoked (stops it if something was); ``continue`` only logs, every 5 s;
- passport expiry: a warning 60 s before, the tree stopped at expiry. With ``--renew`` the
  supervisor asks ``POST /api/v1/passports/self/renew`` (the operator must have allowed it:
  ``agent_may_renew``) when a third of the lifetime (at most 120 s) is left; a refusal (403,
  409, 404) is logged once and the tree is stopped at expiry as usual. After a renewal a new
  Guard for the new token follows the same watcher, the reporter posts with the new token, and
  the child's ``AGENT_PASSPORT_TOKEN_FILE`` is rewritten (its ``AGENT_PASSPORT_TOKEN``, an
  environment variable, cannot change).
- SIGINT/SIGTERM to the supervisor: forwarded to every process of the tree; whatever is left
  after ``--grace`` is stopped (SIGTERM, then SIGKILL).
- the command ends by itself: whatever it left behind in the tree is stopped.

The child gets AGENT_PASSPORT_TOKEN, AGENT_PASSPORT_REGISTRY, AGENT_PASSPORT_REDIS and
AGENT_PASSPORT_JURISDICTION (and, with ``--renew``, AGENT_PASSPORT_TOKEN_FILE), so a cooperating
agent can use the in-process guard too. With ``--egress-proxy`` the supervisor also serves an
:class:`~agent_passport.egress.EgressProxy` on 127.0.0.1 (a free port) with the same guard, and
the child gets HTTP_PROXY, HTTPS_PROXY, ALL_PROXY (and the lower-case forms) pointing at it and
an empty NO_PROXY/no_proxy, so every connection that honours them is checked as
``net:connect:HOST:PORT``. Start, exit and kill go to the action log
(``proc:start``, ``proc:exit``, ``proc:kill``).

Exit codes:
    the command's own code when it ends by itself (128+N if a signal N from elsewhere killed it)
    2    usage or input error
    70   stopped: the passport, its agent, its fleet or every agent was killed in the registry
    71   refused to start: passport invalid, revoked, expired or not yet valid, revocation state
         not current, or the requested containment is unavailable
    72   stopped: revocation state stale (``--on-stale stop``)
    73   stopped at passport expiry
    126  the command could not be executed; 127: not found
    128+N  the supervisor got signal N (SIGINT, SIGTERM) and stopped the tree
A command may itself exit with one of these values: stderr and the action log tell which.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from agent_passport.egress import EgressProxy
from agent_passport.errors import PassportError
from agent_passport.guard import Guard
from agent_passport.proctree import CONTAINMENTS, ContainmentError, ProcessTree
from agent_passport.revocations import RevocationEntry
from agent_passport.session import (
    EXIT_EXPIRED,
    EXIT_KILLED,
    EXIT_REFUSED,
    EXIT_STALE,
    JURISDICTION_ENV,
    REDIS_ENV,
    REGISTRY_ENV,
    TOKEN_ENV,
    AgentSession,
    CLIError,
    add_agent_options,
    key_source,
    open_session,
)

logger = logging.getLogger(__name__)

EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

TOKEN_FILE_ENV = "AGENT_PASSPORT_TOKEN_FILE"  # noqa: S105 (a variable name)
ON_STALE = ("stop", "pause", "continue")
TICK = 0.05  # seconds between the main loop's checks (a kill wakes it at once; a signal is
# noticed at the next check: see _install_signals)
EXPIRY_WARNING = 60.0  # seconds before expiry
STALE_LOG_INTERVAL = 5.0  # --on-stale continue logs this often
RENEW_BEFORE = 120.0  # renew at most this long before expiry (and once a third is left)
RENEW_RETRY = 5.0  # seconds between renewal attempts after a failure worth retrying
RENEW_TIMEOUT = 5.0
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds: {text!r}")
    return value


def add_run_options(parser: argparse.ArgumentParser) -> None:
    add_agent_options(parser)
    parser.add_argument(
        "--grace",
        type=_seconds,
        default=2.0,
        help="seconds between SIGTERM and SIGKILL when the tree is stopped (default 2)",
    )
    parser.add_argument(
        "--on-stale",
        choices=ON_STALE,
        default="stop",
        help="when the revocation state is not current for --max-staleness: stop the tree "
        "(default), pause it until it is, or continue (logged)",
    )
    parser.add_argument(
        "--renew",
        action="store_true",
        help="renew the passport through the registry before it expires (if the operator "
        "allowed it: agent_may_renew)",
    )
    parser.add_argument(
        "--egress-proxy",
        action="store_true",
        help="serve an egress proxy on 127.0.0.1 (every connection checked as "
        "net:connect:HOST:PORT) and point the command's HTTP(S)_PROXY/ALL_PROXY at it",
    )
    parser.add_argument(
        "--containment",
        choices=CONTAINMENTS,
        default="auto",
        help="how the process tree is owned: a cgroup v2 if possible (auto), cgroup only, or "
        "a child subreaper tracking descendants",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CLIError("give the command to run after --, e.g. agent-passport run ... -- ./agent")
    try:
        session = open_session(args, ready_timeout=args.max_staleness + 1)
    except PassportError as exc:
        return _refuse(f"the passport is not valid ({exc.reason}): {exc}")
    except requests.RequestException as exc:
        return _refuse(f"cannot fetch the registry's keys to verify the passport: {exc}")
    try:
        return Supervisor(args, session, command).run()
    finally:
        session.close()


def _refuse(sentence: str) -> int:
    _say(f"refusing to start: {sentence}")
    return EXIT_REFUSED


def _say(message: str) -> None:
    """One line on stderr; a closed stderr (its reader died) never stops the supervisor."""
    with contextlib.suppress(OSError, ValueError):
        print(f"agent-passport run: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """One run: the tree, the decisions of the main loop, the heartbeat's ``supervisor``."""

    def __init__(self, args: argparse.Namespace, session: AgentSession, command: list[str]):
        self.args = args
        self.session = session
        self.guard = session.guard
        self.reporter = session.reporter
        self.command = command
        self.program = os.path.basename(command[0])
        self.tree: ProcessTree | None = None
        self.state = "running"
        self.stopped: dict[str, Any] | None = None
        self.wake = threading.Event()
        self.received: int | None = None  # a signal the supervisor got
        self.child_exited = False
        self.token_dir: Path | None = None
        self.renewal: _Renewal | None = None
        self.proxy: EgressProxy | None = None
        self.reporter.heartbeat = self.heartbeat
        self.guard.on_kill(self._woken)

    # -- the heartbeat (C1), read on the reporter's thread --------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        """The guard's heartbeat, plus ``supervisor`` once the tree exists."""
        tree = self.tree
        if tree is None:
            return self.guard.heartbeat()
        return {
            **self.guard.heartbeat(),
            "supervisor": {
                "mechanism": tree.mechanism,
                "child_pid": tree.pid,
                "processes": tree.count(),
                "state": self.state,
                "stopped": self.stopped,
            },
        }

    def _woken(self, _entry: RevocationEntry | None = None) -> None:
        self.wake.set()

    # -- start ----------------------------------------------------------------------------------
    def run(self) -> int:
        refusal = self._refusal()
        if refusal:
            return _refuse(refusal)
        if self.args.egress_proxy:
            try:
                self.proxy = EgressProxy(self.guard).start()
            except OSError as exc:
                return _refuse(f"cannot start the egress proxy: {exc.strerror or exc}")
        try:
            tree = ProcessTree(
                self.command, env=self._child_env(), containment=self.args.containment
            )
        except ContainmentError as exc:
            if self.proxy is not None:
                self.proxy.stop()
            return _refuse(str(exc))
        self.tree = tree
        where = f"cgroup {tree.cgroup}" if tree.cgroup else "subreaper, descendants from /proc"
        previous = self._install_signals()
        try:
            try:
                pid = tree.start()
            except OSError as exc:
                _say(f"cannot execute {self.command[0]}: {exc.strerror or exc}")
                return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
            _say(
                f"passport {self.guard.jti} (agent {self.guard.agent_id}) valid; "
                f"process tree owned by {tree.mechanism} ({where}); {self.program} is pid {pid}"
                + (f"; egress proxy {self.proxy.url}" if self.proxy is not None else "")
            )
            self._record(
                "proc:start",
                True,
                f"started under passport {self.guard.jti}",
                {"argv0": self.command[0], "pid": pid, "mechanism": tree.mechanism},
            )
            if self.args.renew:
                self.renewal = _Renewal(self)
            code = self._loop()
            self._record("proc:exit", True, f"run ended with exit code {code}", {"code": code})
            return code
        finally:
            if tree.pids():
                tree.stop(self.args.grace)
            tree.close()
            if self.proxy is not None:
                self.proxy.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.reporter.heartbeat_now()
            if not self.reporter.flush(5.0):
                _say("could not deliver every event to the registry (kept in the spill file)")
            if self.token_dir is not None:
                shutil.rmtree(self.token_dir, ignore_errors=True)

    def _refusal(self) -> str | None:
        guard = self.guard
        if guard.kill_entry is not None:
            return f"passport {guard.jti} is revoked: {guard.kill_entry.describe()}"
        status = guard.watcher.status()
        if status.staleness_s > guard.max_staleness:
            return (
                f"the revocation state is not current ({status.state.value}: "
                f"{status.last_error}), so a revocation cannot be ruled out"
            )
        return None

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({TOKEN_ENV: self.session.token, REGISTRY_ENV: self.session.registry})
        env[REDIS_ENV] = self.args.redis
        if self.args.jurisdiction:
            env[JURISDICTION_ENV] = self.args.jurisdiction
        if self.proxy is not None:
            for name in PROXY_VARIABLES:
                env[name] = env[name.lower()] = self.proxy.url
            env["NO_PROXY"] = env["no_proxy"] = ""
        if self.args.renew:
            self.token_dir = Path(tempfile.mkdtemp(prefix="agent-passport-run-"))
            env[TOKEN_FILE_ENV] = str(self._write_token(self.session.token))
        return env

    def _write_token(self, token: str) -> Path:
        """Write the token file atomically (0600), for the child to read after a renewal."""
        assert self.token_dir is not None
        path = self.token_dir / "token"
        part = self.token_dir / "token.part"
        descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token + "\n")
        part.replace(path)
        return path

    def _install_signals(self) -> dict[int, Any]:
        """The handlers only set an attribute, and take no lock (not ``self.wake.set()``): a
        handler runs on the main thread between two bytecodes, maybe while that thread holds the
        lock (inside ``wake.wait()``, or inside a handler the next signal interrupted), and would
        wait for it forever. SIGCHLD comes in bursts whenever the tree stops, continues or exits."""

        def received(signum: int, _frame: FrameType | None) -> None:
            self.received = signum

        def child(_signum: int, _frame: FrameType | None) -> None:
            self.child_exited = True

        previous: dict[int, Any] = {}
        for signum, handler in (
            (signal.SIGINT, received),
            (signal.SIGTERM, received),
            (signal.SIGCHLD, child),
        ):
            previous[signum] = signal.signal(signum, handler)
        return previous

    # -- the main loop --------------------------------------------------------------------------
    def _loop(self) -> int:
        assert self.tree is not None
        tree = self.tree
        warned_expiry = False
        stale_logged = -math.inf
        while True:
            self.wake.wait(TICK)
            self.wake.clear()
            renewing = self.renewal is not None and self.renewal.in_flight  # before apply()
            if self.renewal is not None:
                self.renewal.apply()
            entry = self.guard.kill_entry
            # A revocation of this very passport while its renewal is in flight may be the
            # registry superseding it: wait for the answer (RENEW_TIMEOUT at most).
            if entry is not None and not (renewing and entry.target_type == "passport"):
                return self._stop("revoked", entry, EXIT_KILLED, entry.describe())
            if self.received is not None:
                return self._forward(self.received)
            if self.child_exited:
                self.child_exited = False
                tree.reap()
            code = tree.poll()
            if code is not None:
                return self._ended(code)
            remaining = float(self.guard.claims["exp"]) - time.time()
            if remaining <= 0:
                reason = f"passport {self.guard.jti} expired"
                return self._stop("expired", None, EXIT_EXPIRED, reason)
            if remaining <= EXPIRY_WARNING and not warned_expiry:
                warned_expiry = True
                _say(
                    f"passport {self.guard.jti} expires in {remaining:.0f} s; the command is "
                    "stopped then" + ("" if self.args.renew else " (--renew renews it)")
                )
            if self.renewal is not None:
                self.renewal.maybe_start(remaining)
            stale = self.guard.watcher.staleness() > self.guard.max_staleness
            if stale and self.args.on_stale == "stop":
                return self._stop("stale", None, EXIT_STALE, self._stale_reason())
            if stale and self.args.on_stale == "pause" and not tree.paused:
                count = tree.pause()
                self.state = "paused"
                _say(f"{self._stale_reason()}: process tree paused ({count} processes)")
                self.reporter.heartbeat_now()
            elif not stale and tree.paused:
                tree.resume()
                self.state = "running"
                _say("revocation state current again and nothing revoked: process tree resumed")
                self.reporter.heartbeat_now()
            elif stale and self.args.on_stale == "continue":
                if time.monotonic() - stale_logged >= STALE_LOG_INTERVAL:
                    stale_logged = time.monotonic()
                    logger.warning(
                        "%s; --on-stale continue: the command KEEPS RUNNING UNCHECKED",
                        self._stale_reason(),
                    )

    def _stale_reason(self) -> str:
        status = self.guard.watcher.status()
        return (
            f"revocation state not current for {status.staleness_s:.1f} s "
            f"(limit {self.guard.max_staleness:g} s; {status.last_error})"
        )

    def _stop(self, cause: str, entry: RevocationEntry | None, code: int, reason: str) -> int:
        assert self.tree is not None
        _say(f"stopping the process tree: {reason}")
        result = self.tree.stop(self.args.grace)
        epoch = entry.epoch if entry is not None else None
        self.stopped = {
            "epoch": epoch,
            "cause": cause,
            "processes": result.processes,
            "sigkilled": result.sigkilled,
            "at": result.at,
        }
        self.state = "stopped"
        details = {
            "cause": cause,
            "processes": result.processes,
            "sigkilled": result.sigkilled,
            "epoch": epoch,
        }
        self._record("proc:kill", False, f"process tree stopped: {reason}", details)
        self.reporter.heartbeat_now()
        _say(
            f"process tree stopped: {result.processes} processes "
            f"({result.sigkilled} needed SIGKILL after {self.args.grace:g} s)"
        )
        return code

    def _forward(self, signum: int) -> int:
        assert self.tree is not None
        name = signal.Signals(signum).name
        _say(f"got {name}: forwarding it to the process tree")
        self.tree.signal(signum)
        deadline = time.monotonic() + self.args.grace
        while self.tree.pids() and time.monotonic() < deadline:
            time.sleep(TICK)
        if self.tree.pids():
            self.tree.stop(0)
        self.state = "exited"
        return 128 + signum

    def _ended(self, code: int) -> int:
        assert self.tree is not None
        self.state = "exited"
        exit_code = 128 - code if code < 0 else code
        left = self.tree.count()
        if left:
            result = self.tree.stop(self.args.grace)
            _say(
                f"{self.program} exited ({exit_code}); stopped {result.processes} processes "
                "it left behind"
            )
        return exit_code

    def _record(self, action: str, allowed: bool, reason: str, details: Mapping[str, Any]) -> None:
        self.reporter.record(
            time.time(), action, self.program, self.args.jurisdiction, allowed, reason, details
        )


class _Renewal:
    """Self-renewal (``--renew``) on a thread of its own; the main loop applies the result."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.in_flight = False
        self.given_up = False
        self.next_try = -math.inf
        self.result: Guard | None = None
        self._thread: threading.Thread | None = None

    def maybe_start(self, remaining: float) -> None:
        guard = self.supervisor.guard
        lifetime = float(guard.claims["exp"]) - float(guard.claims["nbf"])
        due = remaining <= min(RENEW_BEFORE, lifetime / 3)
        if not due or self.in_flight or self.given_up or time.monotonic() < self.next_try:
            return
        self.in_flight = True
        self._thread = threading.Thread(
            target=self._renew, args=(guard,), name="agent-passport-renew", daemon=True
        )
        self._thread.start()

    def _renew(self, guard: Guard) -> None:
        supervisor = self.supervisor
        url = f"{supervisor.session.registry}/api/v1/passports/self/renew"
        try:
            response = requests.post(
                url,
                json={},
                headers={"Authorization": f"Bearer {guard.token}"},
                timeout=RENEW_TIMEOUT,
            )
            if response.status_code in (403, 404, 409):
                self.given_up = True
                _say(
                    f"passport {guard.jti} not renewed (HTTP {response.status_code}: "
                    f"{_detail(response)}); the command is stopped at expiry"
                )
                return
            if response.status_code != 201:
                raise ValueError(f"HTTP {response.status_code}: {_detail(response)}")
            token = response.json()["token"]
            args = supervisor.args
            self.result = Guard(
                token,
                keys=key_source(args),
                issuer=args.issuer or supervisor.session.registry,
                watcher=guard.watcher,
                jurisdiction=args.jurisdiction,
                reporter=supervisor.reporter,
                max_staleness=args.max_staleness,
            )
        except (requests.RequestException, ValueError, KeyError, TypeError, PassportError) as exc:
            logger.warning("passport renewal failed (%s); retrying in %.0f s", exc, RENEW_RETRY)
            self.next_try = time.monotonic() + RENEW_RETRY
        finally:
            self.in_flight = False
            supervisor.wake.set()

    def apply(self) -> None:
        """Swap in the renewed passport (on the main thread)."""
        guard, self.result = self.result, None
        if guard is None:
            return
        supervisor = self.supervisor
        guard.on_kill(supervisor._woken)
        supervisor.guard = guard
        supervisor.reporter.token = guard.token
        if supervisor.proxy is not None:  # new connections are checked with the new passport
            supervisor.proxy.guard = guard
            guard.on_kill(supervisor.proxy._on_kill)
        if supervisor.token_dir is not None:
            supervisor._write_token(guard.token)
        _say(f"passport renewed: now {guard.jti}, valid until {time.ctime(guard.claims['exp'])}")


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body))[:200] if isinstance(body, dict) else str(body)[:200]
