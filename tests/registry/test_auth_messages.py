"""Signed-out browsers are sent to sign in; a wrong authentication scheme says which to use."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from passports.auth import create_api_token
from passports.services import issue_passport

pytestmark = pytest.mark.django_db

BROWSER = {"HTTP_ACCEPT": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.mark.parametrize("path", ["/api/docs/", "/api/schema/"])
def test_signed_out_browser_is_redirected_to_sign_in_and_back(path):
    response = Client().get(path, **BROWSER)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"


@pytest.mark.parametrize("path", ["/api/docs/", "/api/schema/"])
def test_signed_out_api_client_still_gets_401(path):
    assert APIClient().get(path).status_code == 401


def test_signed_in_browser_sees_the_docs(viewer):
    client = Client()
    client.force_login(viewer)
    assert client.get("/api/docs/", **BROWSER).status_code == 200


def test_operator_token_sent_as_bearer_says_to_use_token(operator):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_token(user=operator)}")
    response = client.get("/api/v1/agents")
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert "'Authorization: Token <key>'" in detail and "POST /api/v1/actions" in detail


def test_passport_on_an_operator_endpoint_says_where_passports_go(agent, operator):
    issued = issue_passport(
        agent=agent, scope=["fs:*:/**"], jurisdiction=["EU"], ttl_seconds=None, issued_by=operator
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    assert "POST /api/v1/actions" in client.get("/api/v1/passports").json()["detail"]


@pytest.mark.parametrize("scheme", ["Token", "Bearer"])
def test_operator_token_posting_actions_is_told_only_agents_post(operator, scheme):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {create_api_token(user=operator)}")
    response = client.post("/api/v1/actions", {"events": []}, format="json")
    assert response.status_code == 401
    body = response.json()
    assert "with its own passport" in str(body), body


def test_unknown_and_mistyped_fields_are_reported_together(operator_api):
    response = operator_api.post(
        "/api/v1/agents", {"name": 5, "fleet": "bad fleet!", "colour": "red"}, format="json"
    )
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"name", "fleet", "colour"}
