"""Token signing, JWKS, introspection of hostile tokens, and signing-key rotation."""

import base64
import json
import time
from datetime import timedelta

import jwt
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.core.management import call_command
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwcrypto import jwk
from jwcrypto import jwt as jwcrypto_jwt
from rest_framework.test import APIClient

from agent_passport.protocol import TOKEN_TYPE
from passports import signing
from passports.models import Passport, SigningKey
from passports.services import expire_passports

pytestmark = pytest.mark.django_db

# Any JSON value (the SDK's token tests fuzz with the same shape; they cannot import the
# service's tests, being a distribution of their own).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def introspect(client, token) -> dict:
    response = client.post("/api/v1/passports/introspect", {"token": token}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def sign_with_active_key(claims: dict, **header) -> str:
    key = signing.active_signing_key()
    private_key = signing._unwrap(key.kid, key.encrypted_private_key)
    headers = {"kid": key.kid, "typ": TOKEN_TYPE, **header}
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers=headers)


def test_token_verifies_with_an_independent_jose_library(issue, settings):
    issued = issue()
    jwks = APIClient().get("/.well-known/jwks.json").json()
    keyset = jwk.JWKSet.from_json(json.dumps(jwks))
    token = jwcrypto_jwt.JWT(
        jwt=issued["token"],
        key=keyset,
        algs=["EdDSA"],
        check_claims={"iss": settings.PASSPORT_ISSUER, "aud": settings.PASSPORT_AUDIENCE},
    )
    claims = json.loads(token.claims)
    assert claims["jti"] == issued["jti"]
    assert claims["scope"] == issued["claims"]["scope"]
    header = json.loads(token.token.objects["protected"])
    assert header == {"alg": "EdDSA", "kid": jwks["keys"][0]["kid"], "typ": TOKEN_TYPE}


def test_jwks_is_public_only_and_cacheable(issue):
    issue()
    response = APIClient().get("/.well-known/jwks.json")
    assert "max-age=300" in response["Cache-Control"]
    keys = response.json()["keys"]
    assert len(keys) == 1
    assert set(keys[0]) == {"kty", "crv", "x", "kid", "alg", "use"}
    stored = SigningKey.objects.get()
    assert keys[0]["x"] == b64(bytes(stored.public_key))


def test_private_key_is_encrypted_at_rest_and_bound_to_its_kid(settings):
    key = signing.active_signing_key()
    private_key = signing._unwrap(key.kid, key.encrypted_private_key)
    seed = private_key.private_bytes_raw()
    assert seed not in bytes(key.encrypted_private_key)
    with pytest.raises(InvalidTag):
        signing._unwrap("another-kid", key.encrypted_private_key)
    settings.KEY_ENCRYPTION_KEY = "a-different-kek"
    with pytest.raises(InvalidTag):
        signing._unwrap(key.kid, key.encrypted_private_key)
    assert key.kid in str(key) and "encrypted" not in str(key)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "malformed"),
        ("garbage", "malformed"),
        ("a.b.c", "malformed"),
        ("x" * 20000, "too_large"),
        ("....", "malformed"),
    ],
)
def test_garbage_tokens_are_inactive(operator_api, token, reason):
    assert introspect(operator_api, token)["reason"] == reason


def test_alg_none_is_rejected(operator_api, issue):
    claims = issue()["claims"]
    header = {"alg": "none", "typ": TOKEN_TYPE, "kid": signing.active_signing_key().kid}
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
    result = introspect(operator_api, token)
    assert result["active"] is False and result["reason"] == "unsupported_algorithm"


