"""The egress proxy: an HTTP forward proxy that checks every connection against the passport.

``CONNECT host:port`` (TLS and anything else) becomes a byte tunnel, never intercepted; a plain
``GET http://host[:port]/path`` is forwarded as one request per connection (``Connection:
close`` to the origin, bodies streamed, never buffered). Before any connection is opened the
proxy calls ``guard.check("net:connect", "<host>:<port>")``, so the passport's scope, its
revocations and the freshness of the revocation state decide (fail closed), and every decision
reaches the action log through the guard's reporter, where ``deny_pattern`` kill rules see it.

Hosts are checked in one canonical spelling: names in lower case without a trailing dot, IPv4
as dotted quad, IPv6 in brackets and compressed (``[2001:db8::1]:443``), an IPv4-mapped IPv6
address as its IPv4 address; ports as decimal numbers without leading zeros. Spellings that
resolvers read as IPv4 but are not dotted quads (``127.1``, ``0x7f.0.0.1``, ``2130706433``)
are refused, so an IP rule cannot be sidestepped by rewriting the address.

DNS: a name is checked as written; then it is resolved, and if any address it resolves to is
denied by an explicit ``!`` rule (``!net:connect:169.254.169.254:*``) that address is checked
too (recorded as a deny, answered 403). The proxy connects only to the addresses it checked,
so the name cannot re-resolve to something else in between. An allow rule on a name does not
need its addresses allowed (they change); an allow rule on an IP does not allow a name.

Hand-written on asyncio instead of ``proxy.py`` (PyPI): proxy.py accepts and serves
connections in worker processes, while the Guard here is one in-process object (a Redis
watcher thread, the reporter's buffer, kill callbacks) that the supervisor shares; it also
brings TLS interception, a web server and plugins we do not want in the trusted path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from agent_passport.errors import GuardError, RevocationStateStale
from agent_passport.guard import Guard
from agent_passport.revocations import RevocationEntry
from agent_passport.session import (
    EXIT_EXPIRED,
    EXIT_KILLED,
    EXIT_REFUSED,
    CLIError,
    open_session,
    set_on_signals,
)

logger = logging.getLogger(__name__)

ACTION = "net:connect"
CHUNK = 65536
CLOSE_LINGER = 10.0  # seconds a closed connection may take to send what is buffered
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/1\.[01]")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")  # what inet_aton would read as a number
_PORT = re.compile(r"[0-9]{1,5}")
_LENGTH = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls other than HTAB
# Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own: never forwarded to the origin.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "host",
    }
)
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ProxyError(Exception):
    """An answer the proxy gives instead of a connection: an HTTP status and one sentence."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status} {message}")


@dataclass(frozen=True)
class ProxyRequest:
    """A parsed proxy request. ``target`` is the checked ``host:port``; ``head`` is what is sent
    to the origin for a plain HTTP request (empty for CONNECT)."""

    method: str
    host: str
    port: int
    head: bytes = b""
    content_length: int = 0
    chunked: bool = False

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connect_host(self) -> str:
        """The host as the socket layer wants it (IPv6 without brackets)."""
        return self.host[1:-1] if self.host.startswith("[") else self.host


def canonical_host(text: str) -> str:
    """The one spelling of a host that is checked (see the module docstring); ProxyError 400."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise ProxyError(400, f"malformed IPv6 host {text[:80]!r}")
        try:
            address = ipaddress.IPv6Address(text[1:-1])
        except ValueError as exc:
            raise ProxyError(400, f"malformed IPv6 host {text[:80]!r}") from exc
        if address.scope_id is not None:
            raise ProxyError(400, f"IPv6 zone ids are not accepted: {text[:80]!r}")
        return _address_text(address)
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ProxyError(400, f"malformed host {text[:80]!r}")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise ProxyError(400, f"host {text[:80]!r} is not a dotted-quad IPv4 address nor a name")
    return name


def _address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"[{address.compressed}]"
    return str(address)


def parse_authority(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host[:port]`` → (canonical host, port); ProxyError 400 names what is wrong."""
    if "@" in text:
        raise ProxyError(400, "user information (user@host) is not accepted in a proxy target")
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ProxyError(400, f"malformed target {text[:80]!r}")
        port_text = rest[1:] if rest else None
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        host, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise ProxyError(400, f"CONNECT target {text[:80]!r} needs a port (host:port)")
        port = default_port
    elif not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= 65535:
        raise ProxyError(400, f"bad port {port_text[:16]!r}: expected 1-65535")
    else:
        port = int(port_text)
    return canonical_host(host), port


