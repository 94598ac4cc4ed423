"""The REST API: agents, issuance, renewal, revocation, roles and error bodies."""

import uuid

import pytest
from rest_framework.test import APIClient

from agent_passport.protocol import MAX_TOKEN_BYTES, PROTOCOL_VERSION
from agent_passport.rules import MAX_SEARCHING_RULES
from passports.models import Agent, Passport

pytestmark = pytest.mark.django_db


def test_operator_registers_agent_and_lists_by_fleet(operator_api):
    created = operator_api.post(
        "/api/v1/agents",
        {"name": "crawler", "fleet": "web", "description": "d", "host": "h1"},
        format="json",
    )
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "active" and body["owner"] == "olivia-operator"
    operator_api.post("/api/v1/agents", {"name": "other", "fleet": "gpu"}, format="json")

    listed = operator_api.get("/api/v1/agents?fleet=web").json()["results"]
    assert [agent["name"] for agent in listed] == ["crawler"]
    detail = operator_api.get(f"/api/v1/agents/{body['id']}")
    assert detail.json()["host"] == "h1"


def test_issued_passport_carries_claims_and_is_active(issue, agent, operator_api, settings):
    issued = issue(ttl_seconds=600)
    claims = issued["claims"]
    assert claims["sub"] == str(agent.id)
    assert claims["jti"] == issued["jti"]
    assert claims["iss"] == settings.PASSPORT_ISSUER
    assert claims["aud"] == settings.PASSPORT_AUDIENCE
    assert claims["exp"] - claims["iat"] == 600
    assert claims["fleet"] == "gpu-a"
    assert claims["rev"]["stream"].endswith(":revocations:stream")
    assert claims["rev"]["v"] == PROTOCOL_VERSION
    passport = Passport.objects.get(jti=issued["jti"])
    assert passport.status == "active" and passport.issued_by.username == "olivia-operator"

    introspected = operator_api.post(
        "/api/v1/passports/introspect", {"token": issued["token"]}, format="json"
    ).json()
    assert introspected["active"] is True
    assert introspected["scope"] == claims["scope"]


def test_default_ttl_applies_when_omitted(issue, settings):
    claims = issue()["claims"]
    assert claims["exp"] - claims["iat"] == settings.PASSPORT_DEFAULT_TTL_SECONDS


def test_bad_rule_is_rejected_naming_the_rule(operator_api, agent):
    response = operator_api.post(
        "/api/v1/passports",
        {"agent": str(agent.id), "scope": ["fs:write:/tmp", "NET CONNECT"], "jurisdiction": ["EU"]},
        format="json",
    )
    assert response.status_code == 400
    assert "NET CONNECT" in response.json()["errors"]["scope"][0]
    assert Passport.objects.count() == 0


def test_a_scope_beyond_the_matching_bounds_is_rejected_naming_the_rule(operator_api, agent):
    searching = [f"proc:exec:*miner{i}*" for i in range(MAX_SEARCHING_RULES)]
    body = {"agent": str(agent.id), "scope": searching, "jurisdiction": ["EU"]}
    assert operator_api.post("/api/v1/passports", body, format="json").status_code == 201
    body["scope"] = [*searching, "!fs:*:**/.ssh/**"]
    response = operator_api.post("/api/v1/passports", body, format="json")
    assert response.status_code == 400
    error = response.json()["errors"]["scope"][0]
    assert "'!fs:*:**/.ssh/**'" in error and f"more than {MAX_SEARCHING_RULES} rules" in error
    assert Passport.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scope": ["gpu:use"], "jurisdiction": ["XX"]}, "jurisdiction"),
        ({"scope": ["gpu:use"], "jurisdiction": []}, "jurisdiction"),
        ({"scope": [], "jurisdiction": ["EU"]}, "scope"),
        ({"scope": "gpu:use", "jurisdiction": ["EU"]}, "scope"),
        ({"scope": ["gpu:use"], "jurisdiction": ["EU"], "ttl_seconds": 10**9}, "ttl_seconds"),
        ({"scope": ["gpu:use"], "jurisdiction": ["EU"], "ttl_seconds": 0}, "ttl_seconds"),
        ({"scope": ["gpu:use"], "jurisdiction": ["EU"], "ttl_seconds": "soon"}, "ttl_seconds"),
        ({"scope": ["gpu:use"], "jurisdiction": ["EU"], "colour": "red"}, "colour"),
        ({"scope": ["fs:wr*te:/x"], "jurisdiction": ["EU"]}, "scope"),
    ],
)
def test_bad_issuance_input_names_the_field(operator_api, agent, body, field):
    response = operator_api.post(
        "/api/v1/passports", {"agent": str(agent.id), **body}, format="json"
    )
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert Passport.objects.count() == 0


