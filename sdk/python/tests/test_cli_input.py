"""The SDK's CLI reads files a user hands it: bad files are a message and exit 2, no traceback."""

import pytest

from agent_passport.cli import main

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (DEEP.encode() + b"\n", "is not JSON"),
        (b'{"type": "event"}\n\xff\xfe\n', "is not UTF-8"),
    ],
)
def test_verify_audit_refuses_a_hostile_export_with_a_message(tmp_path, capsys, content, message):
    export = tmp_path / "actions.jsonl"
    export.write_bytes(content)
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    assert main(["verify-audit", str(export), "--jwks-file", str(jwks)]) == 2
    assert message in capsys.readouterr().err


def test_deeply_nested_jwks_file_is_a_message(tmp_path, capsys):
    export = tmp_path / "actions.jsonl"
    export.write_text("")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(DEEP)
    assert main(["verify-audit", str(export), "--jwks-file", str(jwks)]) == 2
    assert "cannot read JWKS file" in capsys.readouterr().err


@pytest.mark.parametrize("redis", [[], ["--redis", "redis://127.0.0.1:1/0"]])
def test_check_without_an_issuer_asks_for_one(tmp_path, capsys, redis):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    argv = ["check", "a.b.c", "fs:read", "--jwks-file", str(jwks), *redis]
    assert main(argv) == 2
    assert "give --issuer (or --registry)" in capsys.readouterr().err
