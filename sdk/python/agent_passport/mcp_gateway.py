"""The MCP gateway (``agent-passport mcp-proxy``): the agent's passport enforced on every tool call
an MCP client makes to an MCP server over stdio, whether or not the agent's code cooperates.

The agent's MCP client launches the gateway as its MCP server; the gateway launches the real
server as a child (its own process group, without the passport token in its environment) and
relays newline-delimited JSON-RPC (MCP stdio transport) both ways. What crosses it:

- ``tools/call``: checked with ``guard.check("tool:<server>", "<tool>", details={"arguments":
  [names]})`` (argument names, never values) before it reaches the server. Every call, allowed or
  refused, is in the action log. A refusal is a tool result with ``isError: true`` whose text
  names the reason (the rule, the revocation, a stale revocation state), not a protocol error.
  A tool name outside the MCP tool-name grammar (SEP-986: ``[A-Za-z0-9._-]{1,128}``) cannot be
  named by a scope rule and is refused.
- ``tools/list``: the server's answer filtered to the tools the passport's scope allows, decided
  with the policy alone (a listing is not an action: it is not reported, so listings do not
  flood the action log).
- ``resources/read`` and ``resources/subscribe`` are checked as ``resource:<server>`` on the URI,
  ``prompts/get`` as ``prompt:<server>`` on the prompt's name (refused with JSON-RPC error
  ``PASSPORT_REFUSED``); ``resources/list`` and ``prompts/list`` are filtered like tools.
- Passed unchanged: the handshake (``initialize``, ``server/discover``), ``ping``,
  ``logging/setLevel``, ``resources/templates/list``, ``resources/unsubscribe``,
  ``subscriptions/listen``, the client's notifications and responses, and everything the server
  sends (its requests to the client, e.g. sampling, are the client's to answer). Any other
  method (``completion/complete``, ``tasks/*``, unknown ones) is refused: deny by default.
- Every message is parsed, validated with the official ``mcp`` package's JSON-RPC model and
  re-serialized before it is relayed, so the server acts on exactly the message that was checked
  (no duplicate-key or framing tricks). Garbage gets a JSON-RPC error, never a crash.

Bounds: a message larger than ``max_message_bytes`` is refused (its bytes are discarded as they
arrive); at most ``max_in_flight`` requests wait for the server, each at most ``call_timeout``
seconds (then the client gets an error and the server a cancellation).

The session ends when the client closes its side (the server's stdin is closed, then it is
terminated after ``grace`` seconds), when the server exits, or on a kill of the passport (the
open requests get an error, the client's pipe is closed and the server's process group gets
SIGTERM, SIGKILL after ``grace`` seconds).

The stdio framing is the gateway's own rather than ``mcp.client.stdio``/``mcp.server.stdio``:
those read lines without a size limit and do not hand out the server process, which a kill must
stop at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import enum
import json
import logging
import os
import re
import selectors
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from pydantic import ValidationError

from agent_passport.errors import GuardError
from agent_passport.guard import Guard
from agent_passport.revocations import RevocationEntry
from agent_passport.rules import split_action
from agent_passport.session import EXIT_KILLED, EXIT_REFUSED, TOKEN_ENV, CLIError, open_session

logger = logging.getLogger(__name__)

TOOL_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")  # SEP-986, the MCP tool-name grammar
PASSPORT_REFUSED = -32010  # JSON-RPC implementation-defined band (-32000..-32019)
TOO_MANY_REQUESTS = -32011
MAX_ARGUMENT_NAMES = 64  # argument names reported per call (the details stay small)
READ_CHUNK = 65536

# Requests relayed unchanged (the handshake, liveness, and what reveals no data).
PASSED_METHODS = frozenset(
    {
        "initialize",
        "server/discover",
        "ping",
        "logging/setLevel",
        "resources/templates/list",
        "resources/unsubscribe",
        "subscriptions/listen",
    }
)
# Long-lived requests that are not held to call_timeout.
UNTIMED_METHODS = frozenset({"subscriptions/listen"})
CLIENT_NOTIFICATIONS = frozenset(
    {
        "notifications/cancelled",
        "notifications/initialized",
        "notifications/progress",
        "notifications/roots/list_changed",
    }
)


class Outcome(enum.IntEnum):
    """How a session ended; the value is ``mcp-proxy``'s exit code."""

    CLIENT_CLOSED = 0
    SERVER_ENDED = 3
    KILLED = EXIT_KILLED  # the passport was revoked during the session
    REFUSED = EXIT_REFUSED  # revoked already: the MCP server was never started


