"""The OpenAPI schema describes every field of every successful response.

Two checks: statically, no 2xx response schema holds an untyped value or a free-form object (a
client generated from the schema would get an opaque ``dict``/``Any``); and by calling the
endpoints whose answers services build, no field of a real answer is missing from its schema.
"""

from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from actions.services import rotate_signing_key
from killswitch.models import KillRule
from signals.models import Signal
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

Schema = dict[str, Any]

# Free-form on purpose: what a reporter sent, stored and shown as it came.
FREE_FORM = {
    ("ActionEvent", "details"): "the details an agent reported with an event",
    ("EventDocument", "details"): "the same, in an inclusion proof's event document",
    ("Signal", "raw"): "the IDS/firewall/EDR's original payload",
}
COMBINATIONS = ("allOf", "oneOf", "anyOf")
TIMELINE_KINDS = ("action", "signal", "rule_match", "revocation", "lift")


@pytest.fixture(scope="module")
def schema() -> Schema:
    return SchemaGenerator().get_schema(request=None, public=True)


def _untyped(
    node: Schema, components: Schema, where: str, owner: str, seen: set[str]
) -> Iterator[str]:
    """Paths below ``node`` whose values the schema leaves untyped or free-form."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name not in seen:
            seen.add(name)
            yield from _untyped(components[name], components, f"{where}<{name}>", name, seen)
        return
    for combination in COMBINATIONS:
        for index, part in enumerate(node.get(combination, [])):
            yield from _untyped(part, components, f"{where}.{combination}[{index}]", owner, seen)
    kind = node.get("type")
    if kind == "array":
        yield from _untyped(node.get("items", {}), components, f"{where}[]", owner, seen)
    elif kind == "object" or "properties" in node or "additionalProperties" in node:
        values = node.get("additionalProperties")
        if isinstance(values, dict) and values:
            yield from _untyped(values, components, f"{where}{{*}}", owner, seen)
        elif not node.get("properties"):
            yield f"{where}: an object without properties"
        for name, value in node.get("properties", {}).items():
            if (owner, name) not in FREE_FORM:
                yield from _untyped(value, components, f"{where}.{name}", owner, seen)
    elif kind is None and not any(key in node for key in (*COMBINATIONS, "enum")):
        yield f"{where}: no type"


def test_every_successful_response_field_has_a_type(schema: Schema) -> None:
    components = schema["components"]["schemas"]
    untyped = [
        problem
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        for code, response in operation["responses"].items()
        if code.startswith("2")
        for media, content in response.get("content", {}).items()
        if media == "application/json"
        for problem in _untyped(
            content["schema"], components, f"{method.upper()} {path} {code}", "", set()
        )
    ]
    assert untyped == []


def _undescribed(value: object, node: Schema, components: Schema, where: str) -> list[str]:
    """Fields of ``value`` (a JSON answer) that ``node`` does not describe."""
    if "$ref" in node:
        return _undescribed(value, components[node["$ref"].rsplit("/", 1)[-1]], components, where)
    if "allOf" in node:
        return [p for part in node["allOf"] for p in _undescribed(value, part, components, where)]
    if "oneOf" in node:
        tries = [_undescribed(value, part, components, where) for part in node["oneOf"]]
        return min(tries, key=len)
    if isinstance(value, list):
        items = node.get("items", {})
        return [p for i, v in enumerate(value) for p in _undescribed(v, items, components, where)]
    if not isinstance(value, dict):
        return []
    properties = node.get("properties", {})
    values = node.get("additionalProperties")
    problems = []
    for name, item in value.items():
        if name in properties:
            problems += _undescribed(item, properties[name], components, f"{where}.{name}")
        elif isinstance(values, dict) and values:
            problems += _undescribed(item, values, components, f"{where}.{name}")
        else:
            problems.append(f"{where}.{name}")
    return problems


def _response_schema(schema: Schema, path: str, method: str, code: int) -> Schema:
    operation = schema["paths"][path][method]
    return operation["responses"][str(code)]["content"]["application/json"]["schema"]


def _report_a_denied_tunnel(token: str) -> None:
    """The agent reports a deny (and a heartbeat: it is running, so it acknowledges kills)."""
    event = {
        "id": "6f1f7ab1-7a4e-4a53-9a1e-2f6c2c1f0a01",
        "action": "net:tunnel:203.0.113.9:22",
        "resource": "",
        "jurisdiction": "EU",
        "decision": "deny",
        "reason": "not in scope",
        "at": timezone.now().timestamp(),
    }
    body = {"events": [event], "heartbeat": {"epoch": 0, "host": "h"}}
    agent_api = APIClient()
    agent_api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    reported = agent_api.post("/api/v1/actions", body, format="json")
    assert reported.status_code == 200 and reported.json()["accepted"] == 1, reported.content


def _report_a_stopped_tree(token: str, *, epoch: int) -> None:
    """A supervisor's last heartbeat: it stopped the tree for the revocation of ``epoch``."""
    stopped = {"epoch": epoch, "cause": "revoked", "processes": 3, "sigkilled": 1, "at": 1e9}
    supervisor = {"mechanism": "cgroup", "processes": 0, "state": "stopped", "stopped": stopped}
    heartbeat = {"epoch": epoch, "host": "h", "pid": 2, "supervisor": supervisor}
    agent_api = APIClient()
    agent_api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    reported = agent_api.post(
        "/api/v1/actions", {"events": [], "heartbeat": heartbeat}, format="json"
    )
    assert reported.status_code == 200, reported.content