def test_hs256_signed_with_the_public_key_is_rejected(operator_api, issue):
    claims = issue()["claims"]
    public = bytes(signing.active_signing_key().public_key)
    header = {"alg": "HS256", "typ": TOKEN_TYPE, "kid": signing.active_signing_key().kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    import hashlib
    import hmac

    for secret in (public, b64(public).encode()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        result = introspect(operator_api, f"{signing_input}.{b64(mac)}")
        assert result == {
            "active": False,
            "reason": "unsupported_algorithm",
            "detail": "algorithm 'HS256' is not accepted; passports are signed with EdDSA",
        }


def test_unknown_kid_is_rejected(operator_api, issue):
    claims = issue()["claims"]
    stranger = Ed25519PrivateKey.generate()
    token = jwt.encode(
        claims, stranger, algorithm="EdDSA", headers={"kid": "not-ours", "typ": TOKEN_TYPE}
    )
    assert introspect(operator_api, token)["reason"] == "unknown_key"


def test_foreign_key_claiming_our_kid_fails_signature(operator_api, issue):
    claims = issue()["claims"]
    stranger = Ed25519PrivateKey.generate()
    kid = signing.active_signing_key().kid
    token = jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": kid, "typ": TOKEN_TYPE})
    assert introspect(operator_api, token)["reason"] == "bad_signature"


def test_tampered_payload_and_signature_are_rejected(operator_api, issue):
    token = issue()["token"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = ["*:*"]
    forged_payload = b64(json.dumps(claims).encode())
    assert introspect(operator_api, f"{header}.{forged_payload}.{signature}")["reason"] == (
        "bad_signature"
    )
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert introspect(operator_api, f"{header}.{payload}.{flipped}")["reason"] == "bad_signature"


def test_expired_not_yet_valid_wrong_audience_and_issuer(operator_api, issue, settings):
    claims = issue()["claims"]
    now = int(time.time())
    cases = {
        "expired": {**claims, "iat": now - 100, "nbf": now - 100, "exp": now - 10},
        "not_yet_valid": {**claims, "nbf": now + 600, "exp": now + 1200},
        "wrong_audience": {**claims, "aud": "someone-else"},
        "wrong_issuer": {**claims, "iss": "https://evil.example"},
        "missing_claim": {k: v for k, v in claims.items() if k != "scope"},
    }
    for reason, forged in cases.items():
        assert introspect(operator_api, sign_with_active_key(forged))["reason"] == reason, reason


def test_wrong_typ_is_rejected(operator_api, issue):
    claims = issue()["claims"]
    assert introspect(operator_api, sign_with_active_key(claims, typ="JWT"))["reason"] == (
        "wrong_type"
    )


def test_token_for_unknown_jti_is_inactive(operator_api, issue):
    claims = issue()["claims"]
    forged = {**claims, "jti": "00000000-0000-0000-0000-000000000000"}
    assert introspect(operator_api, sign_with_active_key(forged))["reason"] == "unknown_passport"


def test_introspection_body_must_be_a_token_string(operator_api):
    response = operator_api.post("/api/v1/passports/introspect", {"token": 5}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"]["token"] == ["must be a string"]
    response = operator_api.post("/api/v1/passports/introspect", {}, format="json")
    assert response.status_code == 400 and "token" in response.json()["errors"]


def test_expired_passport_in_database_reads_expired(issue, operator_api):
    issued = issue()
    past = timezone.now() - timedelta(seconds=1)
    Passport.objects.filter(jti=issued["jti"]).update(
        not_before=past - timedelta(seconds=60), expires_at=past
    )
    detail = operator_api.get(f"/api/v1/passports/{issued['jti']}").json()
    assert detail["status"] == "expired"
    assert introspect(operator_api, issued["token"])["reason"] == "expired"
    assert expire_passports() == 1
    assert Passport.objects.get(jti=issued["jti"]).status == "expired"


def test_rotation_keeps_old_tokens_valid_then_retires_the_key(issue, operator_api, capsys):
    old = issue(ttl_seconds=300)
    old_kid = signing.active_signing_key().kid
    call_command("rotate_signing_key")
    assert "active key: " in capsys.readouterr().out
    new = issue()
    new_header = jwt.get_unverified_header(new["token"])
    assert new_header["kid"] != old_kid
    assert SigningKey.objects.get(kid=old_kid).state == "verify-only"
    kids = {key["kid"] for key in APIClient().get("/.well-known/jwks.json").json()["keys"]}
    assert kids == {old_kid, new_header["kid"]}
    assert introspect(operator_api, old["token"])["active"] is True
    assert introspect(operator_api, new["token"])["active"] is True

    assert signing.retire_signing_keys() == []  # the old key still has an unexpired passport
    later = timezone.now() + timedelta(seconds=301)
    assert signing.retire_signing_keys(now=later) == [old_kid]
    assert SigningKey.objects.get(kid=old_kid).state == "retired"
    kids = {key["kid"] for key in APIClient().get("/.well-known/jwks.json").json()["keys"]}
    assert kids == {new_header["kid"]}
    assert introspect(operator_api, old["token"])["reason"] == "unknown_key"


def test_exactly_one_key_is_active_after_rotations():
    signing.active_signing_key()
    for _ in range(3):
        signing.activate_new_signing_key()
    assert SigningKey.objects.filter(state="active").count() == 1
    assert SigningKey.objects.filter(state="verify-only").count() == 3


def test_public_key_in_db_matches_jwks_and_signatures():
    key = signing.active_signing_key()
    private_key = signing._unwrap(key.kid, key.encrypted_private_key)
    assert private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == bytes(
        key.public_key
    )


def sign_raw(header: object, payload: object) -> str:
    """A compact JWS signed by the active key over any header and payload JSON."""
    key = signing.active_signing_key()
    private_key = signing._unwrap(key.kid, key.encrypted_private_key)
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(private_key.sign(signing_input.encode()))}"


def hostile_tokens(claims: dict) -> st.SearchStrategy:
    header = {"alg": "EdDSA", "typ": TOKEN_TYPE, "kid": signing.active_signing_key().kid}
    header_changes = st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "crit", "jku", "jwk", "x5u", "b64"]),
        json_values,
        max_size=3,
    )
    claim_changes = st.dictionaries(st.sampled_from([*claims, "x"]), json_values, max_size=3)
    signed = st.builds(
        lambda h, c: sign_raw({**header, **h}, {**claims, **c}), header_changes, claim_changes
    )
    garbage = st.lists(st.text(max_size=20), min_size=1, max_size=4).map(".".join)
    return signed | garbage


