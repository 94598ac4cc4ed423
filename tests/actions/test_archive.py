"""manage.py archive_audit: a self-verifying segment, written and verified before anything is
dropped; the live log stays verifiable from where the segment ends."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from actions import partitions, transparency
from actions.models import ActionEvent, ArchivedSegment, MerkleNode
from agent_passport.cli import main as sdk_main
from agent_passport.merkle import leaf_hash, verify_consistency, verify_head, verify_inclusion
from agent_passport.segment import read_records
from agent_passport.segment import verify_segment as verify
from passports import signing
from tests.actions.test_audit import post_events
from tests.actions.test_partitions import month_start, post_at

pytestmark = pytest.mark.django_db
POSTGRES = connection.vendor == "postgresql"


def post_many(monkeypatch, token, when, count):
    for start in range(0, count, 200):
        post_at(monkeypatch, token, when, min(200, count - start))


@pytest.fixture
def history(issue, monkeypatch):
    """300 events three months ago, 300 two months ago, 300 now; a head over all of them."""
    token = issue()["token"]
    now = timezone.now()
    old, older = month_start(now, -2) + timedelta(days=2), month_start(now, -3) + timedelta(days=2)
    partitions.ensure_partitions(since=older)
    post_many(monkeypatch, token, older, 300)
    post_many(monkeypatch, token, old, 300)
    for _ in range(3):
        post_events(token, [("fs:read", "allow")] * 100)
    head = transparency.sign_tree_head()
    assert head is not None and head.tree_size == 900
    return token, older, old, now


def archive(before, directory) -> str:
    out = StringIO()
    call_command(
        "archive_audit", "--before", before.isoformat(), "--to", str(directory), stdout=out
    )
    return out.getvalue()


def jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(signing.jwks()))
    return str(path)


def verify_segment(path, tmp_path, capsys) -> tuple[int, str]:
    code = sdk_main(["verify-segment", str(path), "--jwks", jwks_file(tmp_path)])
    return code, capsys.readouterr().out


def test_archive_writes_verifies_records_and_drops_then_the_live_log_continues(
    history, tmp_path, capsys
):
    token, older, old, now = history
    output = archive(month_start(now, -1), tmp_path)  # the 600 old events: 512 whole leaves
    segment = ArchivedSegment.objects.get()
    assert (segment.start_leaf, segment.end_leaf, segment.head.tree_size) == (0, 512, 900)
    assert segment.root_hash == transparency.root(512).hex()
    path = tmp_path / "segment-0-512.jsonl"
    assert segment.location == str(path.resolve())
    assert "archived leaves 0..512" in output
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["leaf_index"] for line in lines if line["type"] == "event"] == list(range(512))
    assert verify_segment(path, tmp_path, capsys) == (
        0,
        "intact: leaves 0..512 (512 event(s), 1 head(s)), consistent with the head of size 900\n",
    )
    if POSTGRES:  # the month of leaves 0..299 is gone; the next one also holds 512..599
        assert f"dropped partitions: actions_actionevent_p{older:%Y_%m}" in output
        assert f"kept partition actions_actionevent_p{old:%Y_%m}" in output
        assert ActionEvent.objects.filter(leaf_index__lt=300).count() == 0
        assert ActionEvent.objects.filter(leaf_index__gte=300).count() == 600
    assert transparency.live_start()[0] == 512

    # the live log: new events, a new head, proofs against it
    post_events(token, [("fs:write", "allow")] * 7)
    live = transparency.sign_tree_head()
    assert live is not None and live.tree_size == 907
    keys = signing.all_public_keys()
    assert verify_head(live.document(), keys) is None
    event = ActionEvent.objects.get(leaf_index=903)
    path_hashes = [bytes.fromhex(h) for h in transparency.inclusion_proof(903, 907)]
    live_root = bytes.fromhex(live.root_hash)
    assert verify_inclusion(leaf_hash(event.hash), 903, 907, path_hashes, live_root)
    archived = segment.head
    proof = [bytes.fromhex(h) for h in transparency.consistency_proof(archived.tree_size, 907)]
    assert verify_consistency(
        archived.tree_size, 907, bytes.fromhex(archived.root_hash), live_root, proof
    )
    proof = [bytes.fromhex(h) for h in transparency.consistency_proof(512, 907)]
    assert verify_consistency(512, 907, bytes.fromhex(segment.root_hash), live_root, proof)


def test_a_second_segment_continues_the_first(history, tmp_path, capsys):
    token, _, _, now = history
    archive(month_start(now, -2), tmp_path)  # the 300 oldest events: 256 leaves
    post_events(token, [("fs:read", "allow")] * 30)
    transparency.sign_tree_head()
    output = archive(month_start(now, -1), tmp_path)
    assert "archived leaves 256..512" in output
    code, text = verify_segment(tmp_path / "segment-256-512.jsonl", tmp_path, capsys)
    assert code == 0, text
    first = json.loads((tmp_path / "segment-0-256.jsonl").read_text().splitlines()[0])
    with (tmp_path / "segment-256-512.jsonl").open() as lines:
        report = verify(read_records(lines), signing.all_public_keys())
    assert report.start_root == first["root"]  # the segments chain
    assert [s.end_leaf for s in ArchivedSegment.objects.order_by("end_leaf")] == [256, 512]


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("action", "fs:delete", "was edited: its content no longer matches its hash"),
        ("hash", "ab" * 32, "was edited"),
        ("leaf_index", 3, "has leaf_index 3"),
    ],
)
def test_a_tampered_segment_fails_verification(history, tmp_path, capsys, field, value, problem):
    archive(month_start(history[3], -1), tmp_path)
    path = tmp_path / "segment-0-512.jsonl"
    lines = path.read_text().splitlines()
    position = next(i for i, line in enumerate(lines) if '"leaf_index":100' in line)
    record = json.loads(lines[position])
    record[field] = value
    lines[position] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    code, output = verify_segment(path, tmp_path, capsys)
    assert code == 1
    assert "TAMPERED:" in output and problem in output


def test_a_removed_head_or_proof_fails_verification(history, tmp_path, capsys):
    archive(month_start(history[3], -1), tmp_path)
    path = tmp_path / "segment-0-512.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if '"type":"consistency"' not in line))
    code, output = verify_segment(path, tmp_path, capsys)
    assert (code, output) == (
        1,
        "TAMPERED: the segment has no consistency proof to a signed head\n",
    )
    path.write_text("not json\n")
    code, output = verify_segment(path, tmp_path, capsys)
    assert code == 1 and output.startswith("NOT VERIFIED:")


def refused(match, *args):
    with pytest.raises(CommandError, match=match):
        call_command("archive_audit", *args, stdout=StringIO())
    assert not ArchivedSegment.objects.exists()


def test_refusals(history, tmp_path):
    now = history[3]
    count = ActionEvent.objects.count()
    refused("in the future", "--before", (now + timedelta(days=1)).isoformat(), "--to", tmp_path)
    refused("nothing to archive", "--before", month_start(now, -3).isoformat(), "--to", tmp_path)
    refused("not an ISO date", "--before", "yesterday", "--to", tmp_path)
    refused("not a writable directory", "--before", now.isoformat(), "--to", tmp_path / "none")
    file = tmp_path / "file"
    file.write_text("")
    refused("not a writable directory", "--before", now.isoformat(), "--to", file)
    assert ActionEvent.objects.count() == count
    assert list(tmp_path.iterdir()) == [file]


def test_a_log_that_does_not_verify_is_not_dropped(history, tmp_path):
    now = history[3]
    with connection.cursor() as cursor:  # an administrator edits an event after it was signed
        cursor.execute("INSERT INTO actions_audit_maintenance (reason) VALUES ('test')")
        ActionEvent.objects.filter(leaf_index=42).update(action="fs:delete")
        cursor.execute("DELETE FROM actions_audit_maintenance WHERE reason = 'test'")
    count, tables = ActionEvent.objects.count(), partitions.partitions()
    refused(
        "leaf 42: .* was edited.*nothing was dropped",
        "--before",
        month_start(now, -1).isoformat(),
        "--to",
        tmp_path,
    )
    assert ActionEvent.objects.count() == count
    assert partitions.partitions() == tables
    assert list(tmp_path.iterdir()) == []  # the rejected segment is not left behind


def test_a_missing_stored_subtree_refuses(history, tmp_path):
    MerkleNode.objects.filter(level=9, index=0).delete()
    refused(
        "the log is damaged", "--before", month_start(history[3], -1).isoformat(), "--to", tmp_path
    )
    assert list(tmp_path.iterdir()) == []
