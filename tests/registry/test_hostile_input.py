"""Input an outside attacker controls is a 4xx naming what is wrong, never a 500.

JSON bodies (nesting, lone surrogates, NUL), oversized requests, forged cursors, query parameters
(ids, dates, booleans, NUL) on every endpoint that takes them.
"""

import base64
import json
import uuid

import pytest
from rest_framework.test import APIClient

from actions.models import ActionEvent
from passports.services import issue_passport
from signals.models import Signal
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

# Every endpoint that reads a JSON body; the body is parsed before any id in the path is looked up.
JSON_ENDPOINTS = [
    ("post", "/api/v1/agents"),
    ("post", "/api/v1/passports"),
    ("post", f"/api/v1/passports/{uuid.uuid4()}/renew"),
    ("post", f"/api/v1/passports/{uuid.uuid4()}/revoke"),
    ("post", "/api/v1/passports/introspect"),
    ("post", "/api/v1/killswitch"),
    ("post", "/api/v1/killswitch/1/lift"),
    ("post", "/api/v1/rules"),
    ("patch", "/api/v1/rules/1"),
    ("post", "/api/v1/signals"),
    ("post", "/api/v1/actions"),
]


@pytest.fixture
def admin_api(admin_user) -> APIClient:
    return api_client_for(admin_user)


@pytest.fixture
def agent_api(agent, operator) -> APIClient:
    issued = issue_passport(
        agent=agent, scope=["fs:*:/**"], jurisdiction=["EU"], ttl_seconds=None, issued_by=operator
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    return client


@pytest.fixture
def client_for(admin_api, agent_api):
    return lambda path: agent_api if path == "/api/v1/actions" else admin_api


def send(client: APIClient, method: str, path: str, body: bytes | str):
    return getattr(client, method)(path, body, content_type="application/json")


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
def test_deeply_nested_json_is_a_400_on_every_json_endpoint(client_for, method, path):
    for depth in (10_000, 100):
        response = send(client_for(path), method, path, "[" * depth + "]" * depth)
        assert response.status_code == 400, (depth, response.content)
        assert "nested more than" in response.json()["errors"]["body"][0]


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
def test_body_over_the_upload_limit_is_a_413_on_every_json_endpoint(
    client_for, method, path, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = send(client_for(path), method, path, json.dumps({"reason": "x" * 2000}))
    assert response.status_code == 413, response.content
    assert "larger than 1000 bytes" in response.json()["errors"]["body"][0]


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\u0000"])
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/api/v1/signals",
            '{"occurred_at": "2026-01-01T00:00:00Z", "category": "port-scan", '
            '"raw": {"payload": ["ok", "%s"]}}',
            "raw",
        ),
        (
            "/api/v1/signals",
            '{"occurred_at": "2026-01-01T00:00:00Z", "category": "%s"}',
            "category",
        ),
        ("/api/v1/killswitch", '{"target": {"fleet": "gpu%s"}, "reason": "r"}', "target"),
        ("/api/v1/agents", '{"name": "a%s"}', "name"),
        ("/api/v1/agents", '{"name": "a", "a%s": 1}', None),
        ("/api/v1/rules", '{"name": "r", "kind": "x%s"}', "kind"),
    ],
)
def test_lone_surrogate_or_nul_in_any_string_is_a_400_naming_the_field(
    admin_api, path, body, field, escape
):
    response = send(admin_api, "post", path, body % escape)
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    if field:
        assert field in errors, errors
    else:  # the unknown key itself is the bad text: it is named, escaped
        assert list(errors) == [f"a{escape}"]
    assert Signal.objects.count() == 0


def test_unstorable_text_in_one_event_is_that_events_error_the_others_are_kept(agent_api):
    """The batch contract: a malformed event does not fail the batch."""

    def event(**extra: str) -> str:
        fields = {"id": str(uuid.uuid4()), "action": "fs:read", "decision": "allow", "at": 1.0}
        return json.dumps(fields)[:-1] + "".join(f", {k}: {v}" for k, v in extra.items()) + "}"

    events = [
        event(**{'"details"': '{"path": "\\udcff"}'}),
        event(**{'"resource"': '"/etc/passwd\\u0000.png"'}),
        event(**{'"d\\ud800"': "1"}),
        event(**{'"decision"': '"\\ud800"'}),
        event(),
    ]
    body = '{"events": [' + ", ".join(events) + "]}"
    response = send(agent_api, "post", "/api/v1/actions", body)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["accepted"] == 1
    errors = answer["errors"]
    assert "details.path contains a lone surrogate" in errors["0"]["details"][0]
    assert "resource contains a NUL character" in errors["1"]["resource"][0]
    assert list(errors["2"]) == ["d\\ud800"]
    assert "decision" in errors["3"]
    assert ActionEvent.objects.count() == 1