def test_unknown_region_is_named_as_a_region_in_the_jurisdiction_field(operator_api, agent):
    body = {"agent": str(agent.id), "scope": ["gpu:use"], "jurisdiction": ["EU", "Mars"]}
    response = operator_api.post("/api/v1/passports", body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"]["jurisdiction"][0].startswith("invalid region 'Mars': ")


def test_missing_fields_are_named(operator_api):
    response = operator_api.post("/api/v1/passports", {}, format="json")
    assert response.status_code == 400
    assert {"agent", "scope", "jurisdiction"} <= set(response.json()["errors"])


def test_unknown_agent_is_rejected(operator_api):
    response = operator_api.post(
        "/api/v1/passports",
        {"agent": str(uuid.uuid4()), "scope": ["gpu:use"], "jurisdiction": ["EU"]},
        format="json",
    )
    assert response.status_code == 400
    assert "agent" in response.json()["errors"]


@pytest.mark.parametrize("status", [Agent.Status.KILLED, Agent.Status.SUSPENDED])
def test_killed_or_suspended_agent_gets_no_passport(operator_api, agent, status):
    agent.status = status
    agent.save()
    response = operator_api.post(
        "/api/v1/passports",
        {"agent": str(agent.id), "scope": ["gpu:use"], "jurisdiction": ["EU"]},
        format="json",
    )
    assert response.status_code == 400
    assert status in response.json()["errors"]["agent"][0]


@pytest.mark.parametrize("payload", ["{not json", "[1, 2]", '"text"', "null"])
def test_malformed_json_is_a_400_with_a_body(operator_api, payload):
    response = operator_api.post("/api/v1/passports", payload, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"]


def test_renew_supersedes_the_old_passport(issue, operator_api):
    old = issue()
    response = operator_api.post(
        f"/api/v1/passports/{old['jti']}/renew", {"ttl_seconds": 120}, format="json"
    )
    assert response.status_code == 201
    new = response.json()
    assert new["jti"] != old["jti"]
    assert new["claims"]["scope"] == old["claims"]["scope"]
    assert Passport.objects.get(jti=old["jti"]).status == "superseded"
    assert Passport.objects.get(jti=new["jti"]).renewed_from_id == uuid.UUID(old["jti"])
    introspect = operator_api.post(
        "/api/v1/passports/introspect", {"token": old["token"]}, format="json"
    ).json()
    assert introspect == {
        "active": False,
        "reason": "superseded",
        "detail": "passport is superseded",
    }


def test_revoke_records_reason_and_actor_and_twice_is_conflict(issue, operator_api):
    issued = issue()
    url = f"/api/v1/passports/{issued['jti']}/revoke"
    response = operator_api.post(url, {"reason": "leaked in CI logs"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "revoked"
    assert body["revoked_by"] == "olivia-operator"
    assert body["revoked_reason"] == "leaked in CI logs"

    introspect = operator_api.post(
        "/api/v1/passports/introspect", {"token": issued["token"]}, format="json"
    ).json()
    assert introspect["active"] is False and introspect["reason"] == "revoked"
    assert "leaked in CI logs" in introspect["detail"]

    again = operator_api.post(url, {"reason": "again"}, format="json")
    assert again.status_code == 409
    assert "already revoked" in again.json()["errors"]["target"][0]


def test_revoke_requires_reason(issue, operator_api):
    issued = issue()
    response = operator_api.post(f"/api/v1/passports/{issued['jti']}/revoke", {}, format="json")
    assert response.status_code == 400
    assert "reason" in response.json()["errors"]
    assert Passport.objects.get(jti=issued["jti"]).status == "active"


def test_revoking_or_renewing_unknown_passport_is_404(operator_api):
    response = operator_api.post(
        f"/api/v1/passports/{uuid.uuid4()}/revoke", {"reason": "x"}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["detail"]


def test_passport_list_filters(issue, operator_api, agent):
    first, second = issue(), issue()
    operator_api.post(f"/api/v1/passports/{first['jti']}/revoke", {"reason": "r"}, format="json")
    revoked = operator_api.get("/api/v1/passports?status=revoked").json()["results"]
    active = operator_api.get(f"/api/v1/passports?status=active&agent={agent.id}").json()
    assert [p["jti"] for p in revoked] == [first["jti"]]
    assert [p["jti"] for p in active["results"]] == [second["jti"]]
    bad = operator_api.get("/api/v1/passports?status=dead")
    assert bad.status_code == 400 and "status" in bad.json()["errors"]


def test_viewer_reads_but_cannot_write(viewer_api, issue, agent):
    issued = issue()
    assert viewer_api.get("/api/v1/passports").status_code == 200
    assert viewer_api.get(f"/api/v1/agents/{agent.id}").status_code == 200
    denied = [
        viewer_api.post("/api/v1/agents", {"name": "x"}, format="json"),
        viewer_api.post(
            "/api/v1/passports",
            {"agent": str(agent.id), "scope": ["gpu:use"], "jurisdiction": ["EU"]},
            format="json",
        ),
        viewer_api.post(
            f"/api/v1/passports/{issued['jti']}/revoke", {"reason": "x"}, format="json"
        ),
        viewer_api.post(f"/api/v1/passports/{issued['jti']}/renew", {}, format="json"),
    ]
    assert [response.status_code for response in denied] == [403, 403, 403, 403]
    assert Passport.objects.get(jti=issued["jti"]).status == "active"


def test_anonymous_gets_only_jwks_and_healthz(db):
    client = APIClient()
    assert client.get("/.well-known/jwks.json").status_code == 200
    assert client.get("/healthz").json()["status"] == "ok"
    for url in ["/api/v1/agents", "/api/v1/passports", "/api/schema/"]:
        assert client.get(url).status_code == 401, url
    response = client.post("/api/v1/passports/introspect", {"token": "x"}, format="json")
    assert response.status_code == 401


def test_wrong_token_is_rejected(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token aps_not-a-real-token")
    response = client.get("/api/v1/agents")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_user_without_role_is_forbidden(django_user_model):
    from tests.conftest import api_client_for

    nobody = django_user_model.objects.create_user(username="nobody", password="x-unused-1")
    assert api_client_for(nobody).get("/api/v1/agents").status_code == 403


def test_openapi_schema_describes_endpoints(viewer_api):
    response = viewer_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/passports/introspect" in paths
    assert "/api/v1/passports/{jti}/revoke" in paths
    docs = viewer_api.get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()


def issue_with_scope_padding(operator_api, agent, padding: int):
    """Issue with scope rules of ``padding`` resource characters in all (500 per rule)."""
    sizes = [500] * (padding // 500) + ([padding % 500] if padding % 500 else [])
    scope = [f"fs:read:/{i:03d}{'a' * size}" for i, size in enumerate(sizes)]
    body = {"agent": str(agent.id), "scope": scope, "jurisdiction": ["EU"]}
    return operator_api.post("/api/v1/passports", body, format="json")


def test_issuance_refuses_a_passport_larger_than_verification_accepts(operator_api, agent):
    too_large = issue_with_scope_padding(operator_api, agent, 256 * 500)
    assert too_large.status_code == 400
    assert f"at most {MAX_TOKEN_BYTES}" in too_large.json()["errors"]["scope"][0]
    low, high = 0, 256 * 500  # the largest padding that is issued, by bisection
    while high - low > 1:
        middle = (low + high) // 2
        response = issue_with_scope_padding(operator_api, agent, middle)
        assert response.status_code in (201, 400), response.content
        low, high = (middle, high) if response.status_code == 201 else (low, middle)
    largest = issue_with_scope_padding(operator_api, agent, low).json()
    assert MAX_TOKEN_BYTES - 4 < len(largest["token"]) <= MAX_TOKEN_BYTES
    introspected = operator_api.post(
        "/api/v1/passports/introspect", {"token": largest["token"]}, format="json"
    ).json()
    assert introspected["active"] is True
    refused = issue_with_scope_padding(operator_api, agent, high)
    assert refused.status_code == 400 and "scope" in refused.json()["errors"]
