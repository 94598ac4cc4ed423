"""``agent-passport run`` input errors: a message and exit 2 (71 for a passport that is not
valid), never a traceback, and the command is never started."""

import pytest

from agent_passport.cli import main
from agent_passport.supervisor import EXIT_REFUSED

BASE = ["run", "--registry", "http://127.0.0.1:1", "--redis", "redis://127.0.0.1:1/0"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grace", "soon", "--", "true"], "argument --grace: not a number of seconds"),
        (["--grace", "-1", "--", "true"], "must be a non-negative number of seconds"),
        (["--grace", "nan", "--", "true"], "must be a non-negative number of seconds"),
        (["--on-stale", "ignore", "--", "true"], "argument --on-stale: invalid choice"),
        (["--containment", "vm", "--", "true"], "argument --containment: invalid choice"),
    ],
)
def test_bad_options_are_a_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        main([*BASE, *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("tail", [[], ["--"]])
def test_a_missing_command_is_a_usage_error(capsys, monkeypatch, tail):
    monkeypatch.setenv("AGENT_PASSPORT_TOKEN", "a.b.c")
    assert main([*BASE, *tail]) == 2
    assert "give the command to run after --" in capsys.readouterr().err


def test_no_passport_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("AGENT_PASSPORT_TOKEN", raising=False)
    assert main([*BASE, "--", "true"]) == 2
    assert "no passport" in capsys.readouterr().err


def test_a_malformed_passport_refuses_to_start(tmp_path, capsys, monkeypatch):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    marker = tmp_path / "ran"
    monkeypatch.setenv("AGENT_PASSPORT_TOKEN", "a.b.c")
    code = main([*BASE, "--jwks-file", str(jwks), "--issuer", "x", "--", "touch", str(marker)])
    assert code == EXIT_REFUSED
    assert "refusing to start: the passport is not valid" in capsys.readouterr().err
    assert not marker.exists()
