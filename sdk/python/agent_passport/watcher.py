"""A background thread that keeps a local copy of the revocation state, following Redis.

Protocol (README, "Kill-switch protocol"): load the snapshot hash, the stream's last entry and
the registry's heartbeat stamp in one transaction, then loop: read ``_epoch``/``_generation`` and
the stamp, and block on the stream for at most ``block_ms``. A missing snapshot, a new
generation, an epoch that went backwards or ahead of what the stream delivered, an entry whose
``prev`` is not the last entry seen (entries were trimmed or lost) or a malformed entry makes the
watcher reload. The applied epoch never goes backwards: an older snapshot is refused as stale.
A snapshot in a protocol version this SDK does not know (``_v``) is refused, and guards refuse
at once. These decisions are the pure functions ``load_snapshot`` and ``follow_poll`` of
:mod:`agent_passport.revocations`, which the conformance vectors drive.

``last_heard`` is the moment (``time.monotonic()``) up to which the state is known current: the
time of the newest heartbeat stamp, counted only once the watcher has applied every epoch that
stamp and the snapshot announce. Guards refuse once it is older than their ``max_staleness``.

Lifecycle: ``start()`` starts the thread (not ``__init__``); ``stop()`` (or leaving a ``with``
block) ends it and closes the Redis connection the watcher opened (never a ``client`` passed in).
A stopped watcher cannot be restarted: make a new one. ``status()`` tells the host how it is
doing. After a failure the watcher retries with exponential backoff and jitter
(``retry_delay`` doubling up to ``max_retry_delay``, each wait a random point in the upper half
of its step), reset by the next good round trip, so agents that lost Redis together do not
reconnect in lock-step.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from agent_passport.backoff import backoff_delay
from agent_passport.protocol import (
    HEARTBEAT_AT_FIELD,
    HEARTBEAT_EPOCH_FIELD,
    SNAPSHOT_EPOCH_FIELD,
    SNAPSHOT_GENERATION_FIELD,
    SNAPSHOT_VERSION_FIELD,
    RevocationChannel,
)
from agent_passport.revocations import (
    Follower,
    RevocationState,
    SnapshotUnavailable,
    follow_poll,
    load_snapshot,
)

logger = logging.getLogger(__name__)

Listener = Callable[[RevocationState], None]


class WatcherState(enum.Enum):
    """Health of a watcher, as the host program sees it (``RevocationWatcher.status()``)."""

    INITIALIZING = "initializing"  # started; the state has not been confirmed current yet
    VALID = "valid"  # the last round trip confirmed the state up to the newest heartbeat stamp
    INTERRUPTED = "interrupted"  # was valid; now failing (Redis, snapshot, stamps) and retrying
    OFF = "off"  # not started, or stopped


@dataclass(frozen=True)
class WatcherStatus:
    """``state``; ``last_error``: why the state is not known current (None when VALID);
    ``staleness_s``: seconds since it was last known current (``inf``: never)."""

    state: WatcherState
    last_error: str | None
    staleness_s: float


_POLLED_SNAPSHOT_FIELDS = [SNAPSHOT_EPOCH_FIELD, SNAPSHOT_GENERATION_FIELD, SNAPSHOT_VERSION_FIELD]
_STAMP_FIELDS = [HEARTBEAT_EPOCH_FIELD, HEARTBEAT_AT_FIELD]  # read by every load and every poll


class RevocationWatcher:
    """Follows the revocation channel. One watcher can serve many guards in a process."""

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        *,
        channel: RevocationChannel | None = None,
        block_ms: int = 100,
        batch: int = 1000,
        retry_delay: float = 0.1,
        max_retry_delay: float = 0.5,
        client: redis.Redis | None = None,
    ) -> None:
        """``redis_url``: where the registry publishes (ignored if ``client`` is given: a
        ``decode_responses=True`` client the caller owns and closes). ``channel``: the key
        prefix (a passport's ``rev`` claim names it). ``block_ms``: longest wait on the stream
        per poll. ``batch``: stream entries per read. ``retry_delay``/``max_retry_delay``: the
        first and the longest backoff step after a failure; keep the longest well below the
        guards' ``max_staleness``, so a recovered Redis is noticed before they refuse for long.
        """
        if not 0 < retry_delay <= max_retry_delay:
            raise ValueError("need 0 < retry_delay <= max_retry_delay")
        self.channel = channel or RevocationChannel()
        self.block_ms = block_ms
        self.batch = batch
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._owns_client = client is None
        self._client: redis.Redis = client or redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=block_ms / 1000 + 1.0,
            decode_responses=True,
        )
        self.state = RevocationState()
        self.last_heard = float("-inf")  # see the module docstring
        self.problem = "not loaded yet"  # why the state is not known current ("" when it is)
        self._follower = Follower()  # the state, generation and stream position
        self._stamp: tuple[str, str] | None = None  # the heartbeat stamp last seen
        self._stamp_at = float("-inf")  # its moment on our monotonic clock
        self._stamp_epoch = 0
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged_problem = ""
        self._failures = 0  # consecutive failed rounds (the backoff step)
        self._was_valid = False  # INTERRUPTED rather than INITIALIZING once it has been VALID

    # -- public -------------------------------------------------------------------------------
    def start(self) -> RevocationWatcher:
        """Start following (once; calling it again while running is harmless)."""
        if self._stop.is_set():
            raise RuntimeError("a stopped RevocationWatcher cannot be restarted; make a new one")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="revocation-watcher", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the Redis connection the watcher opened. Guards that
        use it refuse once the state is older than their ``max_staleness`` (fail closed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.problem = "stopped"
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RevocationWatcher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def status(self) -> WatcherStatus:
        """How the watcher is doing, for the host program to show and alert on."""
        if self._thread is None or self._stop.is_set():
            state = WatcherState.OFF
        elif not self.problem:
            state = WatcherState.VALID
        else:
            state = WatcherState.INTERRUPTED if self._was_valid else WatcherState.INITIALIZING
        return WatcherStatus(state, self.problem or None, self.staleness())

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(state)`` (on the watcher thread) after every change of state."""
        self._listeners.append(listener)

    def wait_until_ready(self, timeout: float = 5.0) -> bool:
        """Block until the first snapshot has loaded."""
        return self._ready.wait(timeout)

    def staleness(self) -> float:
        """Seconds since the state was last known current (see the module docstring)."""
        return time.monotonic() - self.last_heard

    # -- loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        need_load = True
        while not self._stop.is_set():
            try:
                if need_load:
                    self._load()
                    need_load = False
                need_load = not self._follow()
                self._failures = 0  # a good round trip
                continue
            except SnapshotUnavailable as exc:
                if exc.reason == "unsupported_protocol":  # cannot read it: refuse at once
                    self.last_heard = float("-inf")
                self._problem(f"revocation state unavailable: {exc}", log=True)
            except (redis.RedisError, OSError) as exc:
                self._problem(f"Redis unreachable ({exc.__class__.__name__}: {exc})", log=True)
            except Exception as exc:  # never let the watcher die: it is what keeps guards honest
                logger.exception("revocation watcher error; reloading")
                self._problem(f"watcher error ({exc.__class__.__name__}: {exc})")
            need_load = True
            self._failures += 1
            self._stop.wait(self._retry_wait())

    def _retry_wait(self) -> float:
        """The wait before the next attempt after the current run of failures."""
        return backoff_delay(self._failures, first=self.retry_delay, cap=self.max_retry_delay)

    def _problem(self, message: str, *, log: bool = False) -> None:
        """Note why the state is not known current; ``log`` once per distinct outage."""
        self.problem = message
        if log and message != self._logged_problem:
            logger.warning("%s; guards fail closed once the state is stale", message)
            self._logged_problem = message

    def _load(self) -> None:
        keys = self.channel
        sent_at = time.monotonic()
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.snapshot_key)
            pipe.xrevrange(keys.stream_key, count=1)
            pipe.hmget(keys.heartbeat_key, _STAMP_FIELDS)
            pipe.time()
            snapshot, last, stamp, redis_now = pipe.execute()
        follower = load_snapshot(snapshot, last[0] if last else None, self.state.epoch)
        self._follow_to(follower)
        self._confirm(follower.state.epoch, stamp, redis_now, sent_at)
        self._ready.set()

    def _follow(self) -> bool:
        """One poll. Returns False when the state must be reloaded."""
        keys = self.channel
        sent_at = time.monotonic()
        with self._client.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.snapshot_key, _POLLED_SNAPSHOT_FIELDS)
            pipe.hmget(keys.heartbeat_key, _STAMP_FIELDS)
            pipe.time()
            pipe.xread(
                {keys.stream_key: self._follower.last_id}, count=self.batch, block=self.block_ms
            )
            snapshot, stamp, redis_now, streams = pipe.execute()
        messages = [message for _stream, batch in streams or [] for message in batch]
        poll = follow_poll(
            self._follower,
            dict(zip(_POLLED_SNAPSHOT_FIELDS, snapshot, strict=True)),
            messages,
            self.batch,
        )
        self._follow_to(poll.follower)
        if poll.reload == "malformed_entry":
            logger.error("%s; reloading", poll.detail)
        elif poll.reload == "gap":
            logger.warning("%s; reloading the snapshot", poll.detail)
        if poll.reload:
            return False
        self._confirm(int(snapshot[0]), stamp, redis_now, sent_at)
        return True

    def _confirm(
        self, snapshot_epoch: int, stamp: list[Any], redis_now: tuple[Any, ...], sent_at: float
    ) -> None:
        """Advance ``last_heard`` to the newest heartbeat stamp, if every epoch it and the
        snapshot announce has been applied. The stamp's age is measured on Redis's clock
        (``TIME``), so neither the agent's nor the registry's clock matters, and a stamp counts
        once: an unchanged stamp never looks newer."""
        epoch_raw, at_raw = stamp
        if epoch_raw is None or at_raw is None:
            self._problem("no heartbeat stamp from the registry in Redis", log=True)
            return
        if (epoch_raw, at_raw) != self._stamp:
            try:
                stamp_epoch, stamp_ms = int(epoch_raw), int(at_raw)
            except ValueError:
                self._problem(f"malformed heartbeat stamp {stamp!r:.100}", log=True)
                return
            now_ms = int(redis_now[0]) * 1000 + int(redis_now[1]) // 1000
            self._stamp = (epoch_raw, at_raw)
            self._stamp_epoch = stamp_epoch
            self._stamp_at = sent_at - max(0, now_ms - stamp_ms) / 1000
        target = max(snapshot_epoch, self._stamp_epoch)
        if self.state.epoch < target:
            self._problem(f"catching up: epoch {self.state.epoch} applied, {target} committed")
            return
        self.last_heard = self._stamp_at
        self._was_valid = True
        if self._logged_problem:
            logger.warning("revocation channel healthy again (epoch %s)", self.state.epoch)
            self._logged_problem = ""
        self.problem = ""

    def _follow_to(self, follower: Follower) -> None:
        state = follower.state
        changed = state.active != self.state.active
        self._follower = follower
        self.state = state
        if changed:
            for listener in self._listeners:
                try:
                    listener(state)
                except Exception:
                    logger.exception("revocation listener failed")