def parse_request(head: bytes, *, max_headers: int = 100) -> ProxyRequest:
    """Parse a request head (request line and headers, ending in an empty line). Strict:
    CRLF line ends, no obsolete line folding, no control characters; ProxyError on anything
    else (400, 501 for a transfer coding other than chunked, 431 for too many headers)."""
    text = head.decode("latin-1")
    if not text.endswith("\r\n\r\n"):
        raise ProxyError(400, "the request head must end with an empty line (CRLF CRLF)")
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
        raise ProxyError(400, "malformed request line: expected METHOD TARGET HTTP/1.1")
    method, target, version = parts
    if not target or not target.isprintable() or not target.isascii():
        raise ProxyError(400, "malformed request target")
    if len(lines) - 1 > max_headers:
        raise ProxyError(431, f"more than {max_headers} header fields")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ProxyError(400, f"malformed header line {line[:40]!r}")
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise ProxyError(400, f"control character in header {name[:40]!r}")
        headers.append((name, value))
    if method == "CONNECT":
        host, port = parse_authority(target)
        return ProxyRequest(method, host, port)
    return _plain_request(method, target, version, headers)


def _plain_request(
    method: str, target: str, version: str, headers: list[tuple[str, str]]
) -> ProxyRequest:
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        if target.lower().startswith("https://"):
            raise ProxyError(400, "use CONNECT for https:// (this proxy does not intercept TLS)")
        raise ProxyError(
            400, "this is a forward proxy: send an absolute http:// URI or CONNECT host:port"
        )
    split = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:split], rest[split:].partition("#")[0]
    host, port = parse_authority(authority, default_port=80)
    path = path if path.startswith("/") else "/" + path
    lowered = [(name.lower(), value) for name, value in headers]
    hosts = [value for name, value in lowered if name == "host"]
    if len(hosts) > 1 or (version == "HTTP/1.1" and not hosts):
        raise ProxyError(400, "an HTTP/1.1 request needs exactly one Host header")
    lengths = {value for name, value in lowered if name == "content-length"}
    codings = [value.lower() for name, value in lowered if name == "transfer-encoding"]
    if codings and lengths:
        raise ProxyError(400, "both Content-Length and Transfer-Encoding: refused (smuggling)")
    if codings and codings != ["chunked"]:
        raise ProxyError(501, "only Transfer-Encoding: chunked is supported")
    if len(lengths) > 1 or any(not _LENGTH.fullmatch(value) for value in lengths):
        raise ProxyError(400, "malformed Content-Length")
    named = {
        token.strip().lower()
        for name, value in lowered
        if name == "connection"
        for token in value.split(",")
    }
    authority_out = host if port == 80 else f"{host}:{port}"
    out = [f"{method} {path} {version}", f"Host: {authority_out}"]
    out += [
        f"{name}: {value}"
        for name, value in headers
        if name.lower() not in _HOP_BY_HOP and name.lower() not in named
    ]
    out.append("Connection: close")
    return ProxyRequest(
        method,
        host,
        port,
        head=("\r\n".join(out) + "\r\n\r\n").encode("latin-1"),
        content_length=int(next(iter(lengths))) if lengths else 0,
        chunked=bool(codings),
    )