HTTP_FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize(
    ("header", "reason"),
    [({"kid": 5}, "unknown_key"), ({"crit": ["exp"]}, "unsupported_crit")],
)
def test_hostile_header_is_inactive_and_refused_by_ingestion(operator_api, issue, header, reason):
    claims = issue()["claims"]
    base = {"alg": "EdDSA", "typ": TOKEN_TYPE, "kid": signing.active_signing_key().kid}
    token = sign_raw({**base, **header}, claims)
    assert introspect(operator_api, token)["reason"] == reason
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post("/api/v1/actions", {"events": []}, format="json")
    assert response.status_code == 401
    assert response.json()["reason"] == reason


def test_a_passport_in_an_unknown_protocol_version_is_inactive(operator_api, issue):
    claims = issue()["claims"]
    token = sign_with_active_key({**claims, "rev": {**claims["rev"], "v": 2}})
    body = introspect(operator_api, token)
    assert (body["active"], body["reason"]) == (False, "unsupported_protocol")
    assert "protocol version 2 is not supported (this SDK knows 1)" in body["detail"]


@HTTP_FUZZ
@given(data=st.data())
def test_prop_hostile_tokens_never_fail_the_server(operator_api, issue, data):
    claims = issue()["claims"]
    token = data.draw(hostile_tokens(claims))
    response = operator_api.post("/api/v1/passports/introspect", {"token": token}, format="json")
    assert response.status_code in (200, 400), response.content
    client = APIClient()
    wsgi_header = f"Bearer {token}".encode().decode("latin-1")  # as a WSGI server passes bytes
    client.credentials(HTTP_AUTHORIZATION=wsgi_header)
    response = client.post("/api/v1/actions", {"events": []}, format="json")
    assert response.status_code < 500, response.content
