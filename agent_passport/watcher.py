"""A background thread that keeps a local copy of the revocation state, following Redis.

Protocol (README, "Kill-switch protocol"): load the snapshot hash and the stream's last id in
one transaction, then loop: read the snapshot's ``_epoch``/``_generation`` and block on the stream
for at most ``block_ms``. A missing snapshot, an epoch that went backwards or jumped past what
the stream delivered, a new generation, or a malformed entry makes the watcher reload. Every
completed round trip with a valid snapshot counts as "heard from Redis" (``last_heard``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from agent_passport.protocol import (
    SNAPSHOT_ENTRY_PREFIX,
    SNAPSHOT_EPOCH_FIELD,
    SNAPSHOT_GENERATION_FIELD,
    STREAM_ENTRY_FIELD,
    RevocationChannel,
)
from agent_passport.revocations import MalformedEntry, RevocationEntry, RevocationState

logger = logging.getLogger(__name__)

Listener = Callable[[RevocationState], None]


class SnapshotUnavailable(Exception):
    """The snapshot is missing or unreadable: the revocation state is unknown."""


class RevocationWatcher:
    """Follows the revocation channel. One watcher can serve many guards in a process."""

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        *,
        channel: RevocationChannel | None = None,
        block_ms: int = 100,
        retry_delay: float = 0.1,
        client: redis.Redis | None = None,
    ) -> None:
        self.channel = channel or RevocationChannel()
        self.block_ms = block_ms
        self.retry_delay = retry_delay
        self._client = client or redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=block_ms / 1000 + 1.0,
            decode_responses=True,
        )
        self.state = RevocationState()
        self.last_heard = float("-inf")  # time.monotonic() of the last good round trip
        self._generation: str | None = None
        self._last_id = "0-0"
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_problem = ""

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
        """Seconds since the watcher last heard from Redis with a valid snapshot."""
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
                self._problem(f"revocation state unavailable: {exc}")
                need_load = True
                self._stop.wait(self.retry_delay)
            except (redis.RedisError, OSError) as exc:
                self._problem(f"Redis unreachable ({exc.__class__.__name__}: {exc})")
                need_load = True
                self._stop.wait(self.retry_delay)
            except Exception:  # never let the watcher die: it is what keeps guards honest
                logger.exception("revocation watcher error; reloading")
                need_load = True
                self._stop.wait(self.retry_delay)

    def _problem(self, message: str) -> None:
        if message != self._last_problem:
            logger.warning("%s; guards fail closed once the state is stale", message)
            self._last_problem = message

    def _load(self) -> None:
        keys = self.channel
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.snapshot_key)
            pipe.xrevrange(keys.stream_key, count=1)
            snapshot, last = pipe.execute()
        if not snapshot or SNAPSHOT_EPOCH_FIELD not in snapshot:
            raise SnapshotUnavailable(
                "no snapshot in Redis (new or flushed); waiting for the service"
            )
        try:
            epoch = int(snapshot[SNAPSHOT_EPOCH_FIELD])
            entries = [
                RevocationEntry.parse(value)
                for name, value in snapshot.items()
                if name.startswith(SNAPSHOT_ENTRY_PREFIX)
            ]
        except (ValueError, MalformedEntry) as exc:
            raise SnapshotUnavailable(f"malformed snapshot: {exc}") from exc
        self._generation = snapshot.get(SNAPSHOT_GENERATION_FIELD)
        self._last_id = last[0][0] if last else "0-0"
        self._set_state(RevocationState.build(entries, epoch))
        self._heard()
        self._ready.set()

    def _follow(self) -> bool:
        """One poll. Returns False when the state must be reloaded."""
        keys = self.channel
        with self._client.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.snapshot_key, [SNAPSHOT_EPOCH_FIELD, SNAPSHOT_GENERATION_FIELD])
            pipe.xread({keys.stream_key: self._last_id}, count=1000, block=self.block_ms)
            (epoch_raw, generation), streams = pipe.execute()
        if epoch_raw is None:
            raise SnapshotUnavailable("snapshot disappeared (Redis flushed or restarted)")
        entries = []
        for _stream, messages in streams or []:
            for message_id, fields in messages:
                self._last_id = message_id
                try:
                    entries.append(RevocationEntry.parse(fields.get(STREAM_ENTRY_FIELD, "")))
                except MalformedEntry as exc:
                    logger.error(
                        "malformed revocation stream entry %s: %s; reloading", message_id, exc
                    )
                    return False
        if entries:
            self._set_state(self.state.apply(entries))
        if generation != self._generation:
            return False  # the service rewrote the snapshot (reconciliation)
        if int(epoch_raw) < self.state.epoch and not entries:
            return False  # epoch went backwards: Redis was reset
        if int(epoch_raw) > self.state.epoch and not streams:
            return False  # the snapshot knows more than the stream told us
        self._heard()
        return True

    def _heard(self) -> None:
        self.last_heard = time.monotonic()
        if self._last_problem:
            logger.warning("revocation channel healthy again (epoch %s)", self.state.epoch)
            self._last_problem = ""

    def _set_state(self, state: RevocationState) -> None:
        changed = state.active != self.state.active
        self.state = state
        if changed:
            for listener in self._listeners:
                try:
                    listener(state)
                except Exception:
                    logger.exception("revocation listener failed")
