"""A sweep driven by the OpenAPI schema: hostile values for every documented parameter and body
field of every operation, and for the console's pages; none may answer 5xx.

What the schema documents is what a client is invited to send, so the sweep covers an endpoint
or parameter as soon as it is documented.
"""

import json
import time
import uuid
from urllib.parse import urlencode

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from killswitch import services as killswitch
from killswitch.models import KillRule, Revocation
from passports.models import Agent
from passports.services import issue_passport
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

HOSTILE_TEXT = [
    "garbage",
    "",
    " ",
    "\x00",
    "a\x00b",
    "²",
    "-1",
    "0",
    "9" * 25,
    "9" * 5000,
    "1e309",
    "NaN",
    "true",
    "null",
    "[]",
    "2026-02-30T00:00:00Z",
    "2026-01-01T25:00:00Z",
    "2026-01-01T00:00:00+99:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "x" * 20_000,
    "' OR 1=1 --",
    "\u202e\ufeff",
]
DEEP: object = "deep"
for _ in range(40):
    DEEP = [DEEP]
HOSTILE_JSON = [
    None,
    True,
    -1,
    2**64,
    -(2**63) - 1,
    1e308,
    "",
    "\x00",
    "\ud800",
    "x" * 100_000,
    "2026-02-30T00:00:00Z",
    "9999-12-31T23:59:59-01:00",
    [],
    [None],
    {},
    {"\ud800": 1},
    DEEP,
]
HOSTILE_BODIES = [None, [], "text", 1, {"unknown": 1}, {"\x00": 1}]


def operations() -> list[tuple[str, str, dict, dict]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method, path, operation, schema["components"]["schemas"])
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]


OPERATIONS = operations()


def operation_id(operation: tuple) -> str:
    return f"{operation[0].upper()} {operation[1]}"


@pytest.fixture
def sweep(admin_user, agent, operator):
    """Clients, concrete URLs and a valid body for each operation, so that each hostile value
    replaces one field of a request that would otherwise succeed (and reach the database)."""
    issued = issue_passport(
        agent=agent,
        scope=["fs:*:/**"],
        jurisdiction=["EU"],
        ttl_seconds=None,
        issued_by=operator,
        agent_may_renew=True,  # so that the agent's self-renewal succeeds once
    )
    rule = KillRule.objects.create(
        name="sweep", kind="deny_rate", threshold=5, window_seconds=60, created_by=admin_user
    )
    # A fleet kill to lift, of a fleet other than the agent's (nothing is issued under a kill).
    Agent.objects.create(name="other", fleet="other-fleet", owner=operator)
    revocation = killswitch.revoke(
        target=killswitch.parse_target({"fleet": "other-fleet"}),
        reason="r",
        actor=admin_user,
        source=Revocation.Source.API,
    )
    agent_client = APIClient()
    agent_client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    admin_client = api_client_for(admin_user)
    jti = str(issued.passport.jti)
    ids = {
        "/api/v1/agents/": str(agent.id),
        "/api/v1/killswitch/": str(revocation.pk),
        "/api/v1/rules/": str(rule.pk),
        "/api/v1/rules/matches/": "1",
        "/api/v1/signals/": "1",
    }
    event = {
        "id": str(uuid.uuid4()),
        "action": "fs:read",
        "resource": "/x",
        "jurisdiction": "DE",
        "decision": "allow",
        "reason": "r",
        "at": time.time(),
        "details": {"k": "v"},
    }
    stopped = {"epoch": 1, "cause": "revoked", "processes": 2, "sigkilled": 1, "at": time.time()}
    supervisor = {
        "mechanism": "cgroup",
        "child_pid": 2,
        "processes": 0,
        "state": "stopped",
        "stopped": stopped,
    }
    bodies = {
        "/api/v1/actions": {
            "events": [event],
            "heartbeat": {"epoch": 1, "host": "h", "pid": 1, "supervisor": supervisor},
        },
        "/api/v1/agents": {"name": "n", "fleet": "f", "description": "d", "host": "h"},
        "/api/v1/passports": {
            "agent": str(agent.id),
            "scope": ["fs:*:/x/**"],
            "jurisdiction": ["EU"],
            "ttl_seconds": 60,
            "agent_may_renew": True,
        },
        "/api/v1/passports/self/renew": {"grace_seconds": 0},
        "/api/v1/passports/{jti}/renew": {"ttl_seconds": 60, "grace_seconds": 0},
        "/api/v1/passports/{jti}/revoke": {"reason": "r"},
        "/api/v1/passports/introspect": {"token": issued.token},
        "/api/v1/killswitch": {"target": {"agent": str(agent.id)}, "reason": "r"},
        "/api/v1/killswitch/{id}/lift": {"reason": "r"},
        "/api/v1/rules": {
            "name": "n",
            "kind": "deny_rate",
            "pattern": "net:*",
            "threshold": 5,
            "window_seconds": 60,
            "category": "",
            "enabled": True,
            "dry_run": True,
            "webhook_url": "https://hooks.example/x",
        },
        "/api/v1/rules/{id}": {
            "pattern": "net:*",
            "threshold": 5,
            "window_seconds": 60,
            "category": "",
            "enabled": False,
            "dry_run": True,
            "webhook_url": "",
        },
        "/api/v1/signals": {
            "occurred_at": "2026-01-01T00:00:00Z",
            "source_host": "h",
            "source_ip": "10.0.0.9",
            "destination": "d",
            "category": "port-scan",
            "raw": {"k": ["v"]},
        },
    }

    def concrete(path: str) -> str:
        """The path with the fixture's ids in place of ``{id}`` and ``{jti}``."""
        prefix = max((p for p in ids if path.startswith(p)), key=len, default=None)
        path = path.replace("{jti}", jti)
        return path.replace("{id}", ids[prefix]) if prefix else path

    def client(method: str, path: str) -> APIClient:
        by_agent = {("post", "/api/v1/actions"), ("post", "/api/v1/passports/self/renew")}
        return agent_client if (method, path) in by_agent else admin_client

    return client, concrete, bodies


