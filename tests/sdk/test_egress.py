"""The egress proxy on real loopback sockets, with a real guard (real Redis, the service's
heartbeat) reporting to the live registry: allowed and denied connections, the action log, a
kill rule that stops the proxy, malformed and fuzzed requests, its limits, and the CLI."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actions.models import ActionEvent
from agent_passport.egress import EXIT_EXPIRED, EXIT_KILLED, EXIT_REFUSED, EgressProxy
from agent_passport.guard import Guard
from agent_passport.reporter import ActionReporter
from killswitch import publisher, services
from passports.models import Agent
from tests.conftest import api_client_for
from tests.killswitch.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HERE = Path(__file__).resolve().parent
SCOPE = ["net:connect:127.0.0.1:*", "!net:connect:*:22", "fs:read:/workspace/**"]


@pytest.fixture
def origin():
    """A loopback HTTP origin in a process (group) of its own; yields its port."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "egress_origin.py")],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield int(process.stdout.readline())
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


@pytest.fixture
def open_guard(live_server, issue, pinned_keys, settings, watcher_for, tmp_path):
    """A guard for a newly issued passport, reporting to the live registry's action log."""
    publisher.reconcile()
    opened = []

    def _open(scope=SCOPE, **options):
        token = issue(scope=scope, jurisdiction=["EU"])["token"]
        reporter = ActionReporter(
            f"{live_server.url}/api/v1/actions", token, spill_path=tmp_path / f"{len(opened)}"
        )
        guard = Guard(
            token,
            keys=pinned_keys,
            issuer=settings.PASSPORT_ISSUER,
            audience=settings.PASSPORT_AUDIENCE,
            watcher=watcher_for(),
            jurisdiction="DE",
            reporter=reporter,
            **options,
        )
        reporter.start()
        opened.append((guard, reporter))
        return guard

    yield _open
    for guard, reporter in opened:
        reporter.close()
        guard.close()


@pytest.fixture
def start_proxy(open_guard):
    started = []

    def _start(guard=None, **limits):
        proxy = EgressProxy(guard or open_guard(), **limits).start()
        started.append(proxy)
        return proxy

    yield _start
    for proxy in started:
        proxy.stop()


def dial(proxy: EgressProxy, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def exchange(proxy: EgressProxy, data: bytes, *, end: bool = False) -> bytes:
    """Send ``data`` (then EOF if ``end``) and read until the proxy closes."""
    with dial(proxy) as sock:
        sock.sendall(data)
        if end:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response[9:12])


def tunnel(proxy: EgressProxy, target: str) -> tuple[socket.socket, int, bytes]:
    """CONNECT; returns the socket, the status and the whole answer when it is not 200."""
    sock = dial(proxy)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    code = status(head)
    if code != 200:
        head += read_all(sock)
    return sock, code, head


def get_through(sock: socket.socket, path: str) -> dict:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n".encode())
    response = read_all(sock)
    assert status(response) == 200, response
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def events(agent, **filters):
    return list(ActionEvent.objects.filter(agent=agent, action="net:connect", **filters))


def test_allowed_origin_passes_for_connect_and_plain_http(start_proxy, origin, agent):
    proxy = start_proxy()
    sock, code, _ = tunnel(proxy, f"127.0.0.1:{origin}")
    with sock:
        assert code == 200
        assert get_through(sock, "/through-the-tunnel")["path"] == "/through-the-tunnel"

    tunnelled = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    tunnelled.set_tunnel("127.0.0.1", origin)  # how the standard library does https via proxy
    tunnelled.request("GET", "/set-tunnel")
    assert json.loads(tunnelled.getresponse().read())["path"] == "/set-tunnel"
    tunnelled.close()

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    with opener.open(f"http://127.0.0.1:{origin}/plain?x=1", timeout=10) as response:
        echo = json.loads(response.read())
    assert echo["path"] == "/plain?x=1" and echo["headers"]["Connection"] == "close"
    with opener.open(f"http://127.0.0.1:{origin}/upload", data=b"a body", timeout=10) as response:
        assert json.loads(response.read())["body"] == "a body"

    chunked = (
        f"PUT http://127.0.0.1:{origin}/chunks HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n"
        "Transfer-Encoding: chunked\r\nProxy-Authorization: Basic c2VjcmV0\r\n\r\n"
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    ).encode()
    response = exchange(proxy, chunked)
    echo = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert status(response) == 200 and echo["body"] == "hello world"
    assert "Proxy-Authorization" not in echo["headers"]  # hop-by-hop: never to the origin

    assert proxy.guard.reporter.flush(10)
    allowed = events(agent, decision="allow", resource=f"127.0.0.1:{origin}")
    assert sorted(event.details["proxy"] for event in allowed) == [
        "CONNECT",
        "CONNECT",
        "GET",
        "POST",
        "PUT",
    ]


