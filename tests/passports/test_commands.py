"""Management commands: create_operator, rotate_signing_key, ensure_signing_key."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from passports.models import ApiToken, SigningKey
from passports.roles import Role, role_of

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def parse(output: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in output.strip().splitlines()) | {}


def test_create_operator_prints_a_working_token_and_stores_only_its_digest(django_user_model):
    fields = {
        key: value.strip()
        for key, value in parse(run("create_operator", "maria", "--role", "operator")).items()
    }
    user = django_user_model.objects.get(username="maria")
    assert role_of(user) == Role.OPERATOR
    assert user.check_password(fields["password"])
    token = fields["token"]
    assert not ApiToken.objects.filter(digest=token).exists()
    assert token not in str(list(ApiToken.objects.values_list("digest", "prefix")))

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.post("/api/v1/agents", {"name": "a"}, format="json").status_code == 201


def test_create_operator_refuses_duplicates_unless_reset(django_user_model):
    run("create_operator", "sam")
    with pytest.raises(CommandError, match="already exists"):
        run("create_operator", "sam")
    fields = parse(run("create_operator", "sam", "--role", "admin", "--reset"))
    assert fields["role"].strip() == "admin"
    assert role_of(django_user_model.objects.get(username="sam")) == Role.ADMIN


def test_create_operator_rejects_unknown_role():
    with pytest.raises(CommandError, match="invalid choice"):
        run("create_operator", "zed", "--role", "root")


def test_ensure_signing_key_is_idempotent():
    first = run("ensure_signing_key")
    second = run("ensure_signing_key")
    assert first == second
    assert SigningKey.objects.count() == 1


def test_rotate_retires_an_old_key_at_once_when_it_signed_nothing_unexpired():
    old_kid = run("ensure_signing_key").split(":")[1].strip()
    output = run("rotate_signing_key")
    active = SigningKey.objects.get(state="active")
    assert active.kid != old_kid
    assert f"active key: {active.kid}" in output
    assert f"retired:    {old_kid}" in output
    assert SigningKey.objects.get(kid=old_kid).state == "retired"


def test_create_operator_keep_password_replaces_the_token_but_not_the_password(
    django_user_model,
):
    first = parse(run("create_operator", "demo", "--role", "admin", "--keep-password"))
    password = first["password"].strip()
    again = parse(run("create_operator", "demo", "--role", "admin", "--keep-password"))
    user = django_user_model.objects.get(username="demo")
    assert user.check_password(password), "a running instance's password was rotated"
    assert "unchanged" in again["password"] and "--reset" in again["password"]
    assert ApiToken.objects.filter(user=user).count() == 1
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {first['token'].strip()}")
    assert client.get("/api/v1/agents").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Token {again['token'].strip()}")
    assert client.get("/api/v1/agents").status_code == 200


def test_create_operator_reset_does_not_pile_up_tokens(django_user_model):
    run("create_operator", "sam")
    for _ in range(3):
        run("create_operator", "sam", "--reset")
    assert ApiToken.objects.filter(user__username="sam").count() == 1
