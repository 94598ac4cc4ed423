"""Sign-in throttling counts what Django authenticates: the NFKC-normalised user name."""

import pytest
from django.test import Client

from console.access import MAX_FAILED_SIGN_INS, MAX_FAILED_SIGN_INS_PER_ADDRESS

pytestmark = pytest.mark.django_db

PASSWORD = "unused-test-password"  # tests.conftest.make_user


def fail(client: Client, username: str, times: int) -> None:
    for _ in range(times):
        response = client.post("/login/", {"username": username, "password": "wrong"})
        assert response.status_code == 200


def signs_in(client: Client, username: str) -> bool:
    client.post("/login/", {"username": username, "password": PASSWORD})
    return "_auth_user_id" in client.session


def full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def test_full_width_name_shares_the_lockout_of_the_name_it_normalises_to(operator):
    client = Client()
    fail(client, operator.username, MAX_FAILED_SIGN_INS)
    fail(client, full_width(operator.username), 1)
    response = client.post(
        "/login/", {"username": full_width(operator.username), "password": PASSWORD}
    )
    assert b"Too many failed sign-ins" in response.content
    assert not signs_in(client, operator.username)


@pytest.mark.parametrize("variant", [str.upper, lambda name: f"  {name} ", full_width])
def test_variants_of_a_name_count_towards_one_limit(operator, variant):
    client = Client()
    fail(client, variant(operator.username), MAX_FAILED_SIGN_INS)
    assert not signs_in(client, operator.username)


def test_one_address_trying_many_names_is_limited_too(operator):
    client = Client()
    for index in range(MAX_FAILED_SIGN_INS_PER_ADDRESS):
        fail(client, f"guess-{index}", 1)
    assert not signs_in(client, operator.username)


def test_another_address_is_not_locked_out(operator):
    fail(Client(REMOTE_ADDR="198.51.100.7"), operator.username, MAX_FAILED_SIGN_INS)
    assert signs_in(Client(REMOTE_ADDR="198.51.100.8"), operator.username)


def test_a_correct_password_below_the_limit_signs_in(operator):
    client = Client()
    fail(client, full_width(operator.username), MAX_FAILED_SIGN_INS - 1)
    assert signs_in(client, operator.username)