@pytest.fixture
def history(admin_user, agent, issue, django_capture_on_commit_callbacks) -> dict[str, Any]:
    """An agent with one timeline item of every kind, a lifted kill and a rotated key."""
    api = api_client_for(admin_user)
    issued = issue()
    KillRule.objects.create(
        name="tunnels",
        kind="deny_pattern",
        pattern="net:tunnel:*",
        dry_run=True,
        created_by=admin_user,
    )
    with django_capture_on_commit_callbacks(execute=True):  # the kill rules run on commit
        _report_a_denied_tunnel(issued["token"])
    signal = {
        "category": Signal.Category.values[0],
        "source_ip": agent.host,
        "destination": "evil.example",
        "occurred_at": timezone.now().isoformat(),
    }
    assert api.post("/api/v1/signals", signal, format="json").status_code == 201
    kill = {"target": {"agent": str(agent.pk)}, "reason": "drill"}
    revoked = api.post("/api/v1/killswitch", kill, format="json").json()
    revocation = revoked["id"]
    _report_a_stopped_tree(issued["token"], epoch=revoked["epoch"])
    api.post(f"/api/v1/killswitch/{revocation}/lift", {"reason": "done"}, format="json")
    rotate_signing_key()
    rule_match = api.get("/api/v1/rules/matches").json()["results"][0]["id"]
    return {"issued": issued, "revocation": revocation, "rule_match": rule_match}


def test_answers_built_by_services_are_fully_described(
    schema: Schema, admin_user, agent, history
) -> None:
    """Run status, timeline items of every kind, introspection (active and not), an issued
    passport's claims, acknowledgements, rule matches and the audit report."""
    api = api_client_for(admin_user)
    components = schema["components"]["schemas"]
    token = history["issued"]["token"]
    answers = [
        ("/api/v1/agents/{id}/status", f"/api/v1/agents/{agent.pk}/status", None),
        ("/api/v1/agents/{id}/timeline", f"/api/v1/agents/{agent.pk}/timeline", None),
        ("/api/v1/passports/introspect", "/api/v1/passports/introspect", {"token": token}),
        ("/api/v1/passports/introspect", "/api/v1/passports/introspect", {"token": "x.y.z"}),
        ("/api/v1/audit", "/api/v1/audit", None),
        ("/api/v1/rules/matches/{id}", f"/api/v1/rules/matches/{history['rule_match']}", None),
        (
            "/api/v1/killswitch/{id}/acknowledgements",
            f"/api/v1/killswitch/{history['revocation']}/acknowledgements",
            None,
        ),
    ]
    undescribed = {}
    for number, (documented, url, body) in enumerate(answers):
        method = "get" if body is None else "post"
        response = api.get(url) if body is None else api.post(url, body, format="json")
        assert response.status_code == 200, (url, response.content)
        node = _response_schema(schema, documented, method, 200)
        undescribed[f"{number}: {url}"] = _undescribed(response.json(), node, components, "")
    issued = _response_schema(schema, "/api/v1/passports", "post", 201)
    undescribed["issued"] = _undescribed(history["issued"], issued, components, "")
    timeline = api.get(f"/api/v1/agents/{agent.pk}/timeline").json()["items"]
    assert {item["type"] for item in timeline} == {*TIMELINE_KINDS}
    acks = api.get(f"/api/v1/killswitch/{history['revocation']}/acknowledgements").json()
    assert len(acks["agents"]) == 1
    assert [copy["stopped"] is not None for copy in acks["agents"][0]["copies"]] == [False, True]
    assert {url: fields for url, fields in undescribed.items() if fields} == {}
