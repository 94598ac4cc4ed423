"""Report an agent's action decisions to the registry, in batches, from a background thread.

``record()`` only appends a tuple to an in-memory deque, so checking an action never waits for
the network or the disk. A daemon thread posts batches to ``POST /api/v1/actions``
(``Authorization: Bearer <passport token>``) every ``flush_interval``, and at once after a deny
(kill rules act on denies: the registry should see one while it matters). A deny only wakes the
thread, which takes everything buffered, so a burst of denies goes out in a few posts; a
stream of them is posted at most every DENY_SPACING; and while the thread backs off from an
unreachable registry a deny waits for the next retry like any event::

    {"events": [{"id": "<uuid4>", "action": "fs:write", "resource": "/workspace/a",
                 "jurisdiction": "DE", "decision": "allow", "reason": "...", "at": 1767225600.0}],
     "heartbeat": {"epoch": 41, "digest": "<sha-256 hex>", "host": "trainer-1", "pid": 4242}}

Each event gets its id once, before its first delivery attempt, so a retried batch is stored only
once (the registry deduplicates by id). The registry is *unreachable* when a post fails in a way
worth retrying (network error, 5xx, 429, 409 with ``Retry-After``, or 401 because the passport is
no longer accepted) or has been in flight for STALLED_POST seconds. While it is, a second thread
appends whatever was recorded to a spill file (JSON lines, one event per line) every
SPILL_INTERVAL (group commit), so ``kill -9`` of the agent loses at most the events of the last
few milliseconds; a third thread fsyncs after each append (against a crash of the machine)
without holding up the next one. The delivery thread sends the spill file again, oldest first,
before anything new. The spill file is bounded (``max_spill_bytes``): when it is full, new
events are dropped and counted, what it holds is kept. A line cut by a crash mid-write is cut
off when the reporter opens the file (and counted as dropped), so nothing new is glued to it.

Other 4xx answers, and events the registry rejects one by one, are logged and dropped: they
would be rejected again, and retrying them would block everything behind them. Every drop is
counted (``dropped``), makes the next ``flush()`` return False, and is reported to the registry
with the next post (``heartbeat.dropped``: drops it has not acknowledged yet), so the console
shows that this agent lost events.

Each answer's receipt (the newest signed tree head and a signed promise to include the batch) is
kept, bounded, in ``receipts`` (saved next to the spill file on ``close()``), so the agent can
later check the log itself (:func:`agent_passport.receipts.check_log`).

Plain Python (no Django); uses ``requests``. The token is never logged.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import itertools
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from agent_passport.audit import b64url_decode
from agent_passport.backoff import backoff_delay
from agent_passport.receipts import ReceiptStore, default_receipts_path
from agent_passport.revocations import DIGEST_LENGTH
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
MAX_RETRY_AFTER = 60.0  # a longer Retry-After from the registry is cut to this
WARNING_INTERVAL = 10.0  # the same warning is logged at most this often
SPILL_INTERVAL = 0.005  # while the registry is unreachable, the buffer goes to disk this often
STALLED_POST = 0.5  # a post in flight this long counts as an outage: its followers go to disk
MAX_SPILL_BYTES = 256 * 2**20
# Posts woken by denies start at least this far apart: an agent looping on refused checks (as a
# killed one may) posts at most 10 times a second, within the registry's default per-passport
# ACTIONS_RATE_LIMIT (600/minute). The first deny after a quiet spell is posted at once.
DENY_SPACING = 0.1

_Record = tuple[float, str, str | None, str | None, bool, str, Mapping[str, Any] | None]
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
        claims = json.loads(b64url_decode(payload))
        jti = re.sub(r"[^A-Za-z0-9_-]", "", str(claims["jti"]))[:64]
        if jti:
            return jti
    except (IndexError, KeyError, TypeError, ValueError):
        pass
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def _text(value: object, limit: int | None = None) -> str:
    """``value`` as text the registry can store: lone surrogates (e.g. from undecodable file
    names) and NUL (which PostgreSQL refuses in text) are escaped, so the event is kept as
    evidence; cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _to_wire(record: _Record) -> dict[str, Any] | None:
    """The wire form of a recorded decision, with a fresh id; None if ``at`` is not a time."""
    at, action, resource, jurisdiction, allowed, reason, details = record
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
        **({"details": _details(details)} if details else {}),
    }