@dataclass(frozen=True)
class GatewayLimits:
    max_message_bytes: int = 8 * 1024 * 1024
    call_timeout: float = 60.0
    max_in_flight: int = 64
    grace: float = 2.0

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if not self.call_timeout > 0 or not self.grace > 0:
            raise ValueError("call_timeout and grace must be positive numbers of seconds")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")


LIMIT_OPTIONS = ("max_message_bytes", "call_timeout", "max_in_flight", "grace")


def check_server_name(name: str) -> str:
    """``name`` if it can be the action segment of ``tool:<name>:<tool>`` rules, else ValueError."""
    if not isinstance(name, str) or ":" in name:
        raise ValueError(f"server name {name!r} must not contain ':'")
    try:
        split_action(f"tool:{name}")
    except ValueError:
        raise ValueError(
            f"server name {name!r} must be lower-case letters, digits, '_', '.', '-' "
            "(it becomes the action of tool:<server>:<tool> rules)"
        ) from None
    return name


class _Oversized:
    """A line longer than the limit (already discarded)."""

    def __init__(self, size: int) -> None:
        self.size = size


async def read_lines(reader: asyncio.StreamReader, limit: int) -> AsyncIterator[bytes | _Oversized]:
    """Newline-terminated lines of at most ``limit`` bytes; a longer line is discarded while it
    arrives (never held in memory) and yields ``_Oversized`` once. Ends at EOF."""
    buffer = bytearray()
    discarding = 0  # bytes of an oversized line dropped so far
    while True:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            if discarding:
                yield _Oversized(discarding)
            elif buffer.strip():
                yield bytes(buffer)
            return
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                rest = len(chunk) - start
                if discarding:
                    discarding += rest
                elif len(buffer) + rest > limit:
                    discarding = len(buffer) + rest
                    buffer.clear()
                else:
                    buffer += chunk[start:]
                break
            if discarding:
                yield _Oversized(discarding + end - start)
                discarding = 0
            elif len(buffer) + end - start > limit:
                yield _Oversized(len(buffer) + end - start)
                buffer.clear()
            else:
                buffer += chunk[start:end]
                if buffer.strip():
                    yield bytes(buffer)
                buffer.clear()
            start = end + 1


@dataclass(frozen=True)
class Malformed:
    """A line that is not a JSON-RPC message, and the error response that refuses it."""

    error: types.JSONRPCError


def parse_message(line: bytes) -> types.JSONRPCMessage | Malformed:
    """The JSON-RPC message on ``line``, validated with the mcp package's model."""
    try:
        return types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            return Malformed(
                error_response(None, types.PARSE_ERROR, "not JSON (one message a line)")
            )
        return Malformed(
            error_response(
                _id_of(line),
                types.INVALID_REQUEST,
                "not a JSON-RPC 2.0 request, notification or response",
            )
        )


def _id_of(line: bytes) -> types.RequestId | None:
    """The id of an invalid message, if it has a usable one (so the client is not left waiting)."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    ident = value.get("id") if isinstance(value, dict) else None
    if isinstance(ident, str) or (isinstance(ident, int) and not isinstance(ident, bool)):
        return ident
    return None


def error_response(ident: types.RequestId | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(
        jsonrpc="2.0", id=ident, error=types.ErrorData(code=code, message=message)
    )


def refused_tool_result(ident: types.RequestId, text: str) -> types.JSONRPCResponse:
    """A tool result with ``isError: true``: the model sees why, the session goes on."""
    result = types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)
    return types.JSONRPCResponse(
        jsonrpc="2.0",
        id=ident,
        result=result.model_dump(by_alias=True, mode="json", exclude_none=True),
    )


def encode(message: types.JSONRPCMessage) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"


@dataclass
class _Pending:
    method: str
    timer: asyncio.TimerHandle | None


@dataclass
class _Pipe:
    """One side's writer: whole lines, one writer at a time."""

    writer: asyncio.StreamWriter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: types.JSONRPCMessage) -> None:
        async with self.lock:
            self.writer.write(encode(message))
            await self.writer.drain()