def leaf_paths(document: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a body (into objects, and the first item of lists)."""
    if isinstance(document, dict):
        children = document.items()
    elif isinstance(document, list) and document:
        children = [(0, document[0])]
    else:
        return [prefix]
    return [prefix] + [p for key, item in children for p in leaf_paths(item, (*prefix, key))]


def replaced(document: object, path: tuple, value: object) -> object:
    if not path:
        return value
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[path[0]] = replaced(document[path[0]], path[1:], value)
    return copy


def call(client: APIClient, method: str, path: str, **kwargs):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code < 500, (method, path, kwargs, response.content[:300])
    return response


@pytest.mark.parametrize("operation", OPERATIONS, ids=operation_id)
def test_hostile_query_and_path_values_never_answer_5xx(operation, sweep):
    method, path, spec, _ = operation
    client, concrete, _ = sweep
    client = client(method, path)
    for parameter in spec.get("parameters", []):
        if parameter["in"] == "query":
            for value in HOSTILE_TEXT:
                query = urlencode({parameter["name"]: value})
                call(client, method, concrete(path), QUERY_STRING=query)
        elif parameter["in"] == "path":
            for value in ("0", "9" * 25, str(uuid.uuid4()), "garbage"):
                call(client, method, path.replace("{" + parameter["name"] + "}", value))


BODY_OPERATIONS = [op for op in OPERATIONS if "requestBody" in op[2]]


@pytest.mark.parametrize("operation", BODY_OPERATIONS, ids=operation_id)
def test_hostile_body_fields_never_answer_5xx(operation, sweep):
    method, path, spec, components = operation
    client, concrete, bodies = sweep
    client, url = client(method, path), concrete(path)
    valid = bodies[path]  # a new endpoint needs a valid body here to be swept
    assert set(body_fields(spec, components)) <= set(valid), "sweep every documented field"
    accepted = call(client, method, url, data=valid, format="json")
    assert accepted.status_code in (200, 201), accepted.content  # the sweep reaches the database
    for body in HOSTILE_BODIES:
        call(client, method, url, data=body, format="json")
    for key_path in leaf_paths(valid):
        for value in HOSTILE_JSON:
            body = json.dumps(replaced(valid, key_path, value)).encode()  # "\ud800" escaped
            call(client, method, url, data=body, content_type="application/json")


def body_fields(operation: dict, components: dict) -> list[str]:
    name = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return list(components[name.rsplit("/", 1)[-1]].get("properties", {}))


CONSOLE_PAGES = [
    ("/agents/", ["q", "fleet", "status", "page"]),
    ("/actions/", ["agent", "fleet", "decision", "action", "since", "until", "page", "verify"]),
    ("/kill/", ["agent", "fleet", "all", "mode"]),
    ("/passports/new", ["agent"]),
    ("/", []),
    ("/rules/", []),
    ("/keys/", []),
]


@pytest.mark.parametrize(("page", "names"), CONSOLE_PAGES)
def test_hostile_console_query_values_never_answer_5xx(client, admin_user, page, names):
    client.force_login(admin_user)
    for name in names:
        for value in HOSTILE_TEXT:
            response = client.get(page, QUERY_STRING=urlencode({name: value}))
            assert response.status_code < 500, (page, name, value[:40], response.content[:300])
