"""A sweep driven by the OpenAPI schema: hostile values for every documented parameter and body
field of every operation, and for the console's pages; none may answer 5xx.

What the schema documents is what a client is invited to send, so the sweep covers an endpoint
or parameter as soon as it is documented.
"""

import json
import uuid
from urllib.parse import urlencode

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

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
def clients(admin_user, agent, operator):
    """The most privileged client for each operation (the agent's passport for posting)."""
    issued = issue_passport(
        agent=agent, scope=["fs:*:/**"], jurisdiction=["EU"], ttl_seconds=None, issued_by=operator
    )
    agent_client = APIClient()
    agent_client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    admin_client = api_client_for(admin_user)
    return lambda method, path: (
        agent_client if (method, path) == ("post", "/api/v1/actions") else admin_client
    )


def concrete(path: str, agent) -> str:
    """A path with existing-looking ids: the agent's id, an unknown passport, id 1."""
    return path.replace(
        "{id}", str(agent.id) if path.startswith("/api/v1/agents/") else "1"
    ).replace("{jti}", str(uuid.uuid4()))


def body_fields(operation: dict, components: dict) -> list[str]:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if not content:
        return []
    name = content["schema"]["$ref"].rsplit("/", 1)[-1]
    return list(components[name].get("properties", {}))


def call(client: APIClient, method: str, path: str, **kwargs):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code < 500, (method, path, kwargs, response.content[:300])
    return response


@pytest.mark.parametrize("operation", OPERATIONS, ids=operation_id)
def test_hostile_query_and_path_values_never_answer_5xx(operation, clients, agent):
    method, path, spec, _ = operation
    client = clients(method, path)
    url = concrete(path, agent)
    for parameter in spec.get("parameters", []):
        if parameter["in"] == "query":
            for value in HOSTILE_TEXT:
                call(client, method, url, data=None, QUERY_STRING=_query(parameter["name"], value))
        elif parameter["in"] == "path":
            for value in ("0", "9" * 25, str(uuid.uuid4()), "garbage"):
                call(client, method, path.replace("{" + parameter["name"] + "}", value))


def _query(name: str, value: str) -> str:
    return urlencode({name: value})


@pytest.mark.parametrize(
    "operation", [op for op in OPERATIONS if op[0] in ("post", "patch")], ids=operation_id
)
def test_hostile_body_fields_never_answer_5xx(operation, clients, agent):
    method, path, spec, components = operation
    client = clients(method, path)
    url = concrete(path, agent)
    for body in HOSTILE_BODIES:
        call(client, method, url, data=body, format="json")
    for field in body_fields(spec, components):
        for value in HOSTILE_JSON:
            body = _encoded({field: value})
            call(client, method, url, data=body, content_type="application/json")


def _encoded(document: object) -> bytes:
    """JSON as a hostile client may send it: lone surrogates escaped, not refused."""
    return json.dumps(document, ensure_ascii=True).encode()


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
            response = client.get(page, QUERY_STRING=_query(name, value))
            assert response.status_code < 500, (page, name, value[:40], response.content[:300])