def test_large_bodies_stream_both_ways_and_arrive_whole(start_proxy, origin):
    proxy = start_proxy()
    body = bytes(range(256)) * 12_000  # 3 MB up, about 3 MB (as JSON text) back down
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    with opener.open(f"http://127.0.0.1:{origin}/big", data=body, timeout=30) as response:
        assert json.loads(response.read())["body"] == body.decode("latin-1")


@pytest.mark.parametrize("body", [b"zz\r\nhello\r\n", b"1" * 40_000, b"5\r\nhel"])
def test_a_malformed_or_broken_off_body_ends_the_exchange(start_proxy, origin, body):
    proxy = start_proxy()  # idle timeout 300 s: ending must not wait for it
    head = (
        f"PUT http://127.0.0.1:{origin}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with dial(proxy, timeout=10) as sock:
        sock.sendall(head + body)
        if body.endswith(b"hel"):
            sock.shutdown(socket.SHUT_WR)  # the client gives up mid-chunk
        try:
            assert read_all(sock) == b""  # closed without an answer from the origin
        except ConnectionResetError:
            pass
    assert wait_until(lambda: proxy.open_connections == 0, timeout=5)


def test_denied_connect_is_403_naming_the_rule_and_logged_as_a_deny(start_proxy, agent):
    proxy = start_proxy()
    sock, code, answer = tunnel(proxy, "127.0.0.1:22")
    sock.close()
    assert code == 403
    assert b"denied by rule '!net:connect:*:22'" in answer
    response = exchange(proxy, b"GET http://203.0.113.9/ HTTP/1.1\r\nHost: 203.0.113.9\r\n\r\n")
    assert status(response) == 403 and b"not in the passport's scope" in response
    assert proxy.guard.reporter.flush(10)
    (denied,) = events(agent, decision="deny", resource="127.0.0.1:22")
    assert "!net:connect:*:22" in denied.reason and denied.details == {"proxy": "CONNECT"}
    assert events(agent, decision="deny", resource="203.0.113.9:80")


def test_a_name_is_refused_when_it_resolves_to_an_explicitly_denied_address(
    start_proxy, open_guard, origin, agent
):
    guard = open_guard(["net:connect:localhost:*", "!net:connect:127.0.0.1:*"])
    proxy = start_proxy(guard)
    sock, code, answer = tunnel(proxy, f"localhost:{origin}")
    sock.close()
    assert code == 403 and b"'!net:connect:127.0.0.1:*'" in answer
    assert guard.reporter.flush(10)
    assert events(agent, decision="allow", resource=f"localhost:{origin}")  # the name: allowed
    (denied,) = events(agent, decision="deny", resource=f"127.0.0.1:{origin}")
    assert denied.details == {"proxy": "CONNECT", "host": "localhost"}


def test_kill_rule_on_a_denied_connect_stops_the_proxy(start_proxy, origin, agent, admin_user):
    created = api_client_for(admin_user).post(
        "/api/v1/rules",
        {"name": "no-ssh", "kind": "deny_pattern", "pattern": "net:connect:*:22"},
        format="json",
    )
    assert created.status_code == 201, created.content
    proxy = start_proxy()
    open_tunnel, code, _ = tunnel(proxy, f"127.0.0.1:{origin}")
    assert code == 200

    sock, code, _ = tunnel(proxy, "203.0.113.9:22")
    sock.close()
    assert code == 403
    assert proxy.guard.wait_for_kill(timeout=10) is not None
    agent.refresh_from_db()
    assert agent.status == Agent.Status.KILLED

    with open_tunnel:  # the tunnel that was open is closed by the proxy
        open_tunnel.settimeout(5)
        try:
            assert open_tunnel.recv(1) == b""
        except ConnectionResetError:
            pass
    assert wait_until(lambda: proxy.open_connections == 0, timeout=5)
    sock, code, answer = tunnel(proxy, f"127.0.0.1:{origin}")
    sock.close()
    assert code == 403 and b"no-ssh" in answer  # the revocation names the rule


def test_stale_revocation_state_fails_closed_with_503(
    start_proxy, open_guard, origin, revocation_heartbeat
):
    proxy = start_proxy(open_guard(max_staleness=1.5))
    revocation_heartbeat.stop()
    try:
        assert wait_until(lambda: proxy.guard.watcher.status().staleness_s > 1.6, timeout=10)
        sock, code, answer = tunnel(proxy, f"127.0.0.1:{origin}")
        sock.close()
        assert code == 503 and b"fail-closed" in answer
    finally:
        revocation_heartbeat.start()
    assert wait_until(lambda: tunnel(proxy, f"127.0.0.1:{origin}")[1] == 200, timeout=10)


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n", 431),
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT 127.1:22 HTTP/1.1\r\n\r\n", 400),
        (b"GET http://127.0.0.1:9/ HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n", 400),  # EOF inside the head
    ],
)
def test_malformed_requests_get_an_error_and_the_proxy_keeps_serving(
    start_proxy, origin, request_bytes, expected
):
    proxy = start_proxy()
    response = exchange(proxy, request_bytes, end=not request_bytes.endswith(b"\r\n\r\n"))
    assert status(response) == expected and b"agent-passport egress proxy: " in response
    sock, code, _ = tunnel(proxy, f"127.0.0.1:{origin}")
    sock.close()
    assert code == 200


