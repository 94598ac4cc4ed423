"""Every attack of issue 12 on the action log, done as a database administrator would (through
the maintenance escape hatch), caught at three levels: GET /api/v1/audit, ``manage.py
verify_audit`` and the offline ``python -m agent_passport verify-audit`` of an export.

The log: agents A and B; batch 1 (A: leaves 0-2, B: 3-4), checkpoints, head of size 5; batch 2
(A: 5-6, B: 7-8), checkpoints, head of size 9. A witness holds both heads."""

import json
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from actions import audit, transparency
from actions.models import (
    ActionEvent,
    ArchivedSegment,
    AuditCheckpoint,
    MerkleNode,
    SignedTreeHead,
)
from agent_passport.audit import b64url, event_hash
from agent_passport.cli import main as cli
from agent_passport.merkle import head_id, head_payload, leaf_hash, tree_root
from passports import signing
from passports.models import Agent
from tests.actions.test_audit import maintenance, post_events

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """The users the fixtures make need no costly password hash (13 logs to build)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def log(issue, agent, operator, tmp_path):
    other = Agent.objects.create(name="trainer-2", fleet="gpu-a", owner=operator, host="10.0.0.6")
    tokens = {"A": issue()["token"], "B": issue(agent=str(other.id))["token"]}
    heads = []
    for counts in ((3, 2), (2, 2)):
        for name, count in zip("AB", counts, strict=True):
            post_events(tokens[name], [(f"fs:write:/workspace/{name}", "allow")] * count)
        audit.create_checkpoints()
        heads.append((transparency.sign_tree_head()).document())
    witness = tmp_path / "heads.jsonl"
    witness.write_text("".join(json.dumps(head) + "\n" for head in heads))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signing.jwks()))
    return {"agents": {"A": agent, "B": other}, "tokens": tokens, "witness": witness, "jwks": jwks}


def leaf(index: int) -> ActionEvent:
    return ActionEvent.objects.get(leaf_index=index)


def rewrite_chain(agent: Agent, *, from_seq: int = 1) -> None:
    """Edit every event of the chain from ``from_seq`` on and recompute every hash after it."""
    events = list(ActionEvent.objects.filter(agent=agent).order_by("seq"))
    prev = events[from_seq - 2].hash if from_seq > 1 else "0" * 64
    for event in events[from_seq - 1 :]:
        event.reason, event.prev_hash = "nothing happened", prev
        event.hash = prev = audit.event_hash(audit.event_document(event))
        ActionEvent.objects.filter(pk=event.pk).update(
            reason=event.reason, prev_hash=event.prev_hash, hash=event.hash
        )


def forge_head(size: int, prev: str) -> SignedTreeHead:
    """A head over the database's leaves as they are now, signed with the registry's own key
    (what only an operator holding the key can do)."""
    hashes = ActionEvent.objects.order_by("leaf_index").values_list("hash", flat=True)[:size]
    head = SignedTreeHead(
        tree_size=size,
        root_hash=tree_root([leaf_hash(h) for h in hashes]).hex(),
        created_at=timezone.now(),
        prev=prev,
    )
    document = head.document()
    head.kid, signature = signing.sign_bytes(head_payload(document))
    head.signature = b64url(signature)
    head.save()
    return head


def newest_head() -> SignedTreeHead:
    return SignedTreeHead.objects.get(tree_size=9)


def first_head_id() -> str:
    return head_id((SignedTreeHead.objects.get(tree_size=5)).document())


def edit(log):
    ActionEvent.objects.filter(leaf_index=2).update(decision="deny")


def delete(log):
    ActionEvent.objects.filter(leaf_index=3).delete()


def insert(log):
    """A new agent's chain of one event, well formed, slipped in at leaf 5."""
    stranger = Agent.objects.create(name="alibi", owner=log["agents"]["A"].owner)
    for event in ActionEvent.objects.filter(leaf_index__gte=5).order_by("-leaf_index"):
        ActionEvent.objects.filter(pk=event.pk).update(leaf_index=event.leaf_index + 1)
    model = leaf(0)
    forged = ActionEvent(
        id=uuid.uuid4(),
        passport=model.passport,
        agent=stranger,
        action="fs:read",
        resource="/alibi",
        decision="allow",
        occurred_at=model.occurred_at,
        received_at=model.received_at,
        seq=1,
        prev_hash="0" * 64,
        leaf_index=5,
    )
    forged.hash = audit.event_hash(audit.event_document(forged))
    forged.save()


