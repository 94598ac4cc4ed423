"""The guard: checks every action against the passport and the live revocation state.

``check`` never touches the network: it reads the parsed passport, the watcher's local state
and the clock, then hands the outcome to the reporter's in-memory buffer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_passport.errors import (
    PassportExpired,
    PassportNotYetValid,
    PassportRevoked,
    RevocationStateStale,
    ScopeDenied,
)
from agent_passport.protocol import RevocationChannel
from agent_passport.revocations import RevocationEntry, RevocationState
from agent_passport.rules import Decision, Policy
from agent_passport.tokens import CLOCK_SKEW_LEEWAY, KeyLookup, verify_token
from agent_passport.watcher import RevocationWatcher

logger = logging.getLogger(__name__)

KillCallback = Callable[[RevocationEntry], None]
_HOST = socket.gethostname()


class Reporter(Protocol):
    """Everything the guard uses of an action reporter (agent_passport.reporter.ActionReporter
    is one). ``heartbeat``: if None, the guard sets it to its own ``heartbeat`` (the revocation
    epoch and digest it applied); ``heartbeat_now()`` is called (on the watcher thread, so it
    must not block) whenever the revocation state changes; ``record()`` once per check."""

    heartbeat: Callable[[], Mapping[str, Any]] | None

    def heartbeat_now(self) -> None: ...

    def record(
        self,
        at: float,
        action: str,
        resource: str | None,
        jurisdiction: str | None,
        allowed: bool,
        reason: str,
        details: Mapping[str, Any] | None = None,
    ) -> None: ...


class Guard:
    """Holds one verified passport and refuses any action it does not allow.

    ``keys`` is a kid → public key mapping (pinned keys) or a lookup such as JWKSClient.
    ``watcher`` may be shared by many guards; if omitted, one is started on ``redis_url``
    with the channel named in the passport's ``rev`` claim.
    ``max_staleness``: seconds since the revocation state was last known current (the registry's
    heartbeat stamp, every epoch it announces applied) after which checks raise
    RevocationStateStale; keep it above the registry's stamp interval (1 s).
    ``fail_open=True`` turns that into a logged warning instead — only for deliberate,
    documented exceptions.
    ``close()`` (or leaving a ``with`` block) stops the watcher the guard started itself, not
    a shared one, nor the reporter (whose owner closes it).
    """

    def __init__(
        self,
        token: str,
        *,
        keys: KeyLookup | Mapping[str, Ed25519PublicKey],
        issuer: str,
        audience: str = "agent-passport",
        watcher: RevocationWatcher | None = None,
        redis_url: str | None = None,
        max_staleness: float = 2.0,
        fail_open: bool = False,
        jurisdiction: str | None = None,
        reporter: Reporter | None = None,
        ready_timeout: float = 5.0,
    ) -> None:
        self.claims: dict[str, Any] = verify_token(token, keys, issuer=issuer, audience=audience)
        self.token = token
        self.policy = Policy.from_claims(self.claims)
        self.jti: str = self.claims["jti"]
        self.agent_id: str = self.claims["sub"]
        self.fleet: str | None = self.claims.get("fleet") or None
        self._not_before = float(self.claims["nbf"]) - CLOCK_SKEW_LEEWAY
        self._expires = float(self.claims["exp"])
        self.max_staleness = max_staleness
        self.fail_open = fail_open
        if fail_open:
            logger.warning(
                "guard for agent %s runs FAIL-OPEN: if the revocation channel is lost, actions "
                "continue unchecked against revocations",
                self.agent_id,
            )
        self.jurisdiction = jurisdiction
        self.reporter = reporter
        self._owns_watcher = watcher is None
        if watcher is None:
            if redis_url is None:
                raise ValueError("give either a shared watcher or redis_url")
            channel = RevocationChannel.from_claim(self.claims.get("rev"))
            watcher = RevocationWatcher(redis_url, channel=channel).start()
        self.watcher = watcher
        if reporter is not None and reporter.heartbeat is None:
            # Only now: a reporter already running would call it, and it reads the watcher.
            reporter.heartbeat = self.heartbeat  # report which revocation epoch we have seen
        self._kill_callbacks: list[KillCallback] = []
        self._killed = threading.Event()
        self.kill_entry: RevocationEntry | None = None
        self._last_open_warning = 0.0
        watcher.add_listener(self._on_state)
        if watcher.wait_until_ready(ready_timeout):
            self._on_state(watcher.state)
        else:
            status = watcher.status()
            logger.warning(
                "guard for agent %s starts without revocation state (%s: %s); checks refuse "
                "until it is current",
                self.agent_id,
                status.state.value,
                status.last_error,
            )

    # -- checks -------------------------------------------------------------------------------
    def check(
        self,
        action: str,
        resource: str | None = None,
        jurisdiction: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Allow the action or raise ScopeDenied, PassportRevoked, PassportExpired,
        PassportNotYetValid or RevocationStateStale. Every outcome is reported, with
        ``details`` (a small JSON object, e.g. a tool call's argument names) if given."""
        now = time.time()
        region = jurisdiction if jurisdiction is not None else self.jurisdiction
        try:
            decision = self._decide(now, action, resource, region)
        except Exception as exc:
            self._report(now, action, resource, region, False, str(exc), details)
            raise
        self._report(now, action, resource, region, True, decision.reason, details)
        return decision

    def _decide(
        self, now: float, action: str, resource: str | None, region: str | None
    ) -> Decision:
        if now >= self._expires:
            raise PassportExpired(f"passport {self.jti} expired; ask the registry for a new one")
        if now < self._not_before:
            raise PassportNotYetValid(f"passport {self.jti} is not valid yet")
        watcher = self.watcher
        # last_heard before state: the watcher swaps the state, then confirms it, so the state
        # read second is at least as new as the one last_heard vouches for.
        heard = watcher.last_heard
        blocking = watcher.state.blocking(jti=self.jti, agent=self.agent_id, fleet=self.fleet)
        if blocking is not None:
            raise PassportRevoked(f"{action} refused: {blocking.describe()}")
        staleness = time.monotonic() - heard
        if staleness > self.max_staleness:
            status = watcher.status()
            why = (
                f" (watcher {status.state.value}: {status.last_error})" if status.last_error else ""
            )
            message = (
                f"{action} refused: the revocation state was {_confirmed(staleness)} "
                f"(limit {self.max_staleness:g} s){why}, so revocations cannot be ruled out"
            )
            if not self.fail_open:
                raise RevocationStateStale(message)
            if now - self._last_open_warning > 5:
                logger.warning("FAIL-OPEN: %s; allowing anyway", message)
                self._last_open_warning = now
        decision = self.policy.decide(action, resource, region)
        if not decision.allowed:
            raise ScopeDenied(decision.reason)
        return decision

    def _report(self, *event: Any) -> None:
        if self.reporter is not None:
            self.reporter.record(*event)

    def requires(
        self, action: str, resource: str | None = None, jurisdiction: str | None = None
    ) -> _Requirement:
        """``@guard.requires("tool:shell:exec")`` or ``with guard.requires(...):``."""
        return _Requirement(self, action, resource, jurisdiction)

    # -- kill ---------------------------------------------------------------------------------
    def on_kill(self, callback: KillCallback) -> None:
        """Run ``callback(entry)`` once when this passport is revoked (on the watcher thread)."""
        self._kill_callbacks.append(callback)
        if self.kill_entry is not None:
            callback(self.kill_entry)

    @property
    def killed(self) -> bool:
        return self._killed.is_set()

    def wait_for_kill(self, timeout: float | None = None) -> RevocationEntry | None:
        """Block until this passport is revoked; returns the revocation (None on timeout)."""
        self._killed.wait(timeout)
        return self.kill_entry

    def _on_state(self, state: RevocationState) -> None:
        if self.reporter is not None:
            self.reporter.heartbeat_now()  # tell the registry which epoch we now apply
        blocking = state.blocking(jti=self.jti, agent=self.agent_id, fleet=self.fleet)
        if blocking is None:
            if self._killed.is_set():  # lifted: the agent may run again
                self.kill_entry = None
                self._killed.clear()
            return
        if self._killed.is_set():
            return
        self.kill_entry = blocking
        self._killed.set()
        logger.warning("passport %s stopped: %s", self.jti, blocking.describe())
        for callback in list(self._kill_callbacks):
            try:
                callback(blocking)
            except Exception:
                logger.exception("kill callback failed")

    def heartbeat(self) -> dict[str, Any]:
        """What the reporter sends as this agent's heartbeat: the revocation epoch it applied
        and the digest of the revocations it holds (the registry verifies both)."""
        state = self.watcher.state
        return {"epoch": state.epoch, "digest": state.digest, "host": _HOST, "pid": os.getpid()}

    def close(self) -> None:
        if self._owns_watcher:
            self.watcher.stop()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Requirement(contextlib.ContextDecorator):
    def __init__(
        self, guard: Guard, action: str, resource: str | None, jurisdiction: str | None
    ) -> None:
        self.guard = guard
        self.action = action
        self.resource = resource
        self.jurisdiction = jurisdiction

    def __enter__(self) -> Decision:
        return self.guard.check(self.action, self.resource, self.jurisdiction)

    def __exit__(self, *exc_info: object) -> None:
        return None


def _confirmed(staleness: float) -> str:
    if staleness == float("inf"):
        return "never confirmed current"
    return f"last confirmed current {staleness:.1f} s ago"