def test_slowloris_gets_408(start_proxy, origin):
    proxy = start_proxy(header_timeout=1.0)
    started = time.monotonic()
    with dial(proxy) as sock:
        sock.sendall(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n")
        try:
            for _ in range(100):
                sock.sendall(b"X")
                time.sleep(0.1)
        except OSError:
            pass  # the proxy has answered and closed
        response = read_all(sock)
    assert status(response) == 408
    assert time.monotonic() - started < 8
    assert tunnel(proxy, f"127.0.0.1:{origin}")[1] == 200


def test_connection_limit(start_proxy, origin):
    proxy = start_proxy(max_connections=3)
    held = [tunnel(proxy, f"127.0.0.1:{origin}") for _ in range(3)]
    assert [code for _, code, _ in held] == [200, 200, 200]
    refused = exchange(proxy, f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\n\r\n".encode())
    assert status(refused) == 503 and b"too many connections (limit 3)" in refused
    held[0][0].close()
    assert wait_until(lambda: proxy.open_connections == 2, timeout=5)
    sock, code, _ = tunnel(proxy, f"127.0.0.1:{origin}")
    assert code == 200
    for other in [sock, *(s for s, _, _ in held[1:])]:
        other.close()


def test_idle_tunnel_is_closed(start_proxy, origin):
    proxy = start_proxy(idle_timeout=0.5)
    sock, code, _ = tunnel(proxy, f"127.0.0.1:{origin}")
    with sock:
        assert code == 200
        sock.settimeout(10)
        assert sock.recv(1) == b""


def test_stop_closes_open_tunnels(start_proxy, origin):
    proxy = start_proxy()
    sock, code, _ = tunnel(proxy, f"127.0.0.1:{origin}")
    with sock:
        assert code == 200
        proxy.stop()
        sock.settimeout(5)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    with pytest.raises(OSError):
        dial(proxy, timeout=2)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
HEAD_PIECES = st.sampled_from(
    [
        b"CONNECT ",
        b"GET ",
        b"http://",
        b"127.0.0.1",
        b":",
        b"22",
        b"[::1]",
        b" HTTP/1.1",
        b"\r\n",
        b"\r\n\r\n",
        b"Host: x",
        b"Content-Length: 3",
        b"Transfer-Encoding: chunked",
        b"\x00",
        b"\xff",
        b" ",
        b"@",
        b"%",
    ]
)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.lists(st.one_of(HEAD_PIECES, st.binary(max_size=8)), max_size=30).map(b"".join),
    )
)
def test_fuzzed_requests_get_an_answer_or_a_close_and_the_proxy_keeps_serving(
    start_proxy, origin, caplog, data
):
    proxy = _fuzz_proxy(start_proxy)
    response = exchange(proxy, data, end=True)
    if response:
        assert status(response) in {200, 400, 403, 431, 501, 502, 503, 504}
    sock, code, _ = tunnel(proxy, f"127.0.0.1:{origin}")
    sock.close()
    assert code == 200
    crashes = [r for r in caplog.records if r.name == "agent_passport.egress" and r.exc_info]
    assert not crashes, crashes[0].getMessage()


