"""The transparency log's read API: signed heads, inclusion and consistency proofs that the SDK's
verifiers accept offline; every bad input a 4xx naming the field; viewers and agents (their own
events only) may ask."""

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from actions import transparency
from actions.models import ActionEvent, ArchivedSegment, MerkleNode
from agent_passport.audit import event_hash
from agent_passport.merkle import (
    leaf_hash,
    unhex,
    verify_consistency,
    verify_head,
    verify_head_chain,
    verify_inclusion,
)
from passports import signing
from passports.models import Agent
from tests.actions.test_audit import maintenance, post_events

pytestmark = pytest.mark.django_db


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def token(issue) -> str:
    return issue()["token"]


@pytest.fixture
def logged(token):
    """300 events (crossing a stored 256-leaf block) under two heads (size 10 and 300)."""
    ids = post_events(token, [("fs:read", "allow")] * 10)
    transparency.sign_tree_head()
    for _ in range(2):
        ids += post_events(token, [("fs:write", "deny")] * 145)
    transparency.sign_tree_head()
    return ids


def checks_inclusion(answer: dict) -> bool:
    leaf = leaf_hash(event_hash(answer["event"]))
    return verify_inclusion(
        leaf,
        answer["leaf_index"],
        answer["tree_size"],
        unhex(answer["path"]),
        bytes.fromhex(answer["head"]["root"]),
    )


def test_heads_are_signed_and_chained(logged, viewer_api):
    latest = viewer_api.get("/api/v1/audit/heads/latest")
    assert latest.status_code == 200
    assert latest.json()["tree_size"] == 300
    keys = signing.all_public_keys()
    assert verify_head(latest.json(), keys) is None
    page = viewer_api.get("/api/v1/audit/heads").json()
    assert [h["tree_size"] for h in page["heads"]] == [10, 300]
    assert page["next_from_size"] is None
    assert verify_head_chain(page["heads"]) is None
    later = viewer_api.get("/api/v1/audit/heads?from_size=11&limit=1").json()
    assert [h["tree_size"] for h in later["heads"]] == [300]


def test_a_page_never_splits_heads_of_one_size(logged, viewer_api):
    transparency.sign_tree_head(force=True)  # a second head of size 300 (e.g. a key rotation)
    page = viewer_api.get("/api/v1/audit/heads?limit=2").json()
    assert [h["tree_size"] for h in page["heads"]] == [10, 300, 300]
    assert page["next_from_size"] == 301
    assert verify_head_chain(page["heads"]) is None


def test_inclusion_proofs_verify_offline(logged, viewer_api):
    for event_id in (logged[0], logged[9], logged[10], logged[255], logged[256], logged[-1]):
        answer = viewer_api.get(f"/api/v1/actions/{event_id}/proof").json()
        assert answer["tree_size"] == 300 and answer["event"]["id"] == event_id
        assert checks_inclusion(answer)
        assert verify_head(answer["head"], signing.all_public_keys()) is None
        forged = {**answer, "event": {**answer["event"], "decision": "allow"}}
        if answer["event"]["decision"] == "deny":
            assert not checks_inclusion(forged)
    old = viewer_api.get(f"/api/v1/actions/{logged[3]}/proof?tree_size=10").json()
    assert old["tree_size"] == 10 and old["head"]["tree_size"] == 10
    assert checks_inclusion(old)


def test_consistency_proofs_verify_offline(logged, viewer_api):
    answer = viewer_api.get("/api/v1/audit/consistency?from=10").json()
    assert (answer["from"], answer["to"]) == (10, 300)
    first, second = answer["from_head"], answer["to_head"]
    assert verify_consistency(
        10,
        300,
        bytes.fromhex(first["root"]),
        bytes.fromhex(second["root"]),
        unhex(answer["proof"]),
    )
    assert not verify_consistency(
        10, 300, bytes(32), bytes.fromhex(second["root"]), unhex(answer["proof"])
    )
    any_size = viewer_api.get("/api/v1/audit/consistency?from=7&to=300").json()
    assert any_size["from_head"] is None and any_size["proof"]
    same = viewer_api.get("/api/v1/audit/consistency?from=300&to=300").json()
    assert same["proof"] == [] and same["from_head"] == same["to_head"]


BAD_INPUT = [
    ("/api/v1/audit/consistency", "from", 400),
    ("/api/v1/audit/consistency?from=abc", "from", 400),
    ("/api/v1/audit/consistency?from=-1", "from", 400),
    ("/api/v1/audit/consistency?from=0", "from", 400),
    ("/api/v1/audit/consistency?from=1.5", "from", 400),
    ("/api/v1/audit/consistency?from=%C2%B2", "from", 400),  # a superscript two: a digit
    ("/api/v1/audit/consistency?from=301", "from", 400),
    ("/api/v1/audit/consistency?from=5&to=299", "to", 400),
    ("/api/v1/audit/consistency?from=5&to=x", "to", 400),
    ("/api/v1/audit/consistency?from=20&to=10", "from", 400),
    ("/api/v1/audit/consistency?from=1&to=" + "9" * 30, "to", 400),
    ("/api/v1/audit/heads?limit=0", "limit", 400),
    ("/api/v1/audit/heads?limit=1001", "limit", 400),
    ("/api/v1/audit/heads?from_size=-3", "from_size", 400),
    ("/api/v1/actions/not-a-uuid/proof", "id", 400),
    ("/api/v1/actions/{id}/proof?tree_size=abc", "tree_size", 400),
    ("/api/v1/actions/{id}/proof?tree_size=-1", "tree_size", 400),
    ("/api/v1/actions/{id}/proof?tree_size=11", "tree_size", 400),
    ("/api/v1/actions/{late}/proof?tree_size=10", "tree_size", 400),
]


