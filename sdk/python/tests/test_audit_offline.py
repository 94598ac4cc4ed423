"""The offline verifier (agent_passport.logcheck, ``verify-audit``) on exports written here with a
key of our own, no registry: heads signed by a rotated-away key, witness files, malformed input,
and the progress bar (on a terminal only)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent_passport.audit import GENESIS, b64url, event_hash
from agent_passport.cli import main
from agent_passport.merkle import CompactTree, head_id, head_payload, leaf_hash

AGENTS = ("a1", "a2", "a3")


def jwk(kid: str, key: Ed25519PrivateKey) -> dict[str, str]:
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url(public)}


def sign(head: dict[str, Any], kid: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    return {**head, "kid": kid, "signature": b64url(key.sign(head_payload(head)))}


def build(
    count: int, head_sizes: list[int], signers: list[tuple[str, Ed25519PrivateKey]]
) -> list[dict[str, Any]]:
    """An export of ``count`` events over three agents, heads at ``head_sizes`` (signed by
    ``signers[i]``, the last signer for the rest)."""
    tree, heads, events, chains = CompactTree(), [], [], {a: (0, GENESIS) for a in AGENTS}
    prev = GENESIS
    for index in range(count):
        agent = AGENTS[index % len(AGENTS)]
        seq, before = chains[agent]
        event = {
            "agent": agent,
            "seq": seq + 1,
            "id": f"e{index}",
            "passport": "p",
            "fleet": "",
            "action": "fs:read",
            "resource": f"/data/{index}",
            "jurisdiction": "",
            "decision": "allow",
            "reason": "",
            "occurred_at": "2026-12-02T00:00:00.000000Z",
            "received_at": "2026-12-02T00:00:00.000000Z",
            "details": {},
            "prev": before,
            "leaf_index": index,
        }
        event["hash"] = event_hash(event)
        chains[agent] = (seq + 1, event["hash"])
        events.append({"type": "event", **event})
        tree.append(leaf_hash(event["hash"]))
        if tree.size in head_sizes:
            kid, key = signers[min(len(heads), len(signers) - 1)]
            at = f"2026-12-02T00:00:{tree.size:02d}.000000Z"
            head = {"tree_size": tree.size, "root": tree.root().hex(), "at": at, "prev": prev}
            heads.append({"type": "head", **sign(head, kid, key)})
            prev = head_id(head)
    header = {"type": "export", "v": 2, "scope": "full", "start": 0, "edge": []}
    return [header, *heads, *events]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk("new", new)]}))  # "old" was rotated away
    return {"old": ("old", old), "new": ("new", new), "jwks": str(jwks)}


def verify(tmp_path: Path, keys: dict[str, Any], records: list[dict[str, Any]], *extra: str) -> int:
    export = tmp_path / "export.jsonl"
    export.write_text("".join(json.dumps(record) + "\n" for record in records))
    return main(["verify-audit", str(export), "--jwks-file", keys["jwks"], *extra])


def test_older_heads_by_a_rotated_key_are_vouched_for_by_the_chain(tmp_path, keys, capsys):
    records = build(30, [10, 20, 30], [keys["old"], keys["old"], keys["new"]])
    assert verify(tmp_path, keys, records) == 0
    assert "3 head(s), tree of 30 leaves signed up to 30" in capsys.readouterr().out

    unknown_newest = build(30, [10, 30], [keys["new"], keys["old"]])
    assert verify(tmp_path, keys, unknown_newest) == 1
    assert "newest tree head (size 30) is signed by unknown key 'old'" in capsys.readouterr().out

    forged = build(30, [10, 30], [keys["new"]])
    forged[1]["signature"] = forged[2]["signature"]  # a known key, a bad signature
    assert verify(tmp_path, keys, forged) == 1
    assert "tree head of size 10 has a bad signature" in capsys.readouterr().out


def test_a_witness_file_checks_the_export(tmp_path, keys, capsys):
    records = build(30, [10, 30], [keys["new"]])
    witness = tmp_path / "heads.jsonl"
    genuine = [{k: v for k, v in r.items() if k != "type"} for r in records if r["type"] == "head"]
    witness.write_text("".join(json.dumps(head) + "\n" for head in genuine))
    assert verify(tmp_path, keys, records, "--witness", str(witness)) == 0
    assert "2 witness head(s)" in capsys.readouterr().out
    without_first_head = [r for r in records if r.get("tree_size") != 10]
    assert verify(tmp_path, keys, without_first_head, "--witness", str(witness)) == 1
    out = capsys.readouterr().out
    assert "tree head of size 30 does not follow the first head" in out
    assert (
        "the witness head of size 10 (at 2026-12-02T00:00:10.000000Z) is missing from the log's "
        "chain of heads" in out
    )
    rolled_back = build(10, [10], [keys["new"]])
    assert verify(tmp_path, keys, rolled_back, "--witness", str(witness)) == 1
    assert "rollback/truncation to an older head" in capsys.readouterr().out

    old_export = [{**records[0], "exported_at": "2026-12-02T00:00:15.000000Z"}, *records[1:]]
    old_export = [r for r in old_export if r.get("tree_size") != 30 and r.get("leaf_index", 0) < 10]
    assert verify(tmp_path, keys, old_export, "--witness", str(witness)) == 0
    assert "1 witness head(s)" in capsys.readouterr().out  # the head of 30 came later

    witness.write_text('{"tree_size": "ten"}\n')
    assert verify(tmp_path, keys, records, "--witness", str(witness)) == 2
    assert "heads.jsonl:1: tree head of size 'ten' is malformed" in capsys.readouterr().err


def test_a_malformed_header_or_head_is_a_problem_not_a_traceback(tmp_path, keys, capsys):
    records = build(5, [5], [keys["new"]])
    records[0]["edge"] = ["zz"]
    records[1]["root"] = 7
    assert verify(tmp_path, keys, records) == 1
    out = capsys.readouterr().out
    assert "the export's header is malformed (start, edge)" in out
    assert "tree head of size 5 is malformed (root)" in out


def run_cli(export: Path, jwks: str, stderr: int) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "agent_passport", "verify-audit", str(export)]
    return subprocess.run(
        [*argv, "--jwks-file", jwks], stdout=subprocess.PIPE, stderr=stderr, timeout=60
    )


def test_progress_is_shown_on_a_terminal_only(tmp_path, keys):
    export = tmp_path / "export.jsonl"
    records = build(3000, [3000], [keys["new"]])
    export.write_text("".join(json.dumps(record) + "\n" for record in records))
    quiet = run_cli(export, keys["jwks"], subprocess.PIPE)
    assert quiet.returncode == 0 and quiet.stderr == b""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    try:
        shown = run_cli(export, keys["jwks"], terminal)
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end is closed: everything was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    assert shown.returncode == 0 and b"intact" in shown.stdout
    assert b"verifying: 100%" in drawn and b"3000/3000" in drawn and b"events/s" in drawn
