"""Witnesses: signed tree heads published outside the database, where the registry's own
administrators cannot quietly rewrite them (issue 12, 3b).

``settings.AUDIT_WITNESSES`` lists sink URLs; each URL's scheme picks a :class:`Sink` class from
:data:`SINKS` (a new kind of sink is one class registered there):

* ``file:///path/heads.jsonl`` appends one head document per line and fsyncs (the file
  ``manage.py verify_audit --witness`` reads);
* ``http://…`` / ``https://…`` POSTs the head document as JSON (2 s timeouts, the answer read
  up to 64 KiB, no redirects followed);
* ``redis:`` SETs ``<prefix>:audit:head`` (never to an older head) and PUBLISHes the head on
  ``<prefix>:audit:heads``, where ``<prefix>`` is the revocation channel's, which every passport
  names: agents find the heads next to their revocations.

A head is published once its transaction has committed (``transparency.sign_tree_head``). Every
delivery, delivered or refused, is a :class:`~actions.models.HeadWitness` row; a sink that fails
does not stop the others, and the next publication first delivers the heads it missed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from actions.models import HeadWitness, SignedTreeHead
from agent_passport.protocol import RevocationChannel
from registry.redis_connection import redis_client

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 2.0
MAX_ANSWER_BYTES = 64 * 1024
CATCH_UP = 100  # heads a sink that was down gets on its next delivery, at most
USER_AGENT = "agent-passport-registry/1 (tree-head witness)"


class DeliveryFailed(Exception):
    """A sink refused or could not take a head; the message is what HeadWitness records."""


class Sink:
    """One place heads are published to. Subclasses set ``schemes`` and implement deliver()."""

    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def name(self) -> str:
        """What HeadWitness rows and the console show: the URL without credentials or query."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}" if host else self.url

    def deliver(self, head: dict[str, Any]) -> None:
        """Publish one head document; raise DeliveryFailed (or OSError, redis/requests errors)."""
        raise NotImplementedError


class FileSink(Sink):
    """Append-only JSON lines, fsynced: the copy an auditor keeps on another disk or host."""

    schemes = ("file",)

    @property
    def path(self) -> Path:
        parts = urlsplit(self.url)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ImproperlyConfigured(
                f"AUDIT_WITNESSES: {self.url!r} is not file:///absolute/path"
            )
        return Path(parts.path)

    @property
    def name(self) -> str:
        return f"file://{self.path}"

    def deliver(self, head: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(head, sort_keys=True, separators=(",", ":")) + "\n").encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)  # one write with O_APPEND: lines never interleave
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class WebhookSink(Sink):
    schemes = ("http", "https")

    def deliver(self, head: dict[str, Any]) -> None:
        response = requests.post(
            self.url,
            json=head,
            headers={"User-Agent": USER_AGENT},
            timeout=TIMEOUT_SECONDS,
            allow_redirects=False,
            stream=True,
        )
        with response:
            answer = response.raw.read(MAX_ANSWER_BYTES, decode_content=True)
            if not 200 <= response.status_code < 300:
                text = answer[:200].decode("utf-8", "replace")
                raise DeliveryFailed(f"HTTP {response.status_code}: {text}".strip())


# SET the head unless Redis already holds a larger one (publications may race), then PUBLISH.
_SET_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and tonumber(doc.tree_size) and
     tonumber(doc.tree_size) > tonumber(ARGV[2]) then
    redis.call('PUBLISH', KEYS[2], ARGV[1])
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""


class RedisSink(Sink):
    """The latest head next to the revocation channel (``redis:``; the registry's REDIS_URL)."""

    schemes = ("redis",)

    @property
    def name(self) -> str:
        return f"redis:{head_key()}"

    def deliver(self, head: dict[str, Any]) -> None:
        client = redis_client()
        client.register_script(_SET_NEWER)(
            keys=[head_key(), heads_channel()],
            args=[json.dumps(head, sort_keys=True, separators=(",", ":")), head["tree_size"]],
        )


SINKS: dict[str, type[Sink]] = {
    scheme: kind for kind in (FileSink, WebhookSink, RedisSink) for scheme in kind.schemes
}


def _channel() -> RevocationChannel:
    return RevocationChannel(prefix=settings.REVOCATION_REDIS_PREFIX)


def head_key() -> str:
    """The Redis key holding the newest published head document."""
    return _channel().audit_head_key


def heads_channel() -> str:
    """The Redis pub/sub channel every published head is sent on."""
    return _channel().audit_heads_channel


def sink_for(url: str) -> Sink:
    scheme = urlsplit(url).scheme if "://" in url else url.split(":", 1)[0]
    kind = SINKS.get(scheme.lower())
    if kind is None:
        raise ImproperlyConfigured(
            f"AUDIT_WITNESSES: {url!r} has no sink; known: {', '.join(sorted(SINKS))}"
        )
    sink = kind(url)
    _ = sink.name  # a malformed URL of a known kind fails here, at configuration time
    return sink


def configured() -> list[Sink]:
    return [sink_for(url) for url in settings.AUDIT_WITNESSES]


@dataclass(frozen=True)
class Delivery:
    sink: str
    tree_size: int
    error: str  # empty when delivered


def _pending(sink: Sink, head: SignedTreeHead) -> list[SignedTreeHead]:
    """The heads up to ``head`` that ``sink`` has not taken yet, oldest first: those after its
    last delivery (or after its first failed attempt, for a sink never reached)."""
    rows = HeadWitness.objects.filter(sink=sink.name[:200], head_id__lte=head.pk)
    delivered = rows.filter(error="").order_by("-head_id").values_list("head_id", flat=True)
    last = delivered.first()
    if last is None:
        tried = rows.order_by("head_id").values_list("head_id", flat=True).first()
        after = tried - 1 if tried is not None else head.pk - 1
    else:
        after = last
    newest = SignedTreeHead.objects.filter(pk__gt=after, pk__lte=head.pk).order_by("-pk")
    return list(reversed(newest[:CATCH_UP]))


def _deliver(sink: Sink, heads: Sequence[SignedTreeHead]) -> list[Delivery]:
    deliveries = []
    for head in heads:
        try:
            sink.deliver(head.document())
            error = ""
        except Exception as exc:  # any failure of one sink is recorded, not raised
            error = f"{exc.__class__.__name__}: {exc}"[:500]
            logger.warning("witness %s refused tree head %s: %s", sink.name, head.tree_size, error)
        HeadWitness.objects.create(
            head=head, sink=sink.name[:200], delivered_at=timezone.now(), error=error
        )
        deliveries.append(Delivery(sink=sink.name, tree_size=head.tree_size, error=error))
        if error:
            break  # keep the order: the next publication starts again from this head
    return deliveries


def publish(head: SignedTreeHead, sinks: Sequence[Sink] | None = None) -> list[Delivery]:
    """Deliver ``head`` (and any earlier head a sink missed) to every witness sink."""
    deliveries = []
    for sink in configured() if sinks is None else sinks:
        deliveries += _deliver(sink, _pending(sink, head))
    return deliveries


def witnessed_by(head: SignedTreeHead) -> list[str]:
    """The sinks that took ``head``."""
    names = head.witnesses.filter(error="").values_list("sink", flat=True).distinct()
    return sorted(names)


def refused_by(head: SignedTreeHead) -> dict[str, str]:
    """The sinks that have not taken ``head`` (yet), each with its latest error."""
    took = set(witnessed_by(head))
    errors: dict[str, str] = {}
    for sink, error in (
        head.witnesses.exclude(error="").order_by("delivered_at").values_list("sink", "error")
    ):
        if sink not in took:
            errors[sink] = error
    return errors