def _fuzz_proxy(start_proxy) -> EgressProxy:
    """One proxy for all the examples (hypothesis runs them within one fixture instance)."""
    cached = getattr(start_proxy, "proxy", None)
    if cached is None:
        cached = start_proxy.proxy = start_proxy(header_timeout=2.0, connect_timeout=2.0)
    return cached


@pytest.fixture
def cli(live_server, settings, issue, agent, revocation_heartbeat, tmp_path):
    """Start ``agent-passport proxy`` with ``token_file`` or a new passport (issue options as
    keywords) in a process group of its own; returns the process and, once it listens, its
    port (None if it exited instead)."""
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    started = []

    def _start(token_file: Path | None = None, **passport) -> tuple[subprocess.Popen, int | None]:
        if token_file is None:
            token_file = tmp_path / f"token-{len(started)}"
            token_file.write_text(issue(scope=SCOPE, jurisdiction=["EU"], **passport)["token"])
        process = subprocess.Popen(
            [sys.executable, "-m", "agent_passport", "proxy", "--token-file", str(token_file),
             "--registry", live_server.url, "--redis", settings.REDIS_URL,
             "--jurisdiction", "DE", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )  # fmt: skip
        started.append(process)
        line = process.stdout.readline()
        if not line:  # it did not start
            return process, None
        prefix = f"egress proxy for agent {agent.pk} on http://127.0.0.1:"
        assert line.startswith(prefix), line + process.stderr.read()
        return process, int(line.rsplit(":", 1)[1])

    yield _start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_cli_serves_until_sigterm_then_exits_0(cli, origin):
    process, port = cli()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"})
    )
    with opener.open(f"http://127.0.0.1:{origin}/via-cli", timeout=10) as response:
        assert json.loads(response.read())["path"] == "/via-cli"
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0


def test_cli_exits_70_on_a_kill_and_refuses_to_start_once_revoked(cli, agent, tmp_path):
    process, port = cli()
    assert port is not None
    services.revoke(
        target=services.Target("agent", str(agent.pk)), reason="tunnel", actor=None, source="api"
    )
    assert process.wait(15) == EXIT_KILLED
    said = process.stderr.read()
    assert "stopped:" in said and "tunnel" in said and "Traceback" not in said
    again, port = cli(token_file=tmp_path / "token-0")
    assert port is None and again.wait(15) == EXIT_REFUSED
    assert "not started:" in again.stderr.read()


def test_cli_exits_73_when_the_passport_expires(cli):
    process, _ = cli(ttl_seconds=6)
    assert process.wait(20) == EXIT_EXPIRED
    assert "expired" in process.stderr.read()