def reorder(log):
    """Swap an event of A with one of B: each chain keeps its order, the tree's order changes."""
    a, b = leaf(2), leaf(3)
    ActionEvent.objects.filter(pk=a.pk).update(leaf_index=-1)
    ActionEvent.objects.filter(pk=b.pk).update(leaf_index=2)
    ActionEvent.objects.filter(pk=a.pk).update(leaf_index=3)


def truncate(log):
    ActionEvent.objects.filter(leaf_index__gte=7).delete()


def rewrite(log):
    """B's whole chain edited with recomputed hashes, and B's checkpoints deleted."""
    rewrite_chain(log["agents"]["B"])
    AuditCheckpoint.objects.filter(agent=log["agents"]["B"]).delete()


def delete_head(log):
    SignedTreeHead.objects.filter(tree_size=5).delete()


def delete_newest_head(log):
    newest_head().delete()


def rollback(log):
    """Back to the head of size 5: batch 2, its checkpoints and the newest head deleted."""
    ActionEvent.objects.filter(leaf_index__gte=5).delete()
    for name, count in (("A", 5), ("B", 4)):
        AuditCheckpoint.objects.filter(agent=log["agents"][name], count=count).delete()
    newest_head().delete()


def split_view(log):
    """B's batch-2 events rewritten, its checkpoint deleted, and the head of size 9 replaced by
    one over the rewritten tree, signed with the registry's key: the log is consistent with
    itself; only the witness, shown the genuine head, tells."""
    rewrite_chain(log["agents"]["B"], from_seq=3)
    AuditCheckpoint.objects.filter(agent=log["agents"]["B"], count=4).delete()
    newest_head().delete()
    forge_head(9, first_head_id())


def split_view_in_log(log):
    """A second head for size 9 over a rewritten tree, next to the genuine one."""
    rewrite_chain(log["agents"]["B"], from_seq=3)
    forge_head(9, first_head_id())


ATTACKS = [
    (edit, "(seq 3) was edited: its content no longer matches its hash", False),
    (delete, "leaf 3 is missing (its event was deleted)", False),
    (insert, "the first 9 leaves do not match the signed head of size 9 (among leaves 5..8", False),
    (reorder, "the first 5 leaves do not match the signed head of size 5", False),
    (truncate, "the signed head of size 9 covers 9 leaves but the log has only 7", False),
    (rewrite, "the first 5 leaves do not match the signed head of size 5", False),
    (delete_head, "tree head of size 9 does not follow the first head", False),
    (
        delete_newest_head,
        "rollback/truncation to an older head: the witness holds a head of size 9",
        True,
    ),
    (rollback, "rollback/truncation to an older head: the witness holds a head of size 9", True),
    (split_view, "split view: the witness holds a head of size 9", True),
    (split_view_in_log, "two different signed heads for size 9 (split view)", False),
]


def verdicts(log, viewer_api, settings, capsys, tmp_path, *, witness: bool):
    """(API body, CLI exit code and output, offline exit code and output)."""
    settings.AUDIT_WITNESSES = [f"file://{log['witness']}"] if witness else []
    body = viewer_api.get("/api/v1/audit").json()
    with_witness = ["--witness", str(log["witness"])] if witness else []
    capsys.readouterr()
    try:
        call_command("verify_audit", *with_witness)
        code, message = 0, ""
    except CommandError as exc:
        code, message = exc.returncode, str(exc)
    said = capsys.readouterr()
    cli_said = said.out + said.err + message
    export = tmp_path / "export.jsonl"
    response = viewer_api.get("/api/v1/actions/export?format=jsonl")
    export.write_bytes(b"".join(response.streaming_content))
    offline = cli(["verify-audit", str(export), "--jwks-file", str(log["jwks"]), *with_witness])
    return body, (code, cli_said), (offline, capsys.readouterr().out)