def test_bad_input_is_a_400_naming_the_field(logged, viewer_api):
    for url, field, status in BAD_INPUT:
        response = viewer_api.get(url.format(id=logged[0], late=logged[200]))
        assert response.status_code == status, (url, response.content)
        assert field in response.json()["errors"], (url, response.json())


def test_unknown_event_and_no_head_yet(token, viewer_api):
    unknown = viewer_api.get("/api/v1/actions/00000000-0000-4000-8000-000000000000/proof")
    assert unknown.status_code == 404 and unknown.json()["detail"]
    assert viewer_api.get("/api/v1/audit/heads/latest").status_code == 404
    assert viewer_api.get("/api/v1/audit/consistency?from=1").status_code == 404
    assert viewer_api.get("/api/v1/audit/heads").json() == {"heads": [], "next_from_size": None}
    [event_id] = post_events(token, [("fs:read", "allow")])
    assert viewer_api.get(f"/api/v1/actions/{event_id}/proof").status_code == 404  # no head
    transparency.sign_tree_head()
    [later] = post_events(token, [("fs:read", "allow")])
    pending = viewer_api.get(f"/api/v1/actions/{later}/proof")
    assert pending.status_code == 409
    assert "latest signed head covers 1 leaves" in pending.json()["detail"]
    transparency.sign_tree_head()
    assert checks_inclusion(viewer_api.get(f"/api/v1/actions/{later}/proof").json())


def test_a_damaged_tree_is_a_clear_503_not_a_traceback(logged, viewer_api):
    with maintenance(open_=True):
        ActionEvent.objects.filter(leaf_index=290).delete()
    damaged = viewer_api.get(f"/api/v1/actions/{logged[295]}/proof")
    assert damaged.status_code == 503
    assert damaged.json()["reason"] == "tree_damaged"
    assert "leaf 290 is missing" in damaged.json()["detail"]
    with maintenance(open_=True):
        MerkleNode.objects.all().delete()
    consistency = viewer_api.get("/api/v1/audit/consistency?from=10&to=300")
    assert consistency.status_code == 503 and "damaged" in consistency.json()["detail"]


def test_archived_leaves_are_a_410_not_damage(logged, viewer_api):
    head = transparency.latest_head()
    ArchivedSegment.objects.create(
        start_leaf=0,
        end_leaf=256,
        root_hash=transparency.root(256).hex(),
        head=head,
        archived_at=timezone.now(),
        location="/archive/segment-0-256.jsonl",
        sha256="0" * 64,
    )
    with maintenance(open_=True):
        ActionEvent.objects.filter(leaf_index__lt=256).delete()
    archived = viewer_api.get("/api/v1/audit/consistency?from=10")
    assert archived.status_code == 410, archived.content
    assert "leaves below 256 are archived" in archived.json()["errors"]["from"][0]
    live = viewer_api.get(f"/api/v1/actions/{logged[-1]}/proof").json()
    assert checks_inclusion(live)  # the stored subtrees of the archived part remain
    assert viewer_api.get(f"/api/v1/actions/{logged[0]}/proof").status_code == 404


def test_agents_prove_their_own_events_only(logged, token, issue, operator):
    mine = bearer(token)
    answer = mine.get(f"/api/v1/actions/{logged[5]}/proof")
    assert answer.status_code == 200 and checks_inclusion(answer.json())
    assert mine.get("/api/v1/audit/heads/latest").status_code == 200
    assert mine.get("/api/v1/audit/heads").status_code == 200
    assert mine.get("/api/v1/audit/consistency?from=10").status_code == 200

    other = Agent.objects.create(name="other", fleet="gpu-b", owner=operator)
    theirs = bearer(issue(agent=str(other.id))["token"])
    refused = theirs.get(f"/api/v1/actions/{logged[5]}/proof")
    assert refused.status_code == 404  # another agent's events are not its business
    assert theirs.get("/api/v1/audit/heads/latest").status_code == 200


def test_who_may_ask(logged):
    anonymous = APIClient()
    for url in (
        "/api/v1/audit/heads/latest",
        "/api/v1/audit/heads",
        f"/api/v1/actions/{logged[0]}/proof",
        "/api/v1/audit/consistency?from=10",
    ):
        assert anonymous.get(url).status_code in (401, 403)
    forged = bearer("not.a.token")
    response = forged.get("/api/v1/audit/heads/latest")
    assert response.status_code == 401 and response.json()["detail"]


def test_the_schema_documents_the_endpoints_and_the_receipt():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path in (
        "/api/v1/audit/heads/latest",
        "/api/v1/audit/heads",
        "/api/v1/actions/{event_id}/proof",
        "/api/v1/audit/consistency",
    ):
        assert "get" in schema["paths"][path], path
    components = schema["components"]["schemas"]
    assert "receipt" in components["IngestResult"]["properties"]
    assert {"tree_size", "root", "prev", "signature"} <= set(components["TreeHead"]["properties"])
    assert "from" in components["ConsistencyProof"]["properties"]
    parameters = schema["paths"]["/api/v1/audit/consistency"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == {"from", "to"}