def answer(status: int, message: str) -> bytes:
    """A complete short text response that closes the connection."""
    body = f"agent-passport egress proxy: {message}\n".encode()
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class EgressProxy:
    """The proxy, serving from its own asyncio loop in a background thread so it can share a
    Guard (and its watcher and reporter) with the program that started it.

    Limits: ``max_connections`` open client connections (one more is answered 503),
    ``max_header_bytes`` for the request line and headers together (431), ``max_headers``
    header fields (431), ``header_timeout`` seconds to send them (408), ``connect_timeout``
    seconds to resolve and connect to the origin (504), ``idle_timeout`` seconds without a byte
    in either direction before a tunnel or forwarded request is closed.

    On a kill of the guard's passport every open connection is closed and new ones get 403
    (the guard refuses) until the kill is lifted. ``stop()`` cannot be undone.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 256,
        max_header_bytes: int = 16384,
        max_headers: int = 100,
        header_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
    ) -> None:
        for label, value in (
            ("max_connections", max_connections),
            ("max_header_bytes", max_header_bytes),
            ("max_headers", max_headers),
            ("header_timeout", header_timeout),
            ("connect_timeout", connect_timeout),
            ("idle_timeout", idle_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{label} must be positive, got {value!r}")
        self.guard = guard
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.header_timeout = header_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._upstreams: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refusing = 0
        self._stopped = False

    # -- lifecycle (any thread) ------------------------------------------------------------
    def start(self) -> EgressProxy:
        """Bind and serve from a daemon thread; returns once bound (OSError if it cannot)."""
        if self._thread is not None:
            raise RuntimeError("an EgressProxy starts once")
        self._thread = threading.Thread(target=self._run, name="egress-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error
        self.guard.on_kill(self._on_kill)
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._clients)

    def stop(self) -> None:
        """Close the listener and every open connection, and end the thread."""
        loop, thread = self._loop, self._thread
        if self._stopped or loop is None or thread is None:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        except RuntimeError:  # the loop is already gone
            pass
        except TimeoutError:
            logger.warning("egress proxy: connections still closing after 10 s; stopping anyway")
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def __enter__(self) -> EgressProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _on_kill(self, entry: RevocationEntry) -> None:
        """On the watcher thread: close everything open now (new requests: the guard refuses)."""
        loop = self._loop
        if loop is None or self._stopped:
            return
        logger.warning("egress proxy closes every connection: %s", entry.describe())
        try:
            loop.call_soon_threadsafe(self._abort_all)
        except RuntimeError:
            pass

    # -- the loop's thread -----------------------------------------------------------------
    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(
                    self._accept, self.host, self.port, limit=self.max_header_bytes
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None and self._loop is not None
        self._server.close()
        self._abort_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._loop.call_soon(self._loop.stop)

    def _abort_all(self) -> None:
        for writer in [*self._clients, *self._upstreams]:
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if len(self._clients) >= self.max_connections:
            try:
                await self._refuse(reader, writer)
            finally:
                self._tasks.discard(task)
            return
        self._clients.add(writer)
        try:
            await self._serve(reader, writer)
        except ProxyError as exc:
            await self._answer_and_close(reader, writer, answer(exc.status, exc.message))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a peer went away, or the proxy stops
        except Exception:
            logger.exception("egress proxy: unexpected error on a connection")
        finally:
            self._clients.discard(writer)
            self._tasks.discard(task)
            _close(writer)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """503 over the limit; beyond another ``max_connections`` refusals at once, just close."""
        if self._refusing >= self.max_connections:
            writer.transport.abort()
            return
        self._refusing += 1
        try:
            message = f"too many connections (limit {self.max_connections})"
            await self._answer_and_close(reader, writer, answer(503, message))
        finally:
            self._refusing -= 1

    @staticmethod
    async def _answer_and_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bytes
    ) -> None:
        """Send ``response``, then read (and drop) what the client still sends for up to a
        second before closing: closing with unread data resets the connection, and the client
        may then never read the answer."""
        writer.write(response)
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(1.0):
                while await reader.read(CHUNK):
                    pass
        _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        except asyncio.LimitOverrunError as exc:
            raise ProxyError(431, f"request head over {self.max_header_bytes} bytes") from exc
        except TimeoutError as exc:
            raise ProxyError(408, f"no complete request head in {self.header_timeout:g} s") from exc
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return  # the client connected and left: nothing to answer
            raise ProxyError(400, "the connection ended inside the request head") from exc
        request = parse_request(head, max_headers=self.max_headers)
        upstream_reader, upstream = await self._connect(request)
        self._upstreams.add(upstream)
        try:
            if self.guard.killed:  # killed while connecting
                raise ProxyError(403, "the passport was revoked")
            if request.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await self._relay(reader, upstream, upstream_reader, writer)
            else:
                upstream.write(request.head)
                await self._forward(request, reader, upstream, upstream_reader, writer)
        finally:
            self._upstreams.discard(upstream)
            _close(upstream)

    # -- checks and the origin connection --------------------------------------------------
    def _check(self, resource: str, details: dict[str, str]) -> None:
        """The guard decides; its refusal becomes the HTTP answer (403, or 503 when stale)."""
        try:
            self.guard.check(ACTION, resource, details=details)
        except RevocationStateStale as exc:
            raise ProxyError(503, f"refused, fail-closed: {exc}") from exc
        except GuardError as exc:
            raise ProxyError(403, f"refused: {exc}") from exc
        except Exception as exc:  # the guard could not decide: fail closed
            logger.exception("egress proxy: the guard failed on %s", resource)
            raise ProxyError(503, f"refused, the check failed: {type(exc).__name__}") from exc

    async def _connect(
        self, request: ProxyRequest
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        details = {"proxy": request.method}
        self._check(request.target, details)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        addresses = await self._resolve(request, details, deadline)
        error: OSError | None = None
        for address in addresses:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(address, request.port),
                    max(deadline - loop.time(), 0.001),
                )
            except TimeoutError as exc:
                raise ProxyError(
                    504, f"{request.target}: no connection in {self.connect_timeout:g} s"
                ) from exc
            except OSError as exc:
                error = exc
        raise ProxyError(502, f"cannot connect to {request.target}: {error}")

    async def _resolve(
        self, request: ProxyRequest, details: dict[str, str], deadline: float
    ) -> list[str]:
        """The addresses to connect to: an IP as given; a name's addresses, each checked against
        the passport's explicit deny rules (recorded and refused when one denies it)."""
        if request.host.startswith("[") or _is_ipv4(request.host):
            return [request.connect_host]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM),
                max(deadline - loop.time(), 0.001),
            )
        except TimeoutError as exc:
            raise ProxyError(504, f"{request.host}: no DNS answer in time") from exc
        except OSError as exc:
            raise ProxyError(502, f"cannot resolve {request.host}: {exc}") from exc
        addresses: list[str] = []
        for info in infos:
            address = _address_text(ipaddress.ip_address(str(info[4][0]).partition("%")[0]))
            if address in addresses:
                continue
            addresses.append(address)
            resource = f"{address}:{request.port}"
            decision = self.guard.policy.decide(ACTION, resource, self.guard.jurisdiction)
            if not decision.allowed and decision.rule is not None:  # an explicit "!" rule
                self._check(resource, {**details, "host": request.host})
        return [a[1:-1] if a.startswith("[") else a for a in addresses]

    # -- moving bytes ----------------------------------------------------------------------
    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
    ) -> None:
        """Both directions until both ended or ``idle_timeout`` without a byte either way."""
        activity = [asyncio.get_running_loop().time()]
        await _both(
            self._pipe(client_reader, upstream, activity),
            self._pipe(upstream_reader, client, activity),
        )

    async def _forward(
        self,
        request: ProxyRequest,
        client_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
    ) -> None:
        """The request body (exactly as framed; nothing after it) up, the response down until
        the origin closes; an origin may answer before the body is complete. A body that
        breaks off or is malformed ends the exchange (the origin would wait for the rest)."""
        activity = [asyncio.get_running_loop().time()]
        body = asyncio.ensure_future(self._send_body(request, client_reader, upstream, activity))

        def end_on_failure(task: asyncio.Future[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                upstream.transport.abort()

        body.add_done_callback(end_on_failure)
        try:
            await self._pipe(upstream_reader, client, activity)
        finally:
            body.cancel()
            await asyncio.gather(body, return_exceptions=True)

    async def _send_body(
        self,
        request: ProxyRequest,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        activity: list[float],
    ) -> None:
        if request.chunked:
            while True:
                line = await self._read(reader.readuntil(b"\r\n"), activity)
                size_text = line.split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size_text):
                    raise ValueError("malformed chunk size")
                size = int(size_text, 16)
                upstream.write(line)
                if size == 0:
                    break
                await self._copy(reader, upstream, size + 2, activity)
            while True:  # trailer fields, then the empty line
                line = await self._read(reader.readuntil(b"\r\n"), activity)
                upstream.write(line)
                if line == b"\r\n":
                    break
            await upstream.drain()
        else:
            await self._copy(reader, upstream, request.content_length, activity)

    async def _copy(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        size: int,
        activity: list[float],
    ) -> None:
        while size > 0:
            data = await self._read(reader.read(min(size, CHUNK)), activity)
            if not data:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(data)
            writer.write(data)
            await writer.drain()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: list[float]
    ) -> None:
        while data := await self._read(reader.read(CHUNK), activity):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()

    async def _read(self, read: Awaitable[bytes], activity: list[float]) -> bytes:
        """``read``, or TimeoutError once no byte moved either way for ``idle_timeout``
        (``activity`` holds that time, shared by both directions)."""
        loop = asyncio.get_running_loop()
        future = asyncio.ensure_future(read)
        while True:
            remaining = activity[0] + self.idle_timeout - loop.time()
            if remaining <= 0:
                future.cancel()
                await asyncio.gather(future, return_exceptions=True)
                raise TimeoutError("idle")
            done, _ = await asyncio.wait({future}, timeout=remaining)
            if done:
                data = future.result()
                activity[0] = loop.time()
                return data