def test_an_untouched_log_verifies_at_every_level(log, viewer_api, settings, capsys, tmp_path):
    body, (code, said), (offline, out) = verdicts(
        log, viewer_api, settings, capsys, tmp_path, witness=True
    )
    assert body["verified"] and (body["tree_size"], body["signed_size"]) == (9, 9), body
    assert code == 0 and said.startswith("audit log intact: 2 chain(s), 9 event(s), 4 checkpoint")
    assert "verifying" not in said + out  # no progress bar: stderr is not a terminal
    assert "2 head(s), tree of 9 leaves signed up to 9, 2 witness head(s)" in said
    assert offline == 0 and out.startswith("intact: 2 chain(s), 9 event(s)"), out


@pytest.mark.parametrize(
    ("attack", "expected", "witness"), ATTACKS, ids=[attack.__name__ for attack, *_ in ATTACKS]
)
def test_attack_is_caught_at_every_level(
    log, viewer_api, settings, capsys, tmp_path, attack, expected, witness
):
    with maintenance(open_=True):
        attack(log)
    if witness:  # without the witness the log is consistent with itself
        assert audit.verify().ok
    body, (code, said), (offline, out) = verdicts(
        log, viewer_api, settings, capsys, tmp_path, witness=witness
    )
    assert body["ok"] is False and any(expected in p for p in body["problems"]), body
    assert code == 1 and "TAMPERED: " in said and expected in said, said
    assert offline == 1 and "TAMPERED: " in out and expected in out, out


def test_events_not_yet_covered_by_a_head_are_never_intact(
    log, viewer_api, settings, capsys, tmp_path
):
    post_events(log["tokens"]["A"], [("fs:read:/workspace/late", "allow")] * 2)
    body, (code, said), (offline, out) = verdicts(
        log, viewer_api, settings, capsys, tmp_path, witness=False
    )
    assert (body["ok"], body["verified"], body["unsigned_events"]) == (True, False, 2)
    assert code == 3 and "NOT VERIFIED: 2 event(s) not yet covered by a signed head" in said
    assert offline == 1 and "NOT VERIFIED: 2 event(s) not yet covered by a signed head" in out
    assert "intact" not in said + out


def rewritten(records: list[dict], agent: str) -> list[dict]:
    """An export with ``agent``'s chain edited and rehashed, and its checkpoints left out (the
    holes issue 12 found in per-chain checkpoints)."""
    prev, out = "0" * 64, []
    for record in records:
        if record.get("agent") != agent:
            out.append(record)
        elif record["type"] == "event":
            record = {**record, "reason": "nothing happened", "prev": prev}
            record["hash"] = prev = event_hash(record)
            out.append(record)
    return out


def offline(log, tmp_path, records: list[dict]) -> int:
    export = tmp_path / "edited.jsonl"
    export.write_text("".join(json.dumps(record) + "\n" for record in records))
    return cli(["verify-audit", str(export), "--jwks-file", str(log["jwks"])])


def test_a_rewritten_chain_without_its_checkpoints_fails_offline(log, tmp_path, capsys):
    records = [json.loads(line) for line in audit.export_jsonl()]
    b = str(log["agents"]["B"].id)
    without_checkpoint = [r for r in records if not (r["type"] == "checkpoint" and r["agent"] == b)]
    assert offline(log, tmp_path, without_checkpoint) == 0  # the tree still vouches for B
    assert offline(log, tmp_path, rewritten(records, b)) == 1
    assert "the first 5 leaves do not match the signed head of size 5" in capsys.readouterr().out
    newest_head_line = max(i for i, r in enumerate(records) if r["type"] == "head")
    assert offline(log, tmp_path, records[:newest_head_line] + records[newest_head_line + 1 :]) == 1
    assert "NOT VERIFIED: 4 event(s) not yet covered by a signed head" in capsys.readouterr().out