@pytest.mark.parametrize(
    "envelope",
    ['"heartbeat": {"host": "h\\u0000"}', '"heartbeat": {"h\\ud800": 1}', '"x\\udfff": 1'],
)
def test_unstorable_text_in_the_batch_envelope_is_a_400(agent_api, envelope):
    response = send(agent_api, "post", "/api/v1/actions", '{"events": [], ' + envelope + "}")
    assert response.status_code == 400, response.content


def test_valid_surrogate_pairs_and_escaped_backslashes_are_accepted(admin_api):
    body = (
        '{"occurred_at": "2026-01-01T00:00:00Z", "category": "port-scan", "source_ip": "10.0.0.9", '
        '"raw": {"emoji": "\\ud83d\\ude00", "literal": "\\\\ud800 \\\\u0000"}}'
    )
    response = send(admin_api, "post", "/api/v1/signals", body)
    assert response.status_code == 201, response.content
    assert Signal.objects.get().raw == {"emoji": "😀", "literal": "\\ud800 \\u0000"}


def cursor(query: str) -> str:
    return base64.b64encode(query.encode()).decode()


LIST_ENDPOINTS = [
    "/api/v1/agents",
    "/api/v1/passports",
    "/api/v1/actions",
    "/api/v1/killswitch",
    "/api/v1/rules",
    "/api/v1/rules/matches",
    "/api/v1/signals",
]


@pytest.mark.parametrize("path", LIST_ENDPOINTS)
@pytest.mark.parametrize(
    "forged",
    [
        "not-base64!",
        cursor("p=garbage"),
        cursor("p=1%00"),
        cursor("p=99999999999999999999999"),
        cursor("p=2026-02-30T00:00:00Z"),
        cursor("p=0001-01-01T00:00:00%2B01:00"),
        cursor("o=9" * 5000),
    ],
)
def test_forged_cursor_is_a_400_naming_cursor_on_every_list(admin_api, path, forged):
    response = admin_api.get(path, {"cursor": forged})
    assert response.status_code == 400, response.content
    assert "cursor" in response.json()["errors"]


def test_a_real_cursor_still_pages(operator_api, operator):
    from passports.models import Agent

    for index in range(3):
        Agent.objects.create(name=f"a{index}", owner=operator)
    first = operator_api.get("/api/v1/agents", {"page_size": 2}).json()
    second = operator_api.get(first["next"]).json()
    names = [a["name"] for a in first["results"] + second["results"]]
    assert sorted(names) == ["a0", "a1", "a2"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/api/v1/passports?agent=garbage", "agent"),
        ("/api/v1/rules/matches?rule=%C2%B2", "rule"),
        ("/api/v1/rules/matches?rule=99999999999999999999", "rule"),
        ("/api/v1/rules/matches?rule=" + "9" * 5000, "rule"),
        ("/api/v1/rules/matches?dry_run=yes", "dry_run"),
        ("/api/v1/killswitch?active=yes", "active"),
        ("/api/v1/actions?since=2026-02-30T00:00:00Z", "since"),
        ("/api/v1/actions?since=2026-01-01T25:00:00Z", "since"),
        ("/api/v1/actions?until=2026-01-01T00:00:00%2B99:00", "until"),
        ("/api/v1/actions?since=0001-01-01T00:00:00%2B01:00", "since"),
        ("/api/v1/actions?until=9999-12-31T23:59:59-01:00", "until"),
        ("/api/v1/actions/export?format=csv&since=2026-02-30T00:00:00Z", "since"),
        ("/api/v1/actions/export?format=csv&until=9999-12-31T23:59:59-01:00", "until"),
        ("/api/v1/agents?fleet=%00", "fleet"),
        ("/api/v1/signals?agent=%00", "agent"),
        ("/api/v1/actions?fleet=gpu%00", "fleet"),
        ("/api/v1/agents?%00=1", "%00"),
    ],
)
def test_impossible_query_parameter_is_a_400_naming_it(admin_api, query, field):
    response = admin_api.get(query)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


