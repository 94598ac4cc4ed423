"""The example shell agent is stopped mid-run by a kill; the SDK CLI verifies and checks."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_passport.cli import main as cli
from killswitch import publisher, services
from passports import signing

pytestmark = pytest.mark.django_db(transaction=True)
BASE_DIR = Path(__file__).resolve().parents[2]


def test_killing_the_example_agent_stops_it_mid_run(
    live_server, issue, agent, settings, revocation_heartbeat
):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    token = issue(scope=["proc:exec:*"], jurisdiction=["GLOBAL"])["token"]
    env = {
        **os.environ,
        "AGENT_PASSPORT_TOKEN": token,
        "REDIS_URL": settings.REDIS_URL,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.shell_agent",  # as its docstring and README show it
            "--registry",
            live_server.url,
            "echo step-1",
            "sleep 30",
            "echo never-reached",
        ],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        while not any("$ sleep 30" in line for line in output):
            line = process.stdout.readline()
            assert line, "".join(output)
            output.append(line)
        time.sleep(0.2)
        killed_at = time.monotonic()
        services.revoke(
            target=services.Target("agent", str(agent.pk)),
            reason="tunnel",
            actor=None,
            source="api",
        )
        rest, _ = process.communicate(timeout=10)
        elapsed = time.monotonic() - killed_at
    finally:
        if process.poll() is None:
            process.kill()
    text = "".join(output) + rest
    assert process.returncode == 3, text
    assert "\nstep-1\n" in text and "\nnever-reached\n" not in text  # never executed
    assert "terminating pid" in text and "stopped:" in text and "tunnel" in text
    assert elapsed < 2.0, f"the agent took {elapsed:.2f} s to stop"


@pytest.fixture
def jwks_file(tmp_path, db):
    signing.active_signing_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(signing.jwks()))
    return str(path)


def test_cli_verify_prints_claims(issue, jwks_file, settings, capsys):
    issued = issue()
    args = [
        "verify",
        issued["token"],
        "--jwks-file",
        jwks_file,
        "--issuer",
        settings.PASSPORT_ISSUER,
    ]
    assert cli(args) == 0
    assert json.loads(capsys.readouterr().out) == issued["claims"]


def test_cli_verify_rejects_a_tampered_token(issue, jwks_file, settings, capsys):
    token = issue()["token"]
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    code = cli(["verify", tampered, "--jwks-file", jwks_file, "--issuer", settings.PASSPORT_ISSUER])
    assert code == 1
    assert "invalid passport (bad_signature)" in capsys.readouterr().err


def test_cli_check_scope_and_revocation(
    issue, agent, jwks_file, settings, capsys, revocation_heartbeat
):
    publisher.reconcile()
    token = issue()["token"]
    common = ["--jwks-file", jwks_file, "--issuer", settings.PASSPORT_ISSUER]
    assert cli(["check", token, "fs:write:/workspace/x", "--jurisdiction", "DE", *common]) == 0
    assert cli(["check", token, "net:connect:10.0.0.1:22", "--jurisdiction", "DE", *common]) == 1
    assert "denied by rule '!net:connect:*:22'" in capsys.readouterr().out

    live = [*common, "--redis", settings.REDIS_URL, "--jurisdiction", "DE"]
    assert cli(["check", token, "fs:write:/workspace/x", *live]) == 0
    services.revoke(
        target=services.Target("agent", str(agent.pk)), reason="r", actor=None, source="api"
    )
    assert cli(["check", token, "fs:write:/workspace/x", *live]) == 1
    assert "refused:" in capsys.readouterr().out


def test_cli_input_errors_exit_2(capsys):
    assert cli(["verify", "x", "--jwks-file", "/nonexistent.json", "--issuer", "i"]) == 2
    assert "cannot read JWKS file" in capsys.readouterr().err
    assert cli(["verify", "x", "--issuer", "i"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli(["check"])
    assert exit_info.value.code == 2


def test_cli_watch_needs_the_prefix_there_is_no_shared_default(capsys):
    with pytest.raises(SystemExit) as exited:
        cli(["watch", "--redis", "redis://127.0.0.1:6379/0"])
    assert exited.value.code == 2
    assert "--prefix" in capsys.readouterr().err