def test_a_filtered_export_proves_each_event_in_the_newest_head(log, viewer_api, tmp_path, capsys):
    b = str(log["agents"]["B"].id)
    response = viewer_api.get(f"/api/v1/actions/export?format=jsonl&agent={b}")
    records = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [r["type"] for r in records] == ["export"] + ["head"] * 2 + ["checkpoint"] * 2 + [
        "event"
    ] * 4
    events = [r for r in records if r["type"] == "event"]
    assert [e["leaf_index"] for e in events] == [3, 4, 7, 8] and all(e["proof"] for e in events)
    assert offline(log, tmp_path, records) == 0
    assert "4 inclusion proof(s) in the head of size 9" in capsys.readouterr().out

    assert offline(log, tmp_path, rewritten(records, b)) == 1
    assert "is not in the signed head of size 9: its inclusion proof fails" in (
        capsys.readouterr().out
    )
    assert offline(log, tmp_path, [r for r in records if r["type"] != "head"]) == 1
    assert "NOT VERIFIED: no signed tree head" in capsys.readouterr().out


def test_the_live_log_after_an_archived_segment_verifies(issue, agent, tmp_path, capsys):
    """Leaves 0-255 archived (their events gone, their stored subtrees kept): verification
    resumes the tree at 256, the chain mid-way, and still names a deleted leaf."""
    token = issue()["token"]
    events = []
    for count in (200, 100):
        events += post_events(token, [("fs:read:/data", "allow")] * count)
    events = events[256:]
    audit.create_checkpoints()
    head = transparency.sign_tree_head()
    ArchivedSegment.objects.create(
        start_leaf=0,
        end_leaf=256,
        root_hash=transparency.root(256).hex(),
        head=head,
        archived_at=timezone.now(),
        location=str(tmp_path / "segment-0-256.jsonl"),
        sha256="0" * 64,
    )
    with maintenance(open_=True):
        ActionEvent.objects.filter(leaf_index__lt=256).delete()
    report = audit.verify()
    assert report.verified and (report.events, report.tree_size) == (44, 300), report
    export = tmp_path / "live.jsonl"
    export.write_text("".join(audit.export_jsonl()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signing.jwks()))
    assert cli(["verify-audit", str(export), "--jwks-file", str(jwks)]) == 0
    assert "44 event(s), 1 checkpoint(s), 1 head(s), tree of 300 leaves" in capsys.readouterr().out
    export.write_text("".join(audit.export_jsonl(Agent.objects.filter(pk=agent.pk))))
    assert cli(["verify-audit", str(export), "--jwks-file", str(jwks)]) == 0
    assert "44 inclusion proof(s) in the head of size 300" in capsys.readouterr().out

    with maintenance(open_=True):
        ActionEvent.objects.filter(leaf_index=260).delete()
        MerkleNode.objects.filter(level=8, index=0).update(hash="0" * 64)
    problems = audit.verify().problems
    assert (
        "the stored subtrees of the archived leaves 0..255 do not match the archived segment "
        "of size 256" in problems
    )
    assert f"leaf 260 is missing (its event was deleted) before event {events[5]}" in problems


def test_a_rewrite_is_named_to_its_block_of_256_leaves(issue, agent):
    token = issue()["token"]
    for count in (200, 200):
        post_events(token, [("fs:read:/data", "allow")] * count)
    transparency.sign_tree_head()
    with maintenance(open_=True):
        rewrite_chain(agent, from_seq=100)
    assert audit.verify().problems == [
        "leaves 0..255 differ from the subtree stored when they were added (among them an "
        "event was edited with a recomputed hash, inserted, deleted or reordered)",
        "the first 400 leaves do not match the signed head of size 400 (among leaves 0..399 an "
        "event was edited with a recomputed hash, inserted, deleted or reordered)",
    ]
