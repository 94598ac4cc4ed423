"""The MCP gateway (``agent-passport mcp-proxy``) between the official mcp client and a real MCP
server, both real processes, under a passport issued by the live registry."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

import agent_passport
from actions.models import ActionEvent
from agent_passport.cli import main as cli
from agent_passport.session import EXIT_REFUSED
from killswitch import publisher, services
from passports import signing
from tests.killswitch.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
SERVER = Path(__file__).with_name("mcp_files_server.py")
SDK_DIR = Path(agent_passport.__file__).resolve().parents[1]  # the SDK these tests import
SCOPE = [
    "tool:files:echo",
    "!tool:files:delete_*",
    "tool:files:wait",
    "resource:files:notes://public",
    "prompt:files:greet",
]


class Gateway:
    """How an agent's MCP client is configured to use the gateway: the command it launches."""

    def __init__(self, url: str, redis_url: str, token: str, tmp_path: Path) -> None:
        self.pid_file = tmp_path / "server.pid"
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(signing.jwks()))
        self.env = {"AGENT_PASSPORT_TOKEN": token, "PYTHONPATH": str(SDK_DIR)}
        self.args = [
            "-m",
            "agent_passport",
            "mcp-proxy",
            "--registry",
            url,
            "--jwks-file",
            str(jwks),
            "--redis",
            redis_url,
            "--jurisdiction",
            "DE",
        ]

    def argv(self, *options: str) -> list[str]:
        server = [sys.executable, str(SERVER), "--pid-file", str(self.pid_file)]
        return [*self.args, "--server-name", "files", *options, "--", *server]

    def params(self, *options: str) -> StdioServerParameters:
        return StdioServerParameters(command=sys.executable, args=self.argv(*options), env=self.env)

    def popen(self, *options: str) -> subprocess.Popen:
        """The gateway driven with raw lines (for malformed input), in its own process group."""
        return subprocess.Popen(
            [sys.executable, *self.argv(*options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **self.env},
            start_new_session=True,
        )

    def server_pid(self) -> int:
        assert wait_until(lambda: self.pid_file.exists() and self.pid_file.read_text(), 15)
        return int(self.pid_file.read_text())


@pytest.fixture
def gateway(live_server, settings, issue, tmp_path, revocation_heartbeat):
    settings.PASSPORT_ISSUER = live_server.url
    signing.active_signing_key()
    publisher.reconcile()
    token = issue(scope=SCOPE)["token"]
    return Gateway(live_server.url, settings.REDIS_URL, token, tmp_path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def text_of(result) -> str:
    return " ".join(block.text for block in result.content)


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28 discover, initialize handshake
def test_allowed_tool_works_denied_tool_is_refused_and_the_listing_is_filtered(
    gateway, agent, mode
):
    async def session():
        async with Client(gateway.params(), mode=mode) as client:
            listed = await client.list_tools()
            echoed = await client.call_tool("echo", {"text": "hi", "times": 2})
            refused = await client.call_tool("delete_everything", {"path": "/", "confirm": True})
            odd = await client.call_tool("rm *", {})
            return [tool.name for tool in listed.tools], echoed, refused, odd

    names, echoed, refused, odd = asyncio.run(session())

    assert names == ["echo", "wait"]  # delete_everything and "rm *" are hidden
    assert not echoed.is_error and text_of(echoed) == "hihi"
    assert refused.is_error
    assert "denied by rule '!tool:files:delete_*'" in text_of(refused)
    assert odd.is_error and "tool-name grammar" in text_of(odd)
    assert wait_until(lambda: ActionEvent.objects.filter(agent=agent).count() >= 3, 10)
    events = {
        event.resource: event
        for event in ActionEvent.objects.filter(agent=agent, action="tool:files")
    }
    assert events["echo"].decision == "allow"
    assert events["echo"].details == {"arguments": ["text", "times"]}
    assert events["delete_everything"].decision == "deny"
    assert events["delete_everything"].details == {"arguments": ["confirm", "path"]}
    assert "!tool:files:delete_*" in events["delete_everything"].reason
    assert events["rm *"].decision == "deny"
    logged = json.dumps([[e.reason, e.details] for e in events.values()])
    assert "hihi" not in logged and '"/"' not in logged  # names, never values
    assert not alive(gateway.server_pid())


def test_resources_and_prompts_are_checked_and_filtered(gateway, agent):
    async def session():
        async with Client(gateway.params(), mode="legacy") as client:
            listed = await client.list_resources()
            public = await client.read_resource("notes://public")
            with pytest.raises(MCPError) as secret:
                await client.read_resource("notes://secret")
            prompt = await client.get_prompt("greet", {"name": "Ada"})
            with pytest.raises(MCPError) as completion:
                await client.complete(
                    {"type": "ref/prompt", "name": "greet"}, {"name": "name", "value": "A"}
                )
            return listed, public, secret.value, prompt, completion.value

    listed, public, secret, prompt, completion = asyncio.run(session())
    assert [str(resource.uri) for resource in listed.resources] == ["notes://public"]
    assert public.contents[0].text == "a public note"
    assert "resource:files:notes://secret" in str(secret) and "scope" in str(secret)
    assert "Ada" in prompt.messages[0].content.text
    assert "not allowed through the agent-passport gateway" in str(completion)


def test_a_kill_closes_the_session_and_stops_the_server(gateway, agent):
    outcome = {}

    async def session():
        async with Client(gateway.params("--grace", "1"), mode="legacy") as client:
            assert text_of(await client.call_tool("echo", {"text": "before"})) == "before"
            outcome["server"] = gateway.server_pid()
            waiting = asyncio.ensure_future(client.call_tool("wait", {"seconds": 30}))
            await asyncio.sleep(0.3)
            outcome["revoked_at"] = time.monotonic()
            await asyncio.to_thread(
                services.revoke,
                target=services.Target("agent", str(agent.pk)),
                reason="tunnel opened",
                actor=None,
                source="api",
            )
            try:
                outcome["pending"] = await waiting
            except MCPError as exc:
                outcome["pending"] = exc
            outcome["answered_at"] = time.monotonic()
            try:
                outcome["after"] = await client.call_tool("echo", {"text": "after"})
            except MCPError as exc:
                outcome["after"] = exc

    asyncio.run(session())
    assert isinstance(outcome["pending"], MCPError), outcome
    assert "revoked" in str(outcome["pending"]) and "tunnel opened" in str(outcome["pending"])
    assert outcome["answered_at"] - outcome["revoked_at"] < 5
    assert isinstance(outcome["after"], MCPError)  # the connection is closed
    assert wait_until(lambda: not alive(outcome["server"]), 5)


def test_stale_revocation_state_refuses_calls(gateway, agent, revocation_heartbeat):
    async def session():
        async with Client(gateway.params(), mode="legacy") as client:
            assert not (await client.call_tool("echo", {"text": "fresh"})).is_error
            revocation_heartbeat.stop()
            await asyncio.sleep(3)  # past --max-staleness (2 s)
            stale = await client.call_tool("echo", {"text": "stale"})
            revocation_heartbeat.start()
            return stale

    stale = asyncio.run(session())
    assert stale.is_error and "revocations cannot be ruled out" in text_of(stale)


def exchange(process: subprocess.Popen, lines: list[bytes], replies: int) -> list[dict]:
    """Send ``lines``, read ``replies`` JSON lines back (a watchdog kills a hung gateway)."""
    for line in lines:
        process.stdin.write(line)
    process.stdin.flush()
    watchdog = _Watchdog(process, 15)
    try:
        return [json.loads(process.stdout.readline()) for _ in range(replies)]
    finally:
        watchdog.cancel()


class _Watchdog:
    def __init__(self, process: subprocess.Popen, seconds: float) -> None:
        import threading

        self._timer = threading.Timer(seconds, lambda: os.killpg(process.pid, signal.SIGKILL))
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


@contextlib.contextmanager
def raw_gateway(gateway: Gateway, *options: str):
    """The gateway driven with raw lines; its process group is killed if a test leaves it."""
    process = gateway.popen(*options)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def end_cleanly(gateway: Gateway, process: subprocess.Popen) -> None:
    """The client closes its side: exit 0, no traceback, no server left."""
    server = gateway.server_pid()
    process.stdin.close()
    assert process.wait(15) == 0
    stderr = process.stderr.read().decode()
    assert "Traceback" not in stderr, stderr
    assert wait_until(lambda: not alive(server), 5)


INITIALIZE = (
    b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}\n'
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
)


def test_malformed_input_gets_json_rpc_errors_and_the_gateway_keeps_serving(gateway, agent):
    with raw_gateway(gateway, "--max-message-bytes", "4096") as process:
        (init,) = exchange(process, [INITIALIZE], 1)
        assert init["id"] == 0 and "result" in init
        replies = exchange(
            process,
            [
                b"garbage\n",
                b"\xff\xfe\n",
                b'{"jsonrpc":"2.0","id":7,"method":5}\n',
                b"[" * 5000 + b"\n",  # oversized (and deeply nested)
                b'{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":1}}\n',
                b'{"jsonrpc":"2.0","id":9,"method":"tasks/list"}\n',
                b'{"jsonrpc":"2.0","id":10,"method":"ping"}\n',
            ],
            6,
        )
        assert [r["error"]["code"] for r in replies[:5]] == [-32700, -32700, -32600, -32600, -32602]
        assert replies[2]["id"] == 7 and "4096 bytes" in replies[3]["error"]["message"]
        assert replies[4]["id"] == 8
        assert replies[5]["id"] == 9 and replies[5]["error"]["code"] == -32601
        (pong,) = exchange(process, [], 1)
        assert pong == {"jsonrpc": "2.0", "id": 10, "result": {}}
        end_cleanly(gateway, process)
    malformed = ActionEvent.objects.filter(agent=agent, action="tool:files", decision="deny")
    assert wait_until(lambda: malformed.filter(reason__startswith="malformed").exists(), 10)


def test_bad_command_lines_exit_2_with_a_sentence(gateway, capsys, monkeypatch):
    monkeypatch.setenv("AGENT_PASSPORT_TOKEN", "unused: refused before the passport is read")
    for options, message in [
        (["--server-name", "files:x", "--", "true"], "must not contain ':'"),
        (["--server-name", "Files", "--", "true"], "lower-case"),
        (["--server-name", "files", "--max-message-bytes", "10", "--", "true"], "at least 1024"),
        (["--server-name", "files"], "command after --"),
    ]:
        assert cli(["mcp-proxy", *gateway.args[3:], *options]) == 2
        said = capsys.readouterr().err
        assert message in said and "Traceback" not in said, said


def test_without_the_mcp_extra_the_cli_says_what_to_install(gateway):
    blocked = "import sys; sys.modules['mcp_types'] = None; from agent_passport.cli import main; "
    program = blocked + "sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", program, *gateway.args[2:], "--server-name", "files", "--", "true"],
        env={**os.environ, **gateway.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "agent-passport[mcp]" in result.stderr, result.stderr


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
METHODS = st.sampled_from(
    [
        "tools/call",
        "tools/list",
        "resources/read",
        "prompts/get",
        "ping",
        "initialize",
        "completion/complete",
        "notifications/cancelled",
        "nonsense",
    ]
)
MESSAGES = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", 2])},
    optional={
        "id": st.integers() | st.text(max_size=5) | st.none() | st.booleans(),
        "method": METHODS | JSON,
        "params": st.fixed_dictionaries(
            {},
            optional={
                "name": st.sampled_from(["echo", "delete_everything", "rm *"]) | JSON,
                "arguments": JSON,
                "uri": JSON,
                "requestId": JSON,
            },
        )
        | JSON,
        "result": JSON,
        "error": JSON,
    },
)
LINES = st.one_of(
    st.binary(max_size=300).map(lambda data: data.replace(b"\n", b" ")),
    MESSAGES.map(lambda message: json.dumps(message).encode()),
    JSON.map(lambda value: json.dumps(value).encode()),
)