def _close(writer: asyncio.StreamWriter) -> None:
    """Close after sending what is buffered, but abort if that takes ``CLOSE_LINGER`` seconds
    (a peer that stops reading must not hold the socket)."""
    transport = writer.transport
    if not transport.is_closing():
        transport.close()
        asyncio.get_running_loop().call_later(CLOSE_LINGER, transport.abort)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


async def _both(first: Awaitable[None], second: Awaitable[None]) -> None:
    """Run both; when one fails (a reset, idle), stop the other."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- command line: agent-passport proxy ------------------------------------------------------
# The exit codes of ``agent-passport run`` for the same events.


def add_proxy_options(parser: argparse.ArgumentParser) -> None:
    """``agent-passport proxy`` options besides the agent's (``add_agent_options``)."""
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8899",
        help="HOST:PORT to listen on (default 127.0.0.1:8899; port 0 picks a free one)",
    )
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--max-header-bytes", type=int, default=16384)
    parser.add_argument("--header-timeout", type=float, default=10.0, help="seconds (408)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds (504)")
    parser.add_argument(
        "--idle-timeout", type=float, default=300.0, help="seconds without traffic on a tunnel"
    )


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8899`` or ``[::1]:8899`` → (host, port); CLIError otherwise."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not _PORT.fullmatch(port) or int(port) > 65535:
        raise CLIError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8899")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise CLIError(f"--listen {text!r}: HOST must be an IP address") from exc
    return host, int(port)


