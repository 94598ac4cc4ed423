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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

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
_POLLED_SNAPSHOT_FIELDS = [SNAPSHOT_EPOCH_FIELD, SNAPSHOT_GENERATION_FIELD, SNAPSHOT_VERSION_FIELD]


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
        client: redis.Redis | None = None,
    ) -> None:
        self.channel = channel or RevocationChannel()
        self.block_ms = block_ms
        self.batch = batch  # stream entries per read
        self.retry_delay = retry_delay
        self._client = client or redis.Redis.from_url(
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

    # -- public -------------------------------------------------------------------------------
    def start(self) -> RevocationWatcher:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="revocation-watcher", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

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
            except SnapshotUnavailable as exc:
                if exc.reason == "unsupported_protocol":  # cannot read it: refuse at once
                    self.last_heard = float("-inf")
                self._problem(f"revocation state unavailable: {exc}", log=True)
                need_load = True
                self._stop.wait(self.retry_delay)
            except (redis.RedisError, OSError) as exc:
                self._problem(f"Redis unreachable ({exc.__class__.__name__}: {exc})", log=True)
                need_load = True
                self._stop.wait(self.retry_delay)
            except Exception:  # never let the watcher die: it is what keeps guards honest
                logger.exception("revocation watcher error; reloading")
                need_load = True
                self._stop.wait(self.retry_delay)

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
            pipe.hmget(keys.heartbeat_key, [HEARTBEAT_EPOCH_FIELD, HEARTBEAT_AT_FIELD])
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
            pipe.hmget(keys.heartbeat_key, [HEARTBEAT_EPOCH_FIELD, HEARTBEAT_AT_FIELD])
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

    def _confirm(self, snapshot_epoch: int, stamp: list, redis_now: tuple, sent_at: float) -> None:
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
