"""An agent's own witness of the action log: the newest receipts of its posts, checked later.

Each answer of ``POST /api/v1/actions`` carries a receipt: the registry's newest signed tree head
and a signed promise that the batch's leaves ``[[leaf index, event hash], ...]`` will be covered by
a signed head before ``include_by``. :class:`ReceiptStore` keeps the newest few (bounded: heads
and promises, with a few event ids of each batch picked at random so the registry cannot tell
which ones will be checked). :func:`check_log` later asks the registry for its latest head, a
consistency proof from every kept head to it and inclusion proofs of the sampled events of every
promise that is due, and verifies them all here (agent_passport.merkle). A log that was
truncated, rolled back or rewritten since the agent saw a head, a promised event that is missing
or changed, or a promise not kept in time is caught by the agent itself, not by the operator.

Plain Python (no Django); uses ``requests``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

import jwt
import redis
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_passport.audit import event_hash
from agent_passport.merkle import (
    leaf_hash,
    unhex,
    verify_consistency,
    verify_head,
    verify_inclusion,
    verify_promise,
)
from agent_passport.protocol import RevocationChannel

logger = logging.getLogger(__name__)

MAX_HEADS = 16
MAX_PROMISES = 64
SAMPLED_IDS = 4  # event ids kept per promise, whose inclusion check_log proves


def _is_head(value: object) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(value, dict)
        and isinstance(value.get("tree_size"), int)
        and isinstance(value.get("root"), str)
    )


def _is_promise(value: object) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(value, dict)
        and isinstance(value.get("leaves"), list)
        and isinstance(value.get("include_by"), str)
    )


class ReceiptStore:
    """The newest ``max_heads`` distinct heads and ``max_promises`` promises (each with up to
    SAMPLED_IDS of its batch's event ids). Thread-safe; :meth:`add` is cheap (no crypto)."""

    def __init__(self, max_heads: int = MAX_HEADS, max_promises: int = MAX_PROMISES) -> None:
        self._heads: deque[dict[str, Any]] = deque(maxlen=max_heads)
        self._promises: deque[dict[str, Any]] = deque(maxlen=max_promises)
        self._lock = threading.Lock()

    def add(self, receipt: object, event_ids: Sequence[str] = ()) -> None:
        """Keep a receipt from a POST answer; anything malformed is ignored (a registry that
        sends none is caught by :func:`check_log` finding nothing to vouch for it)."""
        if not isinstance(receipt, dict):
            return
        head, promise = receipt.get("head"), receipt.get("promise")
        if _is_head(head):
            self.add_head(head)
        if _is_promise(promise):
            ids = random.sample(list(event_ids), min(SAMPLED_IDS, len(event_ids)))
            with self._lock:
                self._promises.append({"promise": promise, "ids": ids})

    def add_head(self, head: Mapping[str, Any]) -> None:
        with self._lock:
            if not any(_same_head(head, kept) for kept in self._heads):
                self._heads.append(dict(head))

    def heads(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._heads)

    def promises(self) -> list[dict[str, Any]]:
        """``[{"promise": promise document, "ids": [event id, ...]}, ...]``, oldest first."""
        with self._lock:
            return list(self._promises)

    def settle(self, promises: Sequence[Mapping[str, Any]]) -> None:
        """Forget promises shown kept: a kept head now covers their leaves."""
        settled = {id(entry) for entry in promises}
        with self._lock:
            kept = [entry for entry in self._promises if id(entry) not in settled]
            self._promises.clear()
            self._promises.extend(kept)

    def to_json(self) -> dict[str, Any]:
        return {"heads": self.heads(), "promises": self.promises()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (a crash leaves the old file or the new one)."""
        target = Path(path)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.to_json(), out)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], **limits: int) -> ReceiptStore:
        """The store saved at ``path``; empty if there is none. ValueError if it is not one."""
        store = cls(**limits)
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return store
        except (OSError, ValueError, RecursionError) as exc:  # incl. not UTF-8, not JSON
            raise ValueError(f"cannot read receipts file {path}: {exc}") from exc
        if not isinstance(document, dict):
            raise ValueError(f"{path} is not a receipts file")
        for head in document.get("heads") or []:
            if _is_head(head):
                store.add_head(head)
        for entry in document.get("promises") or []:
            if isinstance(entry, dict) and _is_promise(entry.get("promise")):
                ids = [i for i in entry.get("ids") or [] if isinstance(i, str)]
                store._promises.append({"promise": entry["promise"], "ids": ids})
        return store


def default_receipts_path(spill_path: Path) -> Path:
    """Next to the reporter's spill file: ``agent-passport-actions-<jti>.receipts.json``."""
    return spill_path.with_name(f"{spill_path.stem}.receipts.json")


def _same_head(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return bool(a.get("tree_size") == b.get("tree_size") and a.get("root") == b.get("root"))


@dataclass
class LogCheck:
    """What :func:`check_log` found. ``problems`` each name what is wrong."""

    latest: dict[str, Any] | None = None
    heads_checked: int = 0
    leaves_checked: int = 0
    promises_pending: int = 0
    settled: list[Mapping[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        size = self.latest["tree_size"] if self.latest else "?"
        return (
            f"latest head {size} leaves; {self.heads_checked} kept head(s) consistent with it, "
            f"{self.leaves_checked} promised event(s) included, "
            f"{self.promises_pending} promise(s) not due yet"
        )


class RegistryError(Exception):
    """The registry could not be asked (unreachable, or an answer that is not JSON)."""


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _short(value: object) -> str:
    return f"{str(value)[:12]}…"


class _Registry:
    def __init__(self, registry: str, token: str, timeout: float) -> None:
        self.base = registry.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def get(self, path: str, **params: int) -> tuple[int, Any]:
        try:
            response = self.session.get(
                f"{self.base}{path}", params=params, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach the registry at {self.base}: {exc}") from exc
        try:
            return response.status_code, response.json()
        except ValueError as exc:
            raise RegistryError(
                f"{path} answered HTTP {response.status_code}, not JSON: {response.text[:200]!r}"
            ) from exc


def _detail(body: object) -> str:
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:300]


def published_head(
    redis_url: str, token: str, keys: Mapping[str, Ed25519PublicKey]
) -> dict[str, Any] | None:
    """The newest head the registry published in Redis next to the passport's revocation
    channel (its ``redis:`` witness), verified; None if none was published. RegistryError if
    Redis cannot be read or what is there is not a validly signed head."""
    claims = jwt.decode(token, options={"verify_signature": False})  # only to find the channel
    key = RevocationChannel.from_claim(claims.get("rev")).audit_head_key
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
            raw = client.get(key)
    except (redis.RedisError, ValueError) as exc:
        raise RegistryError(f"cannot read {key} from Redis: {exc}") from exc
    if raw is None:
        return None
    try:
        head = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{key} in Redis is not a head document ({exc})") from exc
    if not _is_head(head):
        raise RegistryError(f"{key} in Redis is not a head document")
    if problem := verify_head(head, keys):
        raise RegistryError(f"the head published in Redis: {problem}")
    return head


def check_log(
    registry: str,
    token: str,
    keys: Mapping[str, Ed25519PublicKey],
    store: ReceiptStore,
    *,
    now: datetime | None = None,
    timeout: float = 10.0,
) -> LogCheck:
    """Ask the registry for proofs that its log still extends every head the agent kept and
    holds every promised event that is due; verify them offline. RegistryError if the registry
    cannot be asked at all. On success the latest head is kept and kept promises forgotten."""
    now = now or datetime.now(UTC)
    api = _Registry(registry, token, timeout)
    report = LogCheck()
    status, latest = api.get("/api/v1/audit/heads/latest")
    if status != 200 or not _is_head(latest):
        report.problems.append(f"no latest signed head: HTTP {status}: {_detail(latest)}")
        return report
    report.latest = latest
    if problem := verify_head(latest, keys):
        report.problems.append(f"the latest head: {problem}")
        return report
    for head in sorted(store.heads(), key=lambda h: h["tree_size"]):
        if problem := _check_head(api, head, latest, keys):
            report.problems.append(problem)
        else:
            report.heads_checked += 1
    for entry in store.promises():
        _check_promise(api, entry, latest, keys, now, report)
    if report.ok:
        store.add_head(latest)
        store.settle(report.settled)
    return report


def _check_head(
    api: _Registry,
    head: Mapping[str, Any],
    latest: Mapping[str, Any],
    keys: Mapping[str, Ed25519PublicKey],
) -> str | None:
    size, newest = head["tree_size"], latest["tree_size"]
    seen = f"the head of {size} leaves it signed at {head.get('at')} (root {_short(head['root'])})"
    problem = verify_head(head, keys)
    if problem and "unknown key" not in problem:  # a rotated key: the proof still binds it
        return f"a kept head: {problem}"
    if size > newest:
        return (
            f"log truncated or rolled back: the registry's latest head covers {newest} leaves, "
            f"but it showed this agent {seen}"
        )
    if size == newest:
        if head["root"] != latest["root"]:
            return f"log rewritten: the latest head of {size} leaves has another root than {seen}"
        return None
    if size == 0:
        return None
    status, body = api.get("/api/v1/audit/consistency", to=newest, **{"from": size})
    if status != 200 or not isinstance(body, dict):
        return (
            f"no consistency proof from {size} to {newest} leaves: HTTP {status}: {_detail(body)}"
        )
    try:
        proof = unhex(body["proof"])
        proven = verify_consistency(
            size, newest, bytes.fromhex(head["root"]), bytes.fromhex(latest["root"]), proof
        )
    except (KeyError, TypeError, ValueError) as exc:
        return f"a malformed consistency proof from {size} to {newest} leaves ({exc})"
    if not proven:
        return (
            f"log rewritten: the latest head ({newest} leaves) does not extend {seen} "
            "(the consistency proof fails)"
        )
    return None


def _check_promise(
    api: _Registry,
    entry: Mapping[str, Any],
    latest: Mapping[str, Any],
    keys: Mapping[str, Ed25519PublicKey],
    now: datetime,
    report: LogCheck,
) -> None:
    promise = entry["promise"]
    if problem := verify_promise(promise, keys):
        if "unknown key" not in problem:
            report.problems.append(problem)
            return
    try:
        due = _when(promise["include_by"])
        promised = {int(index): str(value) for index, value in promise["leaves"]}
    except (TypeError, ValueError) as exc:
        report.problems.append(f"a kept inclusion promise is malformed ({exc})")
        return
    if due > now:
        report.promises_pending += 1
        return
    newest = latest["tree_size"]
    uncovered = sorted(index for index in promised if index >= newest)
    if uncovered:
        report.problems.append(
            f"promise overdue: leaves {uncovered[0]}..{uncovered[-1]} were to be covered by a "
            f"signed head before {promise['include_by']}; the latest head covers {newest}"
        )
        return
    problems = len(report.problems)
    for event_id in entry["ids"]:
        if problem := _check_event(api, event_id, promised, latest):
            report.problems.append(problem)
        else:
            report.leaves_checked += 1
    if len(report.problems) == problems:
        report.settled.append(entry)


def _check_event(
    api: _Registry, event_id: str, promised: Mapping[int, str], latest: Mapping[str, Any]
) -> str | None:
    newest = latest["tree_size"]
    status, body = api.get(f"/api/v1/actions/{event_id}/proof", tree_size=newest)
    if status == 404:
        return f"promised event {event_id} is missing from the log"
    if status != 200 or not isinstance(body, dict):
        return f"no inclusion proof of event {event_id}: HTTP {status}: {_detail(body)}"
    try:
        index = body["leaf_index"]
        computed = event_hash(body["event"])
        path = unhex(body["path"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"a malformed inclusion proof of event {event_id} ({exc})"
    if index not in promised:
        return f"event {event_id} is now leaf {index}, which its promise does not list (moved)"
    if promised[index] != computed:
        return (
            f"promised leaf {index} changed: event {event_id} was promised with hash "
            f"{_short(promised[index])}, the log's copy hashes to {_short(computed)}"
        )
    if not verify_inclusion(
        leaf_hash(computed), index, newest, path, bytes.fromhex(latest["root"])
    ):
        return f"promised leaf {index} (event {event_id}) is not in the latest head"
    return None