def test_fuzzed_lines_never_break_the_gateway(gateway, agent):
    """Whatever a line holds, the gateway answers a ping after it, only with JSON-RPC."""
    sent = []
    with raw_gateway(gateway, "--max-message-bytes", "2048", "--call-timeout", "3") as process:
        exchange(process, [INITIALIZE], 1)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(LINES)
        def one_line(line):
            sent.append(line)
            ping = f"fuzz-ping-{len(sent)}"
            request = {"jsonrpc": "2.0", "id": ping, "method": "ping"}
            process.stdin.write(line + b"\n" + json.dumps(request).encode() + b"\n")
            process.stdin.flush()
            for _ in range(20):
                (reply,) = exchange(process, [], 1)
                assert reply["jsonrpc"] == "2.0"
                if reply.get("id") == ping:
                    assert reply == {"jsonrpc": "2.0", "id": ping, "result": {}}
                    return
            raise AssertionError(f"no answer to {ping} after {line!r}")

        one_line()
        end_cleanly(gateway, process)


def test_a_slow_call_times_out_and_a_server_that_exits_ends_the_session(gateway):
    with raw_gateway(gateway, "--call-timeout", "1") as process:
        exchange(process, [INITIALIZE], 1)
        call = {"name": "wait", "arguments": {"seconds": 30}}
        (late,) = exchange(
            process,
            [
                json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}
                ).encode()
                + b"\n"
            ],
            1,
        )
        assert late["id"] == 1 and late["error"]["code"] == -32001
        assert "did not answer tools/call within 1 s" in late["error"]["message"]
        server = gateway.server_pid()
        os.kill(server, signal.SIGKILL)  # the server dies: the session ends, exit code 3
        assert process.wait(15) == 3
    assert process.stdout.read() == b""  # the client's pipe is closed
    assert "Traceback" not in process.stderr.read().decode()