def cmd_proxy(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (exit 0), a kill of the passport (``EXIT_KILLED``) or its
    expiry (``EXIT_EXPIRED``); ``EXIT_REFUSED`` if it is revoked already."""
    host, port = parse_listen(args.listen)
    limits = {
        name: getattr(args, name)
        for name in (
            "max_connections",
            "max_header_bytes",
            "header_timeout",
            "connect_timeout",
            "idle_timeout",
        )
    }
    for name, value in limits.items():
        if not value > 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not ipaddress.ip_address(host).is_loopback:
        print(
            f"warning: listening on {host}, not loopback: whoever reaches it acts with this "
            "passport",
            file=sys.stderr,
        )
    with open_session(args) as session:
        guard = session.guard
        if guard.kill_entry is not None:
            print(f"not started: {guard.kill_entry.describe()}", file=sys.stderr)
            return EXIT_REFUSED
        try:
            proxy = EgressProxy(guard, host=host, port=port, **limits).start()
        except OSError as exc:
            raise CLIError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from exc
        done = threading.Event()
        set_on_signals(done, signal.SIGINT, signal.SIGTERM)
        guard.on_kill(lambda entry: done.set())
        print(f"egress proxy for agent {guard.agent_id} on {proxy.url}", flush=True)
        try:
            expired = not done.wait(max(float(guard.claims["exp"]) - time.time(), 0))
        finally:
            proxy.stop()
        if guard.kill_entry is not None:
            print(f"stopped: {guard.kill_entry.describe()}", file=sys.stderr, flush=True)
            return EXIT_KILLED
        if expired:
            print(f"stopped: passport {guard.jti} expired", file=sys.stderr, flush=True)
            return EXIT_EXPIRED
        return 0
