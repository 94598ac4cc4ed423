"""Tamper evidence: append-only table, hash chains, signed checkpoints, verify_audit, exports."""

import contextlib
import csv
import io
import itertools
import json
import time
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from rest_framework.test import APIClient

from actions import audit, transparency
from actions.models import ActionEvent, AuditCheckpoint
from agent_passport.audit import GENESIS
from agent_passport.cli import main as cli
from passports import signing

pytestmark = pytest.mark.django_db


@contextlib.contextmanager
def maintenance(open_: bool):
    """Open (or, on SQLite where tests keep it open, temporarily close) the DBA escape hatch."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reason FROM actions_audit_maintenance")
        saved = [row[0] for row in cursor.fetchall()]
        cursor.execute("DELETE FROM actions_audit_maintenance")
        if open_:
            cursor.execute("INSERT INTO actions_audit_maintenance VALUES ('test tampering')")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM actions_audit_maintenance")
            for reason in saved:
                cursor.execute("INSERT INTO actions_audit_maintenance VALUES (%s)", [reason])


def post_events(token, actions):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    now = time.time()
    events = [
        {"id": str(uuid.uuid4()), "action": action, "decision": decision, "reason": "r", "at": now}
        for action, decision in actions
    ]
    response = client.post("/api/v1/actions", {"events": events}, format="json")
    assert response.status_code == 200, response.content
    return [event["id"] for event in events]


@pytest.fixture
def logged(issue, agent):
    token = issue()["token"]
    ids = post_events(
        token,
        [
            ("fs:write:/workspace/a", "allow"),
            ("net:connect:203.0.113.9:22", "deny"),
            ("proc:exec:xmrig", "deny"),
            ("tool:python:run", "allow"),
        ],
    )
    ids += post_events(token, [("fs:read:/workspace/b", "allow")])
    audit.create_checkpoints()
    transparency.sign_tree_head()
    return token, ids


def chain_of(agent):
    return list(ActionEvent.objects.filter(agent=agent).order_by("seq"))


def test_events_form_a_chain_across_batches(logged, agent):
    events = chain_of(agent)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert (events[1].action, events[1].resource) == ("net:connect", "203.0.113.9:22")
    checkpoint = AuditCheckpoint.objects.get()
    assert (checkpoint.count, checkpoint.head_hash) == (5, events[-1].hash)
    assert audit.verify().ok


def test_replayed_events_do_not_enter_the_chain_twice(logged, agent, issue):
    token, ids = logged
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    event = {
        "id": ids[0],
        "action": "fs:write:/workspace/a",
        "decision": "allow",
        "at": time.time(),
    }
    response = client.post("/api/v1/actions", {"events": [event]}, format="json")
    assert response.json()["duplicates"] == 1
    assert len(chain_of(agent)) == 5 and audit.verify().ok


def test_database_refuses_update_and_delete(logged, agent):
    event = chain_of(agent)[0]
    with maintenance(open_=False):
        for attempt in (
            lambda: ActionEvent.objects.filter(pk=event.pk).update(reason="nothing to see"),
            lambda: ActionEvent.objects.filter(pk=event.pk).delete(),
            lambda: AuditCheckpoint.objects.update(count=1),
        ):
            with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
                attempt()
    assert ActionEvent.objects.get(pk=event.pk).reason == "r"


def test_verify_audit_passes_then_names_an_edited_row(logged, agent, capsys):
    call_command("verify_audit")
    assert "audit log intact: 1 chain(s), 5 event(s), 1 checkpoint(s), 1 head(s)" in (
        capsys.readouterr().out
    )
    target = chain_of(agent)[1]
    with maintenance(open_=True):  # what a DBA could do, bypassing the application
        ActionEvent.objects.filter(pk=target.pk).update(decision="allow")
    with pytest.raises(CommandError, match="verification failed"):
        call_command("verify_audit")
    err = capsys.readouterr().err
    assert f"event {target.id} (seq 2) was edited" in err


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("delete_middle", "event seq 3 is missing (deleted or reordered)"),
        ("delete_last", "checkpoint says 5 events but only 4 remain"),
        ("reorder", "event seq 2 is missing (deleted or reordered)"),
        ("insert", "event seq 3 is missing (deleted or reordered)"),
        ("rehash_edit", "does not follow the previous event"),
    ],
)
def test_verify_names_deleted_inserted_and_reordered_events(logged, agent, tamper, expected):
    events = chain_of(agent)
    with maintenance(open_=True):
        if tamper == "delete_middle":
            ActionEvent.objects.filter(pk=events[2].pk).delete()
        elif tamper == "delete_last":
            ActionEvent.objects.filter(pk=events[4].pk).delete()
        elif tamper == "reorder":
            ActionEvent.objects.filter(pk=events[1].pk).update(seq=99)
            ActionEvent.objects.filter(pk=events[2].pk).update(seq=2)
            ActionEvent.objects.filter(pk=events[1].pk).update(seq=3)
        elif tamper == "insert":
            ActionEvent.objects.filter(agent=agent, seq__gte=3).update(seq=F("seq") + 100)
            forged = ActionEvent(
                id=uuid.uuid4(),
                passport=events[0].passport,
                agent=agent,
                fleet=agent.fleet,
                action="fs:read",
                resource="/alibi",
                decision="allow",
                reason="",
                occurred_at=events[1].occurred_at,
                received_at=events[1].received_at,
                seq=3,
                prev_hash=events[1].hash,
                leaf_index=10_000,
            )
            forged.hash = audit.event_hash(audit.event_document(forged))  # a careful forger
            forged.save()
            for offset, event in enumerate(events[2:]):
                ActionEvent.objects.filter(pk=event.pk).update(seq=4 + offset)
        elif tamper == "rehash_edit":  # an attacker who recomputes the edited event's own hash
            edited = events[1]
            edited.decision = "allow"
            edited.hash = audit.event_hash(audit.event_document(edited))
            ActionEvent.objects.filter(pk=edited.pk).update(decision="allow", hash=edited.hash)
    report = audit.verify()
    assert not report.ok
    assert expected in report.problems[0], report.problems


def test_audit_status_endpoint(logged, viewer_api, agent):
    body = viewer_api.get("/api/v1/audit").json()
    assert body == {
        "ok": True,
        "verified": True,
        "chains": 1,
        "events": 5,
        "checkpoints": 1,
        "heads": 1,
        "tree_size": 5,
        "signed_size": 5,
        "unsigned_events": 0,
        "problems": [],
    }
    post_events(logged[0], [("fs:read:/workspace/c", "allow")])
    body = viewer_api.get("/api/v1/audit").json()
    assert (body["ok"], body["verified"], body["unsigned_events"]) == (True, False, 1)
    with maintenance(open_=True):
        ActionEvent.objects.filter(agent=agent, seq=5).delete()
    body = viewer_api.get("/api/v1/audit").json()
    assert body["ok"] is False and "leaf 4 is missing" in " ".join(body["problems"])


def test_jsonl_export_verifies_offline_and_catches_tampering(logged, viewer_api, tmp_path, capsys):
    response = viewer_api.get("/api/v1/actions/export?format=jsonl")
    assert response.status_code == 200
    lines = b"".join(response.streaming_content).decode().splitlines()
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds == ["export", "head", "checkpoint"] + ["event"] * 5
    export = tmp_path / "actions.jsonl"
    export.write_text("\n".join(lines) + "\n")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signing.jwks()))

    assert cli(["verify-audit", str(export), "--jwks-file", str(jwks)]) == 0
    assert "intact: 1 chain(s), 5 event(s), 1 checkpoint(s), 1 head(s)" in capsys.readouterr().out

    tampered = [json.loads(line) for line in lines]
    tampered[4]["reason"] = "allowed after all"
    export.write_text("\n".join(json.dumps(record) for record in tampered) + "\n")
    assert cli(["verify-audit", str(export), "--jwks-file", str(jwks)]) == 1
    assert "was edited" in capsys.readouterr().out

    without_heads = [line for line in lines if '"head"' not in line]
    export.write_text("\n".join(without_heads) + "\n")
    assert cli(["verify-audit", str(export), "--jwks-file", str(jwks)]) == 1
    assert "NOT VERIFIED: no signed tree head" in capsys.readouterr().out


def test_forged_checkpoint_signature_is_rejected(logged, tmp_path, capsys):
    lines = [json.loads(line) for line in audit.export_jsonl()]
    assert lines[2]["type"] == "checkpoint"
    lines[2]["count"] = 4  # claims a shorter chain, signature no longer matches
    export = tmp_path / "x.jsonl"
    export.write_text("\n".join(json.dumps(record) for record in lines))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signing.jwks()))
    assert cli(["verify-audit", str(export), "--jwks-file", str(jwks)]) == 1
    assert "bad signature" in capsys.readouterr().out


def test_rotation_resigns_checkpoints_with_the_new_key(logged, capsys):
    old_kid = AuditCheckpoint.objects.get().kid
    call_command("rotate_signing_key")
    assert "re-signed:  1 audit checkpoint(s)" in capsys.readouterr().out
    newest = AuditCheckpoint.objects.order_by("-created_at", "-pk").first()
    assert newest.kid != old_kid and newest.kid == signing.active_signing_key().kid
    assert audit.verify().ok


def test_csv_export_and_filters(logged, viewer_api):
    response = viewer_api.get("/api/v1/actions/export?format=csv&decision=deny")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(row["action"] + ":" + row["resource"] for row in rows) == [
        "net:connect:203.0.113.9:22",
        "proc:exec:xmrig",
    ]
    miners = viewer_api.get("/api/v1/actions?action=proc:exec:*rig").json()["results"]
    assert [event["resource"] for event in miners] == ["xmrig"]
    ssh = viewer_api.get("/api/v1/actions?action=net:*:*:22").json()["results"]
    assert [event["resource"] for event in ssh] == ["203.0.113.9:22"]
    future = viewer_api.get("/api/v1/actions?since=2999-01-01T00:00:00Z").json()["results"]
    assert future == []
    for query, field in [
        ("since=yesterday", "since"),
        ("action=NET CONNECT", "action"),
        ("format=xml", "format"),
    ]:
        url = "/api/v1/actions/export?" if field == "format" else "/api/v1/actions?"
        bad = viewer_api.get(url + query)
        assert bad.status_code == 400 and field in bad.json()["errors"], query


def test_oversized_details_are_a_per_event_error(issue):
    token = issue()["token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    events = [
        {
            "id": str(uuid.uuid4()),
            "action": "gpu:use",
            "decision": "allow",
            "at": time.time(),
            "details": {"blob": "x" * 5000},
        },
        {
            "id": str(uuid.uuid4()),
            "action": "gpu:use",
            "decision": "allow",
            "at": time.time(),
            "details": {"pid": 42},
        },
    ]
    body = client.post("/api/v1/actions", {"events": events}, format="json").json()
    assert body["accepted"] == 1 and "details" in body["errors"]["0"]
    assert ActionEvent.objects.get().details == {"pid": 42}


def test_ingestion_is_rate_limited_per_passport(issue, settings, operator, django_user_model):
    """Each copy of an agent (its own passport) has its own budget: one busy copy cannot
    delay another copy's deny."""
    settings.ACTIONS_RATE_LIMIT = "2/minute"
    first, second = issue()["token"], issue()["token"]  # two copies of one agent
    clients = []
    for token in (first, second):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        clients.append(client)

    def post(client: APIClient) -> int:
        return client.post("/api/v1/actions", {"events": []}, format="json").status_code

    assert [post(clients[0]) for _ in range(3)] == [200, 200, 429]
    assert [post(clients[1]) for _ in range(3)] == [200, 200, 429]