def run_gateway(gateway: Gateway, argv: list[str], **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv],
        env={**os.environ, **gateway.env},
        capture_output=True,
        text=True,
        timeout=60,
        **options,
    )


def test_a_server_that_cannot_start_or_stdin_that_is_a_file_exit_2(gateway, tmp_path):
    missing = run_gateway(
        gateway,
        [*gateway.args, "--server-name", "files", "--", "/nonexistent/server"],
        stdin=subprocess.PIPE,
    )
    assert missing.returncode == 2, missing.stderr
    assert "cannot run the MCP server '/nonexistent/server'" in missing.stderr
    assert "Traceback" not in missing.stderr
    regular = tmp_path / "requests.jsonl"
    regular.write_text('{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    with regular.open() as stdin:
        filed = run_gateway(gateway, gateway.argv(), stdin=stdin)
    assert filed.returncode == 2 and "must be pipes or sockets" in filed.stderr, filed.stderr
    assert "Traceback" not in filed.stderr and not gateway.pid_file.exists()
    null = run_gateway(gateway, gateway.argv(), stdin=subprocess.DEVNULL)
    assert null.returncode == 2 and "must be pipes or sockets" in null.stderr, null.stderr


def test_a_revoked_passport_starts_no_server(gateway, agent):
    services.revoke(
        target=services.Target("agent", str(agent.pk)), reason="stop it", actor=None, source="api"
    )
    refused = run_gateway(gateway, gateway.argv(), stdin=subprocess.PIPE)
    assert refused.returncode == EXIT_REFUSED, refused.stderr
    assert "revoked" in refused.stderr and "Traceback" not in refused.stderr
    assert not gateway.pid_file.exists()


def test_the_server_dies_with_a_gateway_killed_outright(gateway):
    call = {"name": "wait", "arguments": {"seconds": 30}}  # busy: EOF alone would not stop it
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}
    with raw_gateway(gateway) as process:
        exchange(process, [INITIALIZE], 1)
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
        server = gateway.server_pid()
        time.sleep(0.5)
        process.kill()  # SIGKILL: no clean-up code of the gateway runs
        process.wait(15)
    assert wait_until(lambda: not alive(server), 5)