def test_dates_at_the_edges_of_the_calendar_are_accepted(admin_api):
    response = admin_api.get(
        "/api/v1/actions", {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"}
    )
    assert response.status_code == 200, response.content


def test_too_many_query_parameters_is_a_400_not_a_500(admin_api, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    response = admin_api.get("/api/v1/agents?" + "&".join(f"p{i}=1" for i in range(20)))
    assert response.status_code == 400, response.content
    assert "more than 10 parameters" in response.json()["detail"]


def test_huge_page_size_is_capped_not_an_error(admin_api):
    response = admin_api.get("/api/v1/agents", {"page_size": "9" * 40})
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"name": "\xff\xfe"}', "application/json", 400),
        (b"name=x", "text/plain", 415),
        (b"name=x", "application/x-www-form-urlencoded", 415),
        (b"", "application/json", 400),
        (b'{"name": NaN}', "application/json", 400),
    ],
)
def test_undecodable_or_unsupported_bodies_are_4xx(admin_api, body, content_type, status):
    response = admin_api.post("/api/v1/agents", body, content_type=content_type)
    assert response.status_code == status, response.content


@pytest.mark.parametrize("method", ["PROPFIND", "TRACE", "BREW"])
def test_unknown_http_method_is_a_405(admin_api, method):
    assert admin_api.generic(method, "/api/v1/agents").status_code == 405


def test_several_wrong_fields_are_all_reported(admin_api):
    response = admin_api.post("/api/v1/agents", {"name": 5, "fleet": 7}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert set(body["errors"]) == {"name", "fleet"}
    assert "'name'" in body["detail"] and "'fleet'" in body["detail"]


@pytest.fixture
def console(admin_user):
    from django.test import Client

    client = Client()
    client.force_login(admin_user)
    return client


def test_console_form_over_the_upload_limit_is_a_413_page(console, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = console.post("/kill/?all=1", {"reason": "x" * 2000, "confirm": "KILL"})
    assert response.status_code == 413
    assert response["Content-Type"].startswith("text/html")
    assert b"larger than 1000 bytes" in response.content


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("get", "/agents/", {"q": "a\x00"}),
        ("get", "/actions/", {"fleet": "\x00"}),
        ("get", "/kill/", {"fleet": "gpu\x00"}),
        ("post", "/kill/", {"fleet": "gpu\x00", "reason": "r"}),
    ],
)
def test_console_nul_in_a_parameter_is_a_400_page_naming_it(console, method, path, data):
    response = getattr(console, method)(path, data)
    assert response.status_code == 400
    assert b"contains a NUL character" in response.content
    name = next(iter(data)).encode()
    assert b"&#x27;" + name + b"&#x27;" in response.content


def test_console_impossible_date_is_a_message_on_the_action_log(console):
    response = console.get("/actions/", {"since": "2026-02-30T00:00:00Z"})
    assert response.status_code == 200
    assert b"since: is not a real date-time" in response.content


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/agents/",
        "/actions/",
        "/kill/?all=1",
        "/rules/",
        "/keys/",
        "/passports/new",
        "/login/",
        "/logout/",
        "/console/live.json",
        "/api/v1/agents",
        "/api/v1/actions",
        "/api/v1/actions/export",
        "/api/v1/audit",
        "/api/schema/",
        "/.well-known/jwks.json",
        "/healthz",
        "/revocations/99999999999999999999/",
        "/revocations/99999999999999999999/acks.json",
        "/revocations/99999999999999999999/lift",
        "/rules/99999999999999999999/toggle",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PROPFIND", "BREW"])
def test_any_method_on_any_page_is_never_a_5xx(console, path, method):
    assert console.generic(method, path).status_code < 500


def test_sign_in_with_hostile_user_names_is_a_form_error(db):
    from django.test import Client

    for username in ["a\x00", "x" * 100_000, "\ufeff", "\uff41" * 151]:
        response = Client().post("/login/", {"username": username, "password": "p"})
        assert response.status_code in (200, 400), username[:10]
