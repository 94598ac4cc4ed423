"""Report an agent's action decisions to the registry, in batches, from a background thread.

``record()`` only appends a tuple to an in-memory deque, so checking an action never waits for
the network or the disk. A daemon thread posts batches to ``POST /api/v1/actions``
(``Authorization: Bearer <passport token>``)::

    {"events": [{"id": "<uuid4>", "action": "fs:write", "resource": "/workspace/a",
                 "jurisdiction": "DE", "decision": "allow", "reason": "...", "at": 1767225600.0}],
     "heartbeat": {"epoch": 41, "host": "trainer-1", "pid": 4242}}

Each event gets its id once, before its first delivery attempt, so a retried batch is stored only
once (the registry deduplicates by id). When the registry cannot be reached (network error, 5xx,
429, or 401 because the passport is no longer accepted) the batch is appended to a spill file
(JSON lines, one event per line) and sent again, oldest first, before anything new. Other 4xx
answers, and events the registry rejects one by one, are logged and dropped: they would be
rejected again, and retrying them would block everything behind them.

Plain Python (no Django); uses ``requests``. The token is never logged.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import requests

from agent_passport.rules import MAX_RESOURCE_LENGTH

logger = logging.getLogger(__name__)

# Limits of the registry's ``POST /api/v1/actions``; the server imports them from here
# (the resource's, which the rule engine also enforces, from agent_passport.rules).
MAX_BATCH_EVENTS = 1000
MAX_ACTION_LENGTH = 200
MAX_JURISDICTION_LENGTH = 20
MAX_REASON_LENGTH = 500
MAX_HOST_LENGTH = 200
MAX_DETAILS_BYTES = 4096
# Django refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB by default); larger batches
# are split (1000 events with long non-ASCII resources can exceed it).
MAX_BODY_BYTES = 2_000_000

HEARTBEAT_INTERVAL = 2.0  # seconds between posts when a heartbeat callable is given
MAX_BACKOFF = 5.0
WARNING_INTERVAL = 10.0  # the same warning is logged at most this often

_Record = tuple[float, str, str | None, str | None, bool, str]
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class _Outcome(enum.Enum):
    DELIVERED = "delivered"  # the registry stored (or already had) the batch
    REJECTED = "rejected"  # the registry refused the batch for good; it was dropped
    RETRY = "retry"  # try again later; the caller keeps the batch on disk
    TOO_LARGE = "too_large"  # the body exceeds the registry's limit; send fewer events at once


def default_spill_path(token: str) -> Path:
    """``<tmp>/agent-passport-actions-<jti>.jsonl``: one spill file per passport."""
    return Path(tempfile.gettempdir()) / f"agent-passport-actions-{_token_id(token)}.jsonl"


def _token_id(token: str) -> str:
    """The token's jti (read without verification, only to name a file), else a digest."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        jti = re.sub(r"[^A-Za-z0-9_-]", "", str(claims["jti"]))[:64]
        if jti:
            return jti
    except (IndexError, KeyError, TypeError, ValueError):
        pass
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def _text(value: object, limit: int | None = None) -> str:
    """``value`` as text that encodes to UTF-8 (lone surrogates, e.g. from undecodable file
    names, are escaped), cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _to_wire(record: _Record) -> dict[str, Any] | None:
    """The wire form of a recorded decision, with a fresh id; None if ``at`` is not a time."""
    at, action, resource, jurisdiction, allowed, reason = record
    try:
        at = float(at)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(at):
        return None
    return {
        "id": str(uuid.uuid4()),
        "action": _text(action),
        # Long resources and reasons are cut to the registry's limits rather than lost.
        "resource": None if resource is None else _text(resource, MAX_RESOURCE_LENGTH),
        "jurisdiction": None if jurisdiction is None else _text(jurisdiction),
        "decision": "allow" if allowed else "deny",
        "reason": "" if reason is None else _text(reason, MAX_REASON_LENGTH),
        "at": at,
    }


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as spill:
            return sum(1 for line in spill if line.strip())
    except FileNotFoundError:
        return 0


class ActionReporter:
    """Buffers action decisions and delivers them to the registry from a daemon thread.

    ``url`` and ``token`` may be replaced at any time (e.g. with a renewed passport); the next
    attempt uses them at once. Counters: ``sent`` (acknowledged by the registry), ``spilled``
    (waiting in the spill file), ``dropped`` (lost: buffer full, unwritable spill file, or
    rejected by the registry).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        spill_path: str | os.PathLike[str] | None = None,
        flush_interval: float = 0.5,
        batch_size: int = MAX_BATCH_EVENTS,
        max_buffer: int = 100_000,
        timeout: float = 5.0,
        heartbeat: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_EVENTS}")
        if max_buffer < 1 or flush_interval <= 0 or timeout <= 0:
            raise ValueError("max_buffer, flush_interval and timeout must be positive")
        self._url = url
        self._token = token
        self.spill_path = Path(spill_path) if spill_path else default_spill_path(token)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.timeout = timeout
        self.heartbeat = heartbeat

        self._buffer: deque[_Record] = deque()
        self._pending = 0  # events taken from the buffer whose fate is not settled yet
        self._sent = 0
        self._dropped = 0
        self._spilled = _count_lines(self.spill_path)  # a previous run may have left some
        self._lock = threading.Lock()  # guards _dropped and _warned_at (record() drops, thread)
        self._warned_at: dict[str, float] = {}
        self._failures = 0
        self._last_post_at = -math.inf
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session = requests.Session()

    def __repr__(self) -> str:  # never show the token
        return (
            f"<ActionReporter {self._url} sent={self._sent} spilled={self._spilled} "
            f"dropped={self._dropped} buffered={len(self._buffer)}>"
        )

    def __enter__(self) -> ActionReporter:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- settings that may change while running ---------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    @url.setter
    def url(self, value: str) -> None:
        self._url = value
        self._retry_now()

    @property
    def token(self) -> str:
        return self._token

    @token.setter
    def token(self, value: str) -> None:
        self._token = value
        self._retry_now()

    def _retry_now(self) -> None:
        self._failures = 0
        self._wake.set()

    def heartbeat_now(self) -> None:
        """Send the heartbeat at once (e.g. right after a revocation was applied, so the
        console sees the acknowledgement within a second). Never blocks."""
        self._last_post_at = -math.inf
        self._wake.set()

    # --- counters -----------------------------------------------------------------------------

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def spilled(self) -> int:
        return self._spilled

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # --- the agent's side: O(1), no I/O -----------------------------------------------------

    def record(
        self,
        at: float,
        action: str,
        resource: str | None,
        jurisdiction: str | None,
        allowed: bool,
        reason: str,
    ) -> None:
        """Queue one decision. Never blocks; when the buffer is full the event is dropped."""
        if len(self._buffer) >= self.max_buffer:
            self._drop(1, "the buffer is full")
            return
        self._buffer.append((at, action, resource, jurisdiction, allowed, reason))

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> ActionReporter:
        """Start the background thread (once; calling again is harmless)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="agent-passport-reporter", daemon=True
            )
            self._thread.start()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the buffer and the spill file are empty; False if ``timeout`` passed first.

        Starts the background thread if needed and makes it try at once, even while backing off.
        """
        self.start()
        self._retry_now()
        deadline = time.monotonic() + timeout
        while self._buffer or self._pending or self._spilled:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what can be delivered (the rest goes to the spill file), then stop."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stop.set()
            self._wake.set()
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("action reporter did not stop within %.1f s", timeout)
                return
        else:
            self._safe_cycle()
        self._session.close()

    # --- the background thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._safe_cycle():
                self._failures = 0
                delay = self.flush_interval
                if self.heartbeat is not None:
                    delay = min(delay, HEARTBEAT_INTERVAL)
            else:
                self._failures += 1
                delay = min(MAX_BACKOFF, self.flush_interval * 2 ** min(self._failures, 16))
            self._wake.wait(delay)
            self._wake.clear()
        self._safe_cycle()  # last chance: deliver or spill what is still in memory

    def _safe_cycle(self) -> bool:
        try:
            return self._cycle()
        except Exception:  # the reporter must outlive any bug or odd answer
            logger.exception("action reporter cycle failed")
            return False
        finally:
            self._pending = 0

    def _cycle(self) -> bool:
        """Spilled batches first, then new ones. Returns False when the registry is unreachable."""
        reachable = self._resend_spill()
        remaining = len(self._buffer)  # only what is here now: a busy agent cannot pin us
        while remaining > 0:
            count = min(self.batch_size, remaining)
            remaining -= count
            batch = self._take(count)
            if not reachable:
                self._spill(batch)  # known to be down: straight to disk, no more attempts
            elif undelivered := self._deliver(batch):
                reachable = False
                self._spill(undelivered)
            self._pending = 0
        heartbeat_due = time.monotonic() - self._last_post_at >= HEARTBEAT_INTERVAL
        if reachable and self.heartbeat is not None and heartbeat_due:
            reachable = self._post([]) is not _Outcome.RETRY
        return reachable

    def _take(self, count: int) -> list[dict[str, Any]]:
        self._pending = count  # set before popping, so flush() never sees a false "empty"
        batch = []
        for _ in range(count):
            event = _to_wire(self._buffer.popleft())
            if event is None:
                self._drop(1, "its time is not a number")
            else:
                batch.append(event)
        return batch

    # --- the registry -----------------------------------------------------------------------

    def _deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Post ``events``, split in halves while the body is too large for the registry.

        Returns the events to retry later: a suffix of ``events``, empty when none are left.
        """
        if not events:
            return []
        outcome = self._post(events)
        if outcome is _Outcome.TOO_LARGE and len(events) > 1:
            middle = len(events) // 2
            if rest := self._deliver(events[:middle]):
                return rest + events[middle:]
            return self._deliver(events[middle:])
        if outcome is _Outcome.TOO_LARGE:
            self._drop(1, "a single event is larger than the registry accepts")
        return events if outcome is _Outcome.RETRY else []

    def _post(self, events: list[dict[str, Any]]) -> _Outcome:
        document: dict[str, Any] = {"events": events}
        heartbeat = self._heartbeat_body()
        if heartbeat is not None:
            document["heartbeat"] = heartbeat
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > MAX_BODY_BYTES and len(events) > 1:
            return _Outcome.TOO_LARGE
        url = self._url
        try:
            response = self._session.post(
                url,
                data=body,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Content-Type": "application/json",
                },
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            why = str(exc).replace(self._token, "<token>")  # e.g. InvalidHeader quotes the value
            self._warn("unreachable", "cannot reach the registry at %s (%s)", url, why)
            return _Outcome.RETRY
        status = response.status_code
        if status == 413:
            return _Outcome.TOO_LARGE
        if status == 401 or status == 429 or status >= 500 or 300 <= status < 400:
            # 401: the passport is no longer accepted; keep the events until token is replaced.
            self._warn(f"http-{status}", "the registry answered %s: %s", status, _detail(response))
            return _Outcome.RETRY
        if status >= 400:
            logger.error(
                "the registry rejected a batch of %d events (HTTP %s): %s",
                len(events),
                status,
                _detail(response),
            )
            self._drop(len(events), f"the registry answered HTTP {status}")
            return _Outcome.REJECTED
        self._last_post_at = time.monotonic()
        rejected = self._log_rejected(events, response)
        self._sent += len(events) - rejected
        return _Outcome.DELIVERED

    def _log_rejected(self, events: list[dict[str, Any]], response: requests.Response) -> int:
        """Log the events the registry refused one by one; returns how many."""
        try:
            errors = response.json().get("errors") or {}
        except (ValueError, AttributeError):
            return 0
        if not isinstance(errors, dict):
            return 0
        rejected = 0
        for index, messages in errors.items():
            position = int(index) if str(index).isdigit() else -1
            event_id = events[position]["id"] if 0 <= position < len(events) else "?"
            logger.warning("the registry rejected action event %s: %s", event_id, messages)
            rejected += 1
        if rejected:
            self._drop(rejected, "the registry rejected them")
        return rejected

    def _heartbeat_body(self) -> dict[str, Any] | None:
        """The heartbeat callable's answer, reduced to fields of the right type."""
        if self.heartbeat is None:
            return None
        try:
            raw = self.heartbeat()
        except Exception:  # a broken callable must not stop reporting
            self._warn("heartbeat", "the heartbeat callable failed", exc_info=True)
            return {}
        if not isinstance(raw, Mapping):
            return {}
        body: dict[str, Any] = {}
        epoch, host, pid = raw.get("epoch"), raw.get("host"), raw.get("pid")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
            body["epoch"] = epoch
        if isinstance(host, str):
            body["host"] = _text(host, MAX_HOST_LENGTH)
        if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
            body["pid"] = pid
        return body

    # --- the spill file ---------------------------------------------------------------------

    def _spill(self, events: list[dict[str, Any]]) -> None:
        """Append ``events`` (with their ids) to the spill file, one JSON object per line."""
        data = _lines(events)
        try:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW
            with os.fdopen(os.open(self.spill_path, flags, 0o600), "ab") as spill:
                size = spill.seek(0, os.SEEK_END)
                try:
                    spill.write(data)
                    spill.flush()
                    os.fsync(spill.fileno())
                except OSError:
                    spill.truncate(size)  # no half-written line for the next append to corrupt
                    raise
        except OSError as exc:
            self._drop(len(events), f"the spill file cannot be written ({exc})")
            return
        self._spilled += len(events)

    def _resend_spill(self) -> bool:
        """Send spilled batches, oldest first, and forget what was delivered.

        Returns False (keeping the undelivered rest on disk) when a batch could not be delivered.
        """
        if not self._spilled:
            return True
        consumed = 0  # spilled events read so far: delivered, dropped, or in ``undelivered``
        try:
            with self.spill_path.open("rb") as spill:
                while lines := list(itertools.islice(spill, self.batch_size)):
                    events = self._parse_spilled(lines)
                    read = sum(1 for line in lines if line.strip())
                    undelivered = self._deliver(events)
                    if undelivered:
                        if consumed or len(undelivered) != read:  # else the file is unchanged
                            self._rewrite_spill(undelivered, spill)
                        self._spilled = max(0, self._spilled - consumed - read) + len(undelivered)
                        return False
                    consumed += read
            os.truncate(self.spill_path, 0)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._warn("spill-read", "cannot use the spill file %s (%s)", self.spill_path, exc)
            return False
        self._spilled = 0
        return True

    def _rewrite_spill(self, first: list[dict[str, Any]], rest: BinaryIO) -> None:
        """Replace the spill file with ``first`` followed by the unread ``rest`` (atomically)."""
        temporary = self.spill_path.with_name(self.spill_path.name + ".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW
        with os.fdopen(os.open(temporary, flags, 0o600), "wb") as target:
            target.write(_lines(first))
            shutil.copyfileobj(rest, target)
            target.flush()
            os.fsync(target.fileno())
        os.replace(temporary, self.spill_path)

    def _parse_spilled(self, lines: list[bytes]) -> list[dict[str, Any]]:
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line, parse_constant=_reject_constant)
            except ValueError:
                event = None
            if isinstance(event, dict) and isinstance(event.get("id"), str):
                events.append(event)
            else:
                self._drop(1, "a spilled line is corrupt")
        return events

    # --- bookkeeping ------------------------------------------------------------------------

    def _drop(self, count: int, why: str) -> None:
        with self._lock:
            self._dropped += count
            total = self._dropped
        self._warn("dropped", "dropped %d action event(s): %s (%d in total)", count, why, total)

    def _warn(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Log ``message`` unless the same kind of warning was logged in the last 10 seconds."""
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at.get(key, -math.inf) < WARNING_INTERVAL:
                return
            self._warned_at[key] = now
        logger.warning(message, *args, exc_info=exc_info)


def _lines(events: list[dict[str, Any]]) -> bytes:
    """JSON lines, one event per line, as stored in the spill file."""
    return "".join(
        json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n" for event in events
    ).encode()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a valid time")


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:500]
    except (ValueError, AttributeError):
        return response.text[:200]
