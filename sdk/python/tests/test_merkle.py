"""RFC 9162 tree math and verifiers, without a registry: roots against an independent
implementation (pymerkle), inclusion and consistency proofs for every small size, tampered proofs
refused, malformed input never crashing; and ``verify-proof`` on saved answers (exit 0/1/2)."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pymerkle
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent_passport.audit import GENESIS, b64url, event_hash
from agent_passport.cli import main as cli
from agent_passport.merkle import (
    EMPTY_ROOT,
    CompactTree,
    HashSource,
    Node,
    Range,
    fold,
    head_id,
    head_payload,
    hexes,
    leaf_hash,
    node_hash,
    plan_consistency,
    plan_inclusion,
    tree_root,
    unhex,
    verify_consistency,
    verify_head,
    verify_inclusion,
)
from agent_passport.tokens import public_key_to_jwk

SIZES = range(1, 70)


def event_hashes(count: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(count)]


def leaves(count: int) -> list[bytes]:
    return [leaf_hash(value) for value in event_hashes(count)]


def memory_source(all_leaves: list[bytes]) -> HashSource:
    """Any perfect subtree, from leaves in memory (the registry reads them from its tables)."""

    def perfect(nodes: set[Node]) -> dict[Node, bytes]:
        return {
            (level, index): tree_root(all_leaves[index << level : (index + 1) << level])
            for level, index in nodes
        }

    return HashSource(perfect)


def inclusion(all_leaves: list[bytes], index: int, size: int) -> list[bytes]:
    return memory_source(all_leaves).roots(plan_inclusion(index, size))


def consistency(all_leaves: list[bytes], first: int, second: int) -> list[bytes]:
    return memory_source(all_leaves).roots(plan_consistency(first, second))


def test_roots_match_pymerkle():
    hashes = event_hashes(70)
    reference = pymerkle.InmemoryTree(algorithm="sha256")
    tree = CompactTree()
    for size, value in enumerate(hashes, 1):
        reference.append_entry(bytes.fromhex(value))
        tree.append(leaf_hash(value))
        assert tree.root() == reference.get_root(size) == tree_root(leaves(size))
    assert tree_root([]).hex() == EMPTY_ROOT


def test_compact_tree_resumes_from_its_edge():
    all_leaves = leaves(300)
    edge = memory_source(all_leaves).roots([Range(0, 256)])
    tree = CompactTree.from_edge(256, edge)
    for leaf in all_leaves[256:]:
        tree.append(leaf)
    assert tree.root() == tree_root(all_leaves)
    with pytest.raises(ValueError, match="edge subtrees"):
        CompactTree.from_edge(257, edge)


@pytest.mark.parametrize("size", SIZES)
def test_every_inclusion_proof_verifies_and_tampering_fails(size):
    all_leaves = leaves(size)
    root = tree_root(all_leaves)
    for index in range(size):
        path = inclusion(all_leaves, index, size)
        assert verify_inclusion(all_leaves[index], index, size, path, root)
        other = (index + 1) % size
        if other != index:
            assert not verify_inclusion(all_leaves[other], index, size, path, root)
            assert not verify_inclusion(all_leaves[index], other, size, path, root)
        assert not verify_inclusion(all_leaves[index], index, size, [*path, bytes(32)], root)
        if path:
            flipped = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
            assert not verify_inclusion(all_leaves[index], index, size, flipped, root)
            assert not verify_inclusion(all_leaves[index], index, size, path[:-1], root)


@pytest.mark.parametrize("second", SIZES)
def test_every_consistency_proof_verifies_and_tampering_fails(second):
    all_leaves = leaves(second)
    new_root = tree_root(all_leaves)
    for first in range(1, second + 1):
        old_root = tree_root(all_leaves[:first])
        proof = consistency(all_leaves, first, second) if first < second else []
        assert verify_consistency(first, second, old_root, new_root, proof)
        assert not verify_consistency(first, second, bytes(32), new_root, proof)
        assert not verify_consistency(first, second, old_root, bytes(32), proof)
        for position in range(len(proof)):
            flipped = list(proof)
            flipped[position] = bytes([proof[position][0] ^ 1]) + proof[position][1:]
            assert not verify_consistency(first, second, old_root, new_root, flipped)
        if proof:
            assert not verify_consistency(first, second, old_root, new_root, proof[:-1])


def test_a_rewritten_history_fails_consistency():
    honest = leaves(40)
    rewritten = [*honest[:17], leaf_hash("ab" * 32), *honest[18:]]
    old_root = tree_root(honest[:20])
    proof = consistency(rewritten, 20, 40)
    assert not verify_consistency(20, 40, old_root, tree_root(rewritten), proof)


def test_malformed_input_is_refused_not_crashed():
    root = tree_root(leaves(4))
    assert not verify_inclusion(leaf_hash("00" * 32), -1, 4, [], root)
    assert not verify_inclusion(leaf_hash("00" * 32), 4, 4, [], root)
    assert not verify_inclusion(leaf_hash("00" * 32), 0, 0, [], root)
    assert not verify_consistency(0, 4, root, root, [root])
    assert not verify_consistency(5, 4, root, root, [root])
    assert not verify_consistency(2, 4, root, root, [])
    assert not verify_consistency(3, 3, root, root, [root])
    for bad in (["zz" * 32], ["ab"], [None], [12]):
        with pytest.raises(ValueError):
            unhex(bad)
    for index, size in ((0, 0), (3, 3), (-1, 2)):
        with pytest.raises(ValueError):
            plan_inclusion(index, size)
    for first, second in ((0, 3), (4, 3)):
        with pytest.raises(ValueError):
            plan_consistency(first, second)
    assert fold([]) == bytes.fromhex(EMPTY_ROOT)
    assert node_hash(root, root) != node_hash(root, bytes(32))


# -- verify-proof: saved answers of the proof endpoints -----------------------------------------
KID = "test-key"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def jwks(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_key_to_jwk(KID, key.public_key())]}))
    return path


def sign_head(key: Ed25519PrivateKey, size: int, root: bytes, prev: str) -> dict[str, Any]:
    head: dict[str, Any] = {
        "tree_size": size,
        "root": root.hex(),
        "at": "2026-12-02T01:00:00.000000Z",
        "prev": prev,
        "kid": KID,
    }
    head["signature"] = b64url(key.sign(head_payload(head)))
    return head


def events(count: int) -> list[dict[str, Any]]:
    """Event documents as the registry answers them (their own hash, their leaf index)."""
    out = []
    for index in range(count):
        document: dict[str, Any] = {
            "agent": "7c6d3f5e-0000-4000-8000-000000000001",
            "seq": index + 1,
            "id": str(uuid.UUID(int=index + 1)),
            "passport": "7c6d3f5e-0000-4000-8000-000000000002",
            "fleet": "gpu-a",
            "action": "fs:write",
            "resource": f"/workspace/{index}",
            "jurisdiction": "DE",
            "decision": "allow",
            "reason": "r",
            "occurred_at": "2026-12-02T00:00:00.000000Z",
            "received_at": "2026-12-02T00:00:01.000000Z",
            "details": {},
            "prev": GENESIS,
            "leaf_index": index,
        }
        document["hash"] = event_hash(document)
        out.append(document)
    return out


@pytest.fixture
def answers(key: Ed25519PrivateKey) -> dict[str, dict[str, Any]]:
    documents = events(13)
    all_leaves = [leaf_hash(d["hash"]) for d in documents]
    old = sign_head(key, 5, tree_root(all_leaves[:5]), GENESIS)
    new = sign_head(key, 13, tree_root(all_leaves), head_id(old))
    return {
        "inclusion": {
            "event": documents[7],
            "leaf_index": 7,
            "tree_size": 13,
            "path": hexes(inclusion(all_leaves, 7, 13)),
            "head": new,
        },
        "consistency": {
            "from": 5,
            "to": 13,
            "proof": hexes(consistency(all_leaves, 5, 13)),
            "from_head": old,
            "to_head": new,
        },
    }


def run(tmp_path: Path, jwks: Path, document: object, capsys) -> tuple[int, str]:
    path = tmp_path / "answer.json"
    if isinstance(document, bytes):
        path.write_bytes(document)
    else:
        path.write_text(document if isinstance(document, str) else json.dumps(document))
    code = cli(["verify-proof", "--jwks", str(jwks), str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_verify_proof_accepts_both_kinds(tmp_path, jwks, answers, capsys):
    code, out = run(tmp_path, jwks, answers["inclusion"], capsys)
    assert code == 0, out
    assert "verified: event 00000000-0000-0000-0000-000000000008 is leaf 7" in out
    code, out = run(tmp_path, jwks, answers["consistency"], capsys)
    assert code == 0, out
    assert "the signed head of 13 leaves" in out and "extends the signed head of 5 leaves" in out


def _tampered(answer: dict[str, Any], where: str, value: object) -> dict[str, Any]:
    changed = copy.deepcopy(answer)
    target = changed
    *parents, last = where.split(".")
    for name in parents:
        target = target[int(name) if name.isdigit() else name]
    target[int(last) if last.isdigit() else last] = value
    return changed


@pytest.mark.parametrize(
    ("kind", "where", "value", "expected"),
    [
        ("inclusion", "event.decision", "deny", "was edited"),
        ("inclusion", "leaf_index", 6, "says it is leaf 7, the proof says 6"),
        ("inclusion", "event.leaf_index", 6, "says it is leaf 6, the proof says 7"),
        ("inclusion", "path.0", "00" * 32, "the inclusion proof fails"),
        ("inclusion", "head.root", "11" * 32, "bad signature"),
        ("inclusion", "head.kid", "other", "unknown key 'other'"),
        ("inclusion", "tree_size", 12, "is not the size of the head"),
        ("consistency", "proof.0", "00" * 32, "the consistency proof fails"),
        ("consistency", "from_head.tree_size", 6, "bad signature"),
        ("consistency", "to_head.signature", "AAAA", "bad signature"),
        ("consistency", "from", 4, "not from=4"),
    ],
)
def test_verify_proof_names_what_failed(
    tmp_path, jwks, answers, capsys, kind, where, value, expected
):
    code, out = run(tmp_path, jwks, _tampered(answers[kind], where, value), capsys)
    assert code == 1, out
    assert out.startswith("FAILED: ") and expected in out, out


def test_verify_proof_catches_a_rolled_back_log(tmp_path, jwks, answers, capsys):
    """An answer whose "newer" head is the older one: a registry showing a rolled-back log."""
    consistency = answers["consistency"]
    answer = {
        **consistency,
        "from": 13,
        "to": 5,
        "from_head": consistency["to_head"],
        "to_head": consistency["from_head"],
    }
    code, out = run(tmp_path, jwks, answer, capsys)
    assert code == 1 and "the log was truncated or rolled back" in out, out


def test_verify_proof_catches_a_rewritten_log(tmp_path, jwks, key, answers, capsys):
    """A registry that rewrote leaf 2 and re-signed: the new head is validly signed, but it
    does not extend the head the agent kept."""
    documents = events(13)
    documents[2] = {**documents[2], "decision": "deny"}
    documents[2]["hash"] = event_hash(documents[2])
    rewritten = [leaf_hash(d["hash"]) for d in documents]
    forged = sign_head(key, 13, tree_root(rewritten), answers["consistency"]["from_head"]["prev"])
    answer = {
        **answers["consistency"],
        "proof": hexes(consistency(rewritten, 5, 13)),
        "to_head": forged,
    }
    code, out = run(tmp_path, jwks, answer, capsys)
    assert code == 1 and "the log was rewritten" in out


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{not json", "is not a JSON document"),
        (b"\xff\xfe{}", "is not a JSON document"),
        ("[" * 100_000, "is not a JSON document"),
        ([1, 2], "not a JSON object"),
        ({"hello": 1}, "neither an inclusion proof"),
        ({"event": {}, "path": []}, "the event lacks field(s)"),
    ],
)
def test_verify_proof_unusable_input_exits_2(tmp_path, jwks, capsys, document, expected):
    code, out = run(tmp_path, jwks, document, capsys)
    assert code == 2, out
    assert expected in out and "Traceback" not in out


@pytest.mark.parametrize(
    ("kind", "where", "value", "expected"),
    [
        ("inclusion", "path", "abc", "'path'"),
        ("inclusion", "path.0", "xyz", "'path'"),
        ("inclusion", "leaf_index", "7", "'leaf_index'"),
        ("inclusion", "leaf_index", True, "'leaf_index'"),
        ("inclusion", "head", None, "'head'"),
        ("inclusion", "head.root", "not hex", "'head.root'"),
        ("inclusion", "head.tree_size", None, "'head.tree_size'"),
        ("consistency", "from_head", None, "'from_head' is null"),
        ("consistency", "to", None, "'to'"),
    ],
)
def test_verify_proof_missing_or_malformed_fields_exit_2(
    tmp_path, jwks, answers, capsys, kind, where, value, expected
):
    code, out = run(tmp_path, jwks, _tampered(answers[kind], where, value), capsys)
    assert code == 2, out
    assert expected in out and "Traceback" not in out


def test_verify_proof_needs_keys_and_a_file(tmp_path, answers, capsys, monkeypatch):
    monkeypatch.delenv("AGENT_PASSPORT_REGISTRY", raising=False)
    path = tmp_path / "answer.json"
    path.write_text(json.dumps(answers["inclusion"]))
    assert cli(["verify-proof", str(path)]) == 2
    assert "give --registry URL" in capsys.readouterr().err
    assert cli(["verify-proof", "--jwks", str(tmp_path / "none.json"), str(path)]) == 2
    assert "cannot read JWKS file" in capsys.readouterr().err
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    assert cli(["verify-proof", "--jwks", str(jwks), str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli(["verify-proof", "--jwks", str(jwks), str(path)]) == 1
    assert "signed by unknown key" in capsys.readouterr().out


def test_verify_head_names_the_problem(key):
    head = sign_head(key, 3, tree_root(leaves(3)), GENESIS)
    keys = {KID: key.public_key()}
    assert verify_head(head, keys) is None
    assert "bad signature" in str(verify_head({**head, "at": "2026-12-02T01:00:01Z"}, keys))
    assert "malformed" in str(verify_head({**head, "tree_size": "3"}, keys))
    assert "malformed" in str(verify_head({**head, "root": "zz"}, keys))