def _details(details: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` as the registry accepts them: a JSON object whose strings pass ``_text``, of
    at most MAX_DETAILS_BYTES (else replaced by a note saying so: the event itself is kept)."""
    try:
        clean: dict[str, Any] = _clean(dict(details), depth=0)
        size = len(json.dumps(clean, ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError):
        return {"omitted": "details were not a small JSON object"}
    if size > MAX_DETAILS_BYTES:
        return {"omitted": f"details were {size} bytes (limit {MAX_DETAILS_BYTES})"}
    return clean


def _clean(value: Any, depth: int) -> Any:
    if depth > 8:
        raise ValueError("nested too deep")
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        return {_text(key): _clean(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item, depth + 1) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON")


class ActionReporter:
    """Buffers action decisions and delivers them to the registry from a daemon thread.

    ``url`` and ``token`` may be replaced at any time (e.g. with a renewed passport); the next
    attempt uses them at once. Counters: ``sent`` (acknowledged by the registry), ``spilled``
    (waiting in the spill file), ``dropped`` (lost: buffer full, spill file full or unwritable,
    a torn or corrupt spilled line, or rejected by the registry). One reporter per spill file.
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
        max_spill_bytes: int = MAX_SPILL_BYTES,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_EVENTS}")
        if min(max_buffer, flush_interval, timeout, max_spill_bytes) <= 0:
            raise ValueError("max_buffer, flush_interval, timeout and max_spill_bytes must be > 0")
        self._url = url
        self._token = token
        self.spill_path = Path(spill_path) if spill_path else default_spill_path(token)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.max_spill_bytes = max_spill_bytes

        self._buffer: deque[_Record] = deque()
        self._pending = 0  # events the delivery thread took from the buffer, fate not settled
        self._writing = 0  # events the spill writer took from the buffer, not written yet
        self._sent = 0
        self._dropped = 0
        self._dropped_reported = 0  # drops the registry acknowledged (sent in a heartbeat)
        self._dropped_at_flush = 0
        self._lock = threading.Lock()  # guards _dropped and _warned_at (record() drops, thread)
        self._warned_at: dict[str, float] = {}
        self._spill_lock = threading.Lock()  # the spill file and the three counters below
        self._spilled = 0  # lines in the spill file after _spill_offset
        self._spill_offset = 0  # bytes at the start of the spill file already delivered
        self._spill_size = 0
        self._failures = 0
        self._retry_after = 0.0
        self._last_post_at = -math.inf
        self._posting_since: float | None = None
        self._outage = threading.Event()  # set while the registry is unreachable
        self._unsynced = threading.Event()  # the spill writer appended; the syncer fsyncs
        self._wake = threading.Event()  # a deny, or one of the requests that set _prompt
        self._prompt = False  # flush(), a new url or token, heartbeat_now(): even during backoff
        self._denies = 0  # denies recorded so far
        self._denies_taken = 0  # _denies when the last cycle took the buffer
        self._deny_wakes = False  # the delivery thread waits and a deny should wake it
        self._hurried_at = -math.inf  # when the last post woken by a deny was due
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._syncer: threading.Thread | None = None
        self._session = requests.Session()
        self._recover_spill()  # a previous run may have left some
        self.receipts_path = default_receipts_path(self.spill_path)
        self.receipts = self._load_receipts()

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
        self._prompt = True
        self._wake.set()

    def heartbeat_now(self) -> None:
        """Send the heartbeat at once (e.g. right after a revocation was applied, so the
        console sees the acknowledgement within a second), even while backing off. Never
        blocks."""
        self._last_post_at = -math.inf
        self._prompt = True
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
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one decision (``details``: a small JSON object stored with it). Never blocks;
        when the buffer is full the event is dropped. A deny wakes the delivery thread."""
        if len(self._buffer) >= self.max_buffer:
            self._drop(1, "the buffer is full")
            return
        self._buffer.append((at, action, resource, jurisdiction, allowed, reason, details))
        if not allowed:
            self._denies += 1
            if self._deny_wakes:  # once per wait: a stream of denies does not keep waking it
                self._deny_wakes = False
                self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> ActionReporter:
        """Start the delivery thread, the spill writer and its syncer (once; calling again is
        harmless)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread, self._writer, self._syncer = (
                threading.Thread(target=target, name=f"agent-passport-{name}", daemon=True)
                for target, name in (
                    (self._run, "reporter"),
                    (self._run_writer, "spill-writer"),
                    (self._run_syncer, "spill-syncer"),
                )
            )
            for thread in (self._thread, self._writer, self._syncer):
                thread.start()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the buffer and the spill file are empty.

        False if ``timeout`` passed first, or if events were dropped since the previous
        ``flush()`` (or since the reporter was made): ``dropped`` says how many in all.
        Starts the background thread if needed and makes it try at once, even while backing off.
        """
        self.start()
        self._retry_now()
        deadline = time.monotonic() + timeout
        while self._buffer or self._pending or self._writing or self._spilled:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        previous, self._dropped_at_flush = self._dropped_at_flush, self._dropped
        return self._dropped_at_flush == previous

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what can be delivered (the rest goes to the spill file), then stop."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stop.set()
            self._wake.set()
            for helper in (thread, self._writer, self._syncer):
                if helper is not None:
                    helper.join(timeout)
            if thread.is_alive():
                logger.warning("action reporter did not stop within %.1f s", timeout)
                return
        else:
            self._safe_cycle()
        if self._buffer:  # the registry is unreachable: keep the rest on disk
            self._spill(self._take(len(self._buffer)))
        self._session.close()
        self._save_receipts()

    # --- receipts (agent_passport.receipts) -------------------------------------------------
    # The newest receipts of this passport's posts, kept next to the spill file across runs, so
    # ``agent-passport audit-check`` (check_log) can later prove the log still holds them.

    def _load_receipts(self) -> ReceiptStore:
        try:
            return ReceiptStore.load(self.receipts_path)
        except ValueError as exc:
            self._warn("receipts", "ignoring the kept receipts: %s", exc)
            return ReceiptStore()

    def _save_receipts(self) -> None:
        if not (self.receipts.heads() or self.receipts.promises()):
            return
        try:
            self.receipts.save(self.receipts_path)
        except OSError as exc:
            self._warn("receipts", "cannot keep the receipts in %s: %s", self.receipts_path, exc)

    # --- the delivery thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._safe_cycle():
                self._failures = 0
                delay = self.flush_interval
                if self.heartbeat is not None:
                    delay = min(delay, HEARTBEAT_INTERVAL)
            else:
                self._failures += 1
                # Steps of 2, 4, 8 … flush intervals up to MAX_BACKOFF, each wait drawn in the
                # upper half of its step: agents cut off together do not retry together.
                delay = backoff_delay(
                    self._failures, first=2 * self.flush_interval, cap=MAX_BACKOFF
                )
            delay, self._retry_after = max(delay, self._retry_after), 0.0
            self._idle(delay, backing_off=self._failures > 0)
        self._safe_cycle()  # last chance: deliver what is still in memory (close() spills the rest)

    def _idle(self, delay: float, *, backing_off: bool) -> None:
        """Wait ``delay`` seconds between cycles. A request (``_prompt``) or close() ends the
        wait; so does a deny (one recorded during the last cycle too), but no sooner than
        DENY_SPACING after the previous post a deny woke, and not at all while backing off:
        a deny must not defeat the backoff (nor wake this thread at all then)."""
        deadline = time.monotonic() + delay
        hurried = backing_off  # a deny no longer changes the deadline
        if not backing_off:
            self._deny_wakes = True  # before reading _denies: no deny goes unnoticed
            if self._denies != self._denies_taken:
                self._wake.set()
        while (left := deadline - time.monotonic()) > 0 and self._wake.wait(left):
            self._wake.clear()
            if self._prompt or self._stop.is_set():
                break
            if not hurried:
                hurried, self._deny_wakes = True, False
                soonest = max(time.monotonic(), self._hurried_at + DENY_SPACING)
                deadline = self._hurried_at = min(deadline, soonest)
        self._deny_wakes = False
        self._wake.clear()
        self._prompt = False

    def _safe_cycle(self) -> bool:
        try:
            return self._cycle()
        except Exception:  # the reporter must outlive any bug or odd answer
            logger.exception("action reporter cycle failed")
            return False
        finally:
            self._pending = 0

    def _cycle(self) -> bool:
        """Spilled events first, then new ones. Returns False when the registry is unreachable
        (the spill writer then takes over the buffer)."""
        if not self._resend_spill():
            return self._unreachable()
        self._outage.clear()
        self._denies_taken = self._denies  # before the buffer's length: these denies are in it
        remaining = len(self._buffer)  # only what is here now: a busy agent cannot pin us
        while remaining > 0:
            count = min(self.batch_size, remaining)
            remaining -= count
            self._pending = count  # set before popping, so flush() never sees a false "empty"
            if undelivered := self._deliver(self._take(count)):
                self._spill(undelivered)
                return self._unreachable()
            self._pending = 0
        if self._heartbeat_due() and self._post([]) is _Outcome.RETRY:
            return self._unreachable()
        return True

    def _unreachable(self) -> bool:
        self._outage.set()
        return False

    def _heartbeat_due(self) -> bool:
        """Unreported drops are reported at once; heartbeats every HEARTBEAT_INTERVAL."""
        if self._dropped > self._dropped_reported:
            return True
        due = time.monotonic() - self._last_post_at >= HEARTBEAT_INTERVAL
        return self.heartbeat is not None and due

    def _take(self, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` events from the buffer (both threads take from it), in wire form."""
        batch = []
        for _ in range(count):
            try:
                record = self._buffer.popleft()
            except IndexError:
                break
            event = _to_wire(record)
            if event is None:
                self._drop(1, "its time is not a number")
            else:
                batch.append(event)
        return batch

    # --- the spill writer -------------------------------------------------------------------

    def _run_writer(self) -> None:
        """While the registry is unreachable, append the buffer to the spill file every
        SPILL_INTERVAL (a group commit: one write for what accumulated)."""
        while not self._stop.is_set():
            if self._outage.is_set() or self._post_stalled():
                self._spill_buffer()
                self._stop.wait(SPILL_INTERVAL)
            else:
                self._outage.wait(STALLED_POST / 10)

    def _run_syncer(self) -> None:
        """fsync the spill file after the writer's appends. Once ``write()`` returned, the events
        survive a crash of this process; fsync makes them survive a crash of the machine, and a
        slow disk here never delays the writer's next append."""
        while not self._stop.is_set() or self._unsynced.is_set():
            if self._unsynced.wait(0.5):
                self._unsynced.clear()
                try:
                    descriptor = os.open(self.spill_path, os.O_RDONLY | _NOFOLLOW)
                    try:
                        os.fsync(descriptor)
                    finally:
                        os.close(descriptor)
                except FileNotFoundError:
                    pass  # removed meanwhile: nothing left to sync
                except OSError as exc:
                    self._warn("spill-sync", "cannot sync the spill file (%s)", exc)

    def _post_stalled(self) -> bool:
        since = self._posting_since
        return since is not None and time.monotonic() - since >= STALLED_POST

    def _spill_buffer(self) -> None:
        count = len(self._buffer)
        if not count:
            return
        self._writing = count  # set before popping, so flush() never sees a false "empty"
        try:
            self._spill(self._take(count), sync=False)
            self._unsynced.set()
        except Exception:  # the writer must outlive any bug
            logger.exception("action reporter spill writer failed")
        finally:
            self._writing = 0

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
        unreported = self._dropped - self._dropped_reported
        if unreported:
            heartbeat = {**(heartbeat or {}), "dropped": unreported}
        if heartbeat is not None:
            document["heartbeat"] = heartbeat
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > MAX_BODY_BYTES and len(events) > 1:
            return _Outcome.TOO_LARGE
        response = self._send(body)
        if response is None:
            return _Outcome.RETRY
        status = response.status_code
        if status == 413:
            return _Outcome.TOO_LARGE
        if _says_retry(response):
            self._retry_after = _retry_after(response)
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
        self._dropped_reported += unreported
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        errors = answer.get("errors")
        refused = errors if isinstance(errors, dict) else {}
        rejected = self._log_rejected(events, refused)
        self._sent += len(events) - rejected
        if answer.get("receipt") is not None:
            ids = [e["id"] for i, e in enumerate(events) if not refused or str(i) not in refused]
            self.receipts.add(answer["receipt"], ids)
        return _Outcome.DELIVERED

    def _send(self, body: bytes) -> requests.Response | None:
        """POST ``body``; None (after a rate-limited warning) if the registry cannot be reached.

        A connection error is retried once, at once and quietly, on a fresh connection: the
        server may have closed an idle keep-alive connection just as it was reused (gunicorn's
        keepalive timeout). Event ids make sending a batch twice harmless.
        """
        url = self._url
        self._posting_since = time.monotonic()
        try:
            return self._post_once(url, body)
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.ConnectTimeout):
                failure: requests.RequestException = exc
            else:
                try:
                    return self._post_once(url, body)
                except requests.RequestException as again:
                    failure = again
        except requests.RequestException as exc:
            failure = exc
        finally:
            self._posting_since = None
        why = str(failure).replace(self._token, "<token>")  # e.g. InvalidHeader quotes the value
        self._warn("unreachable", "cannot reach the registry at %s (%s)", url, why)
        return None

    def _post_once(self, url: str, body: bytes) -> requests.Response:
        return self._session.post(
            url,
            data=body,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
            timeout=self.timeout,
            allow_redirects=False,
        )

    def _log_rejected(self, events: list[dict[str, Any]], errors: object) -> int:
        """Log the events the registry refused one by one; returns how many."""
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
        if _is_count(epoch):
            body["epoch"] = epoch
        if isinstance(host, str):
            body["host"] = _text(host, MAX_HOST_LENGTH)
        if _is_count(pid):
            body["pid"] = pid
        digest = raw.get("digest")  # revocations_digest of the state the guard applied
        if isinstance(digest, str) and len(digest) == DIGEST_LENGTH:
            body["digest"] = digest
        supervisor = raw.get("supervisor")  # agent-passport run's process tree (CONTRACTS C1)
        if isinstance(supervisor, Mapping):
            try:
                body["supervisor"] = _clean(dict(supervisor), depth=0)
            except (TypeError, ValueError, RecursionError):
                self._warn("heartbeat-supervisor", "the heartbeat's supervisor is not JSON")
        return body

    # --- the spill file ---------------------------------------------------------------------
    # Append-only while events wait; the delivery thread remembers how far it has delivered
    # (_spill_offset) and empties the file once it has delivered everything. After a crash the
    # whole file is sent again: the registry stores each id once.

    def _recover_spill(self) -> None:
        """Count the lines a previous run left; cut off a line torn by a crash mid-write."""
        size = lines = complete = 0
        try:
            with os.fdopen(os.open(self.spill_path, os.O_RDWR | _NOFOLLOW), "r+b") as spill:
                while chunk := spill.read(1 << 20):
                    lines += chunk.count(b"\n")
                    if (last := chunk.rfind(b"\n")) >= 0:
                        complete = size + last + 1
                    size += len(chunk)
                if complete < size:
                    spill.truncate(complete)
                    self._drop(1, "the spill file ended in a line cut short by a crash")
        except FileNotFoundError:
            return
        except OSError as exc:
            self._warn("spill-read", "cannot use the spill file %s (%s)", self.spill_path, exc)
            return
        self._spill_size, self._spilled = complete, lines

    def _spill(self, events: list[dict[str, Any]], *, sync: bool = True) -> None:
        """Append ``events`` (with their ids) to the spill file (and fsync if ``sync``); what
        does not fit under ``max_spill_bytes`` is dropped (the file keeps the oldest evidence)."""
        lines = [_line(event) for event in events]
        with self._spill_lock:
            room, kept = self.max_spill_bytes - self._spill_size, 0
            while kept < len(lines) and len(lines[kept]) <= room:
                room -= len(lines[kept])
                kept += 1
            data = b"".join(lines[:kept])
            try:
                if data:
                    self._append(data, sync=sync)
            except OSError as exc:
                failure = f"the spill file cannot be written ({exc})"
            else:
                self._spill_size += len(data)
                self._spilled += kept
                failure = f"the spill file is full ({self.max_spill_bytes} bytes)"
                events = events[kept:]
        if events:
            self._drop(len(events), failure)

    def _append(self, data: bytes, *, sync: bool) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW
        with os.fdopen(os.open(self.spill_path, flags, 0o600), "ab") as spill:
            size = spill.seek(0, os.SEEK_END)
            try:
                spill.write(data)
                spill.flush()
                if sync:
                    os.fsync(spill.fileno())
            except OSError:
                spill.truncate(size)  # no half-written line for the next append to corrupt
                raise

    def _resend_spill(self) -> bool:
        """Send spilled events, oldest first. False (the rest stays on disk) when a batch could
        not be delivered; True once the spill file is empty."""
        while True:
            with self._spill_lock:
                try:
                    lines = self._read_spilled()
                except FileNotFoundError:
                    lines = []
                except OSError as exc:
                    self._warn(
                        "spill-read", "cannot read the spill file %s (%s)", self.spill_path, exc
                    )
                    return False
                if not lines:
                    self._empty_spill()
                    return True
            events, starts, corrupt = self._parse_spilled(lines)
            undelivered = self._deliver(events)
            end = lines[-1][0] + len(lines[-1][1])
            resume = starts[len(events) - len(undelivered)] if undelivered else end
            if lost := sum(1 for start in corrupt if start < resume):
                self._drop(lost, "a spilled line is corrupt")
            consumed = sum(1 for start, _ in lines if start < resume)
            with self._spill_lock:
                self._spill_offset = resume
                self._spilled = max(0, self._spilled - consumed)
            if undelivered:
                return False

    def _read_spilled(self) -> list[tuple[int, bytes]]:
        """Up to ``batch_size`` complete lines after the delivered offset, with their offsets."""
        lines = []
        with self.spill_path.open("rb") as spill:
            position = spill.seek(self._spill_offset)
            for line in itertools.islice(spill, self.batch_size):
                if not line.endswith(b"\n"):
                    break
                lines.append((position, line))
                position += len(line)
        return lines

    def _empty_spill(self) -> None:
        """Everything in the spill file was delivered: empty it. Caller holds _spill_lock."""
        if self._spill_size:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.spill_path, 0)
        self._spill_offset = self._spill_size = self._spilled = 0

    @staticmethod
    def _parse_spilled(
        lines: list[tuple[int, bytes]],
    ) -> tuple[list[dict[str, Any]], list[int], list[int]]:
        """The events of well-formed lines, where each one's line starts, and where the corrupt
        lines start (blank lines are neither)."""
        events, starts, corrupt = [], [], []
        for start, line in lines:
            if (event := _parse(line)) is not None:
                events.append(event)
                starts.append(start)
            elif line.strip():
                corrupt.append(start)
        return events, starts, corrupt

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


def _line(event: dict[str, Any]) -> bytes:
    """One event as a line of the spill file."""
    return (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _parse(line: bytes) -> dict[str, Any] | None:
    """A spilled event, or None if the line is not one (corrupt, or blank)."""
    try:
        event = json.loads(line, parse_constant=_reject_constant)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("id"), str) else None


def _is_count(value: object) -> bool:
    """A non-negative integer (a bool is not one), as the heartbeat's epoch and pid must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _says_retry(response: requests.Response) -> bool:
    """Whether the same request may succeed later: 401 (until the token is replaced), 429, 5xx,
    redirects, and a 409 that says when to retry (an event id stored concurrently)."""
    status = response.status_code
    if status == 409:
        return "Retry-After" in response.headers
    return status in (401, 429) or status >= 500 or 300 <= status < 400


def _retry_after(response: requests.Response) -> float:
    """The Retry-After header in seconds (0 if absent or an HTTP date), at most MAX_RETRY_AFTER."""
    try:
        seconds = float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0
    return min(MAX_RETRY_AFTER, seconds) if math.isfinite(seconds) and seconds > 0 else 0.0


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a valid time")


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:500]
    except (ValueError, AttributeError):
        return response.text[:200]