class Gateway:
    """One MCP session between a client and a server, under one passport's guard.

    ``run`` starts ``command`` and relays until the session ends; it returns the Outcome and
    leaves no server process behind. Not reusable.
    """

    def __init__(
        self,
        guard: Guard,
        server_name: str,
        command: Sequence[str],
        *,
        limits: GatewayLimits | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not command:
            raise ValueError("give the MCP server's command")
        self.guard = guard
        self.server = check_server_name(server_name)
        self.command = list(command)
        self.limits = limits or GatewayLimits()
        source = os.environ if env is None else env
        self.env = {key: value for key, value in source.items() if key != TOKEN_ENV}
        self.process: asyncio.subprocess.Process | None = None
        self._pending: dict[types.RequestId, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._killed = asyncio.Event()
        self._closing = False
        self._hidden_names: set[str] = set()

    # -- session ------------------------------------------------------------------------------
    async def run(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        kill_entry: list[RevocationEntry] = []

        def on_kill(entry: RevocationEntry) -> None:  # the watcher's thread
            kill_entry.append(entry)
            with contextlib.suppress(RuntimeError):  # the session is over, its loop closed
                loop.call_soon_threadsafe(self._killed.set)

        self.guard.on_kill(on_kill)
        if self._killed.is_set() or self.guard.killed:
            logger.error("the passport is revoked; the MCP server is not started")
            return Outcome.REFUSED
        self.process = await start_server(self.command, self.env)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._client = _Pipe(client_out)
        self._server = _Pipe(self.process.stdin)
        from_client = asyncio.create_task(self._relay_client(client_in))
        from_server = asyncio.create_task(self._relay_server(self.process.stdout))
        killed = asyncio.create_task(self._killed.wait())
        try:
            await asyncio.wait(
                {from_client, from_server, killed}, return_when=asyncio.FIRST_COMPLETED
            )
            if killed.done():
                outcome = Outcome.KILLED
                reason = kill_entry[0].describe() if kill_entry else "revoked"
                logger.error(
                    "passport %s stopped (%s): closing the MCP session", self.guard.jti, reason
                )
                await self._end_session(
                    PASSPORT_REFUSED, f"the agent's passport was revoked: {reason}"
                )
                await stop_process(self.process, self.limits.grace, close_stdin_first=False)
            elif from_client.done():
                outcome = Outcome.CLIENT_CLOSED
                await stop_process(self.process, self.limits.grace, close_stdin_first=True)
            else:
                outcome = Outcome.SERVER_ENDED
                logger.warning("the MCP server ended the session")
                await self._end_session(types.INTERNAL_ERROR, "the MCP server ended the session")
                await stop_process(self.process, self.limits.grace, close_stdin_first=True)
        finally:
            self._closing = True
            for task in (from_client, from_server, killed, *self._tasks):
                task.cancel()
            await asyncio.gather(
                from_client, from_server, killed, *self._tasks, return_exceptions=True
            )
            if self.process.returncode is None:
                await stop_process(self.process, self.limits.grace, close_stdin_first=False)
            for pending in self._pending.values():
                if pending.timer is not None:
                    pending.timer.cancel()
        return outcome

    async def _end_session(self, code: int, why: str) -> None:
        """Answer every open request with an error, then close the client's pipe."""
        self._closing = True
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry.timer is not None:
                entry.timer.cancel()

        async def answer_all() -> None:
            for ident in pending:
                await self._client.send(error_response(ident, code, why))

        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            await asyncio.wait_for(answer_all(), 1.0)  # a client that stops reading: no wait
        self._client.writer.close()

    # -- client → server ----------------------------------------------------------------------
    async def _relay_client(self, reader: asyncio.StreamReader) -> None:
        """Until the client closes its side or stops reading ours."""
        with contextlib.suppress(OSError, RuntimeError):  # the client went away mid-write
            async for line in read_lines(reader, self.limits.max_message_bytes):
                if isinstance(line, _Oversized):
                    limit = self.limits.max_message_bytes
                    await self._client.send(
                        error_response(
                            None, types.INVALID_REQUEST, f"message larger than {limit} bytes"
                        )
                    )
                    continue
                message = parse_message(line)
                if isinstance(message, Malformed):
                    await self._client.send(message.error)
                elif isinstance(message, types.JSONRPCRequest):
                    await self._client_request(message)
                elif isinstance(message, types.JSONRPCNotification):
                    await self._client_notification(message)
                else:  # the client's answer to one of the server's requests
                    await self._to_server(message)

    async def _client_request(self, request: types.JSONRPCRequest) -> None:
        refusal = self._refusal(request)
        if refusal is not None:
            await self._client.send(refusal)
            return
        timer = None
        if request.method not in UNTIMED_METHODS:
            timer = asyncio.get_running_loop().call_later(
                self.limits.call_timeout, self._timed_out, request.id
            )
        self._pending[request.id] = _Pending(request.method, timer)
        await self._to_server(request)

    def _refusal(self, request: types.JSONRPCRequest) -> types.JSONRPCMessage | None:
        """The answer that stops ``request`` at the gateway, or None to relay it."""
        ident, method, params = request.id, request.method, request.params or {}
        if ident in self._pending:
            return error_response(
                ident, types.INVALID_REQUEST, f"request id {ident!r} is already in use"
            )
        if len(self._pending) >= self.limits.max_in_flight:
            return error_response(
                ident,
                TOO_MANY_REQUESTS,
                f"more than {self.limits.max_in_flight} requests in flight",
            )
        if method == "tools/call":
            return self._tool_refusal(ident, params)
        if method in ("resources/read", "resources/subscribe"):
            return self._checked(ident, f"resource:{self.server}", params.get("uri"), "uri")
        if method == "prompts/get":
            return self._checked(ident, f"prompt:{self.server}", params.get("name"), "name")
        if method in PASSED_METHODS or method in _FILTERS:
            return None
        return error_response(
            ident,
            types.METHOD_NOT_FOUND,
            f"{method} is not allowed through the agent-passport gateway",
        )

    def _tool_refusal(
        self, ident: types.RequestId, params: Mapping[str, Any]
    ) -> types.JSONRPCMessage | None:
        name, arguments = params.get("name"), params.get("arguments")
        action = f"tool:{self.server}"
        if not isinstance(name, str) or not (arguments is None or isinstance(arguments, dict)):
            self._record_refusal(action, None, "malformed tools/call (params.name, .arguments)")
            return error_response(
                ident,
                types.INVALID_PARAMS,
                "tools/call needs params.name (text) and params.arguments (object)",
            )
        names = sorted(arguments or {})
        details: dict[str, Any] = {"arguments": names[:MAX_ARGUMENT_NAMES]}
        if len(names) > MAX_ARGUMENT_NAMES:
            details["more_arguments"] = len(names) - MAX_ARGUMENT_NAMES
        if not TOOL_NAME.fullmatch(name):
            reason = (
                f"tool name {name[:80]!r} is outside the MCP tool-name grammar "
                "([A-Za-z0-9._-]{1,128}), so no scope rule can name it"
            )
            logger.warning("refused %s: %s", action, reason)
            self._record_refusal(action, name[:200], reason, details)
            return refused_tool_result(ident, f"agent-passport refused the call: {reason}")
        try:
            self.guard.check(action, name, details=details)
        except GuardError as exc:
            return refused_tool_result(ident, f"agent-passport refused {action}:{name}: {exc}")
        return None

    def _record_refusal(
        self, action: str, resource: str | None, reason: str, details: dict[str, Any] | None = None
    ) -> None:
        """A call refused before the guard could be asked (it cannot be expressed as a check)
        is still in the action log."""
        if self.guard.reporter is not None:
            self.guard.reporter.record(
                time.time(), action, resource, self.guard.jurisdiction, False, reason, details
            )

    def _checked(
        self, ident: types.RequestId, action: str, resource: object, what: str
    ) -> types.JSONRPCMessage | None:
        if not isinstance(resource, str) or not resource:
            return error_response(
                ident, types.INVALID_PARAMS, f"params.{what} must be non-empty text"
            )
        try:
            self.guard.check(action, resource)
        except GuardError as exc:
            return error_response(
                ident, PASSPORT_REFUSED, f"agent-passport refused {action}:{resource}: {exc}"
            )
        return None

    async def _client_notification(self, notification: types.JSONRPCNotification) -> None:
        if notification.method not in CLIENT_NOTIFICATIONS:
            logger.info("dropped the client's notification %s", notification.method[:80])
            return
        if notification.method == "notifications/cancelled" and notification.params:
            self._forget(notification.params.get("requestId"))
        await self._to_server(notification)

    async def _to_server(self, message: types.JSONRPCMessage) -> None:
        """Relay to the server; if it is gone, the server side's relay ends the session."""
        with contextlib.suppress(OSError, RuntimeError):
            await self._server.send(message)

    def _forget(self, ident: object) -> _Pending | None:
        if not isinstance(ident, str | int):
            return None
        pending = self._pending.pop(ident, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        return pending

    def _timed_out(self, ident: types.RequestId) -> None:
        pending = self._pending.pop(ident, None)
        if pending is None or self._closing:
            return
        seconds = self.limits.call_timeout
        message = f"the MCP server did not answer {pending.method} within {seconds:g} s"
        logger.warning("%s (request %r); cancelled", message, ident)
        cancel = types.JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/cancelled",
            params={"requestId": ident, "reason": message},
        )
        self._spawn(self._client.send(error_response(ident, types.REQUEST_TIMEOUT, message)))
        self._spawn(self._server.send(cancel))

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(_quietly(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- server → client ----------------------------------------------------------------------
    async def _relay_server(self, reader: asyncio.StreamReader) -> None:
        """Until the server closes its stdout (it exited)."""
        async for line in read_lines(reader, self.limits.max_message_bytes):
            if isinstance(line, _Oversized):
                logger.warning(
                    "dropped a %d-byte message from the MCP server (limit %d)",
                    line.size,
                    self.limits.max_message_bytes,
                )
                continue
            message = parse_message(line)
            if isinstance(message, Malformed):
                logger.warning(
                    "dropped a malformed line from the MCP server: %s", message.error.error.message
                )
                continue
            if self._closing:
                continue
            if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                pending = self._forget(message.id)
                if pending is None:
                    continue  # answered already (timed out, cancelled) or never asked
                if isinstance(message, types.JSONRPCResponse) and pending.method in _FILTERS:
                    message = self._filtered(pending.method, message)
            with contextlib.suppress(OSError, RuntimeError):  # the client is gone: run() ends
                await self._client.send(message)

    def _filtered(self, method: str, response: types.JSONRPCResponse) -> types.JSONRPCResponse:
        key, domain, name_field = _FILTERS[method]
        items = response.result.get(key)
        if not isinstance(items, list):
            return response
        action = f"{domain}:{self.server}"
        kept = [item for item in items if self._listable(action, item, name_field)]
        if len(kept) < len(items):
            logger.info(
                "%s: %d of %d hidden by the passport", method, len(items) - len(kept), len(items)
            )
        return types.JSONRPCResponse(
            jsonrpc="2.0", id=response.id, result={**response.result, key: kept}
        )

    def _listable(self, action: str, item: object, name_field: str) -> bool:
        name = item.get(name_field) if isinstance(item, dict) else None
        if not isinstance(name, str):
            return False
        if name_field == "name" and action.startswith("tool:") and not TOOL_NAME.fullmatch(name):
            if name not in self._hidden_names and len(self._hidden_names) < 1000:
                self._hidden_names.add(name)  # said once per name, not at every listing
                logger.warning(
                    "hid tool %r: its name is outside the MCP tool-name grammar", name[:80]
                )
            return False
        return self.guard.policy.decide(action, name, self.guard.jurisdiction).allowed


# method → (result key, rule domain, the field the rule's resource is matched on)
_FILTERS = {
    "tools/list": ("tools", "tool", "name"),
    "prompts/list": ("prompts", "prompt", "name"),
    "resources/list": ("resources", "resource", "uri"),
}


async def _quietly(coroutine: Any) -> None:
    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
        await coroutine


# -- processes and pipes --------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], object] | None:
    """A preexec function for the server's child: SIGKILL when the gateway dies (even by
    SIGKILL). libc is looked up here, in the parent: the child, forked from a process with
    threads, only makes the one call. None where prctl does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def start_server(
    command: Sequence[str], env: Mapping[str, str]
) -> asyncio.subprocess.Process:
    """The MCP server in a process group of its own, its stderr on ours (its log)."""
    return await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
        preexec_fn=_die_with_parent(),
        limit=READ_CHUNK,
    )


async def stop_process(
    process: asyncio.subprocess.Process, grace: float, *, close_stdin_first: bool
) -> None:
    """Stop the server's process group: close its stdin and wait ``grace`` (a polite end, MCP's
    stdio shutdown) if asked, then SIGTERM, then SIGKILL after ``grace``."""
    if close_stdin_first and process.stdin is not None:
        process.stdin.close()
        if await _exited(process, grace):
            _signal_group(process, signal.SIGKILL)  # leftovers of its group
            return
    _signal_group(process, signal.SIGTERM)
    if not await _exited(process, grace):
        logger.warning(
            "the MCP server (pid %d) ignored SIGTERM for %g s: SIGKILL", process.pid, grace
        )
        _signal_group(process, signal.SIGKILL)
        await process.wait()
    _signal_group(process, signal.SIGKILL)


async def _exited(process: asyncio.subprocess.Process, timeout: float) -> bool:
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        return False
    return True


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def open_stdio(in_fd: int, out_fd: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Asyncio streams on the client's pipes (or sockets); ValueError for anything the event
    loop cannot poll (a regular file, /dev/null)."""
    for fd in (in_fd, out_fd):
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(fd, selectors.EVENT_READ)
            except (OSError, ValueError) as exc:
                raise ValueError(f"fd {fd} cannot be polled ({exc})") from exc
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        os.fdopen(out_fd, "wb", buffering=0),
    )
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


async def serve_stdio(gateway: Gateway) -> Outcome:
    """Run ``gateway`` on this process's stdin/stdout. The protocol gets private copies of fds
    0 and 1, and fd 1 then points at stderr, so a stray print cannot corrupt the wire.
    SIGTERM, SIGINT and SIGHUP end the session as if the client had closed it."""
    wire_in, wire_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        reader, writer = await open_stdio(wire_in, wire_out)
    except (OSError, ValueError) as exc:
        raise CLIError(
            f"stdin and stdout must be pipes or sockets, as an MCP client's: {exc}"
        ) from exc
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, reader.feed_eof)
    try:
        return await gateway.run(reader, writer)
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


def run(gateway: Gateway) -> Outcome:
    return asyncio.run(serve_stdio(gateway))


def cmd_mcp_proxy(args: argparse.Namespace) -> int:
    """``agent-passport mcp-proxy``: exit code 0 when the client ended the session, 3 when the
    MCP server ended it, EXIT_KILLED when the passport was revoked during the session,
    EXIT_REFUSED when it was revoked before, 1 for an invalid passport, 2 for bad input."""
    command = list(args.server_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CLIError("give the MCP server's command after --, e.g. -- python server.py")
    try:
        server = check_server_name(args.server_name)
        given = {name: getattr(args, name, None) for name in LIMIT_OPTIONS}
        limits = GatewayLimits(
            **{name: value for name, value in given.items() if value is not None}
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    with open_session(args) as session:
        gateway = Gateway(session.guard, server, command, limits=limits)
        try:
            outcome = run(gateway)
        except OSError as exc:
            raise CLIError(f"cannot run the MCP server {command[0]!r}: {exc}") from exc
    if outcome in (Outcome.KILLED, Outcome.REFUSED):
        print("mcp-proxy: the passport was revoked; the MCP session is closed", file=sys.stderr)
    return int(outcome)
