"""Offline verification of passport tokens (JWS compact, EdDSA over Ed25519).

Encoding and signature checks are PyJWT's; this module adds the policy: only EdDSA, our ``typ``,
a known ``kid``, required claims, a size cap, and errors that say what is wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from agent_passport.errors import PassportExpired, PassportInvalid, PassportNotYetValid
from agent_passport.protocol import ALGORITHM, MAX_TOKEN_BYTES, TOKEN_TYPE

REQUIRED_CLAIMS = ("iss", "sub", "aud", "jti", "iat", "nbf", "exp", "scope", "jurisdiction")

KeyLookup = Callable[[str], Ed25519PublicKey | None]

# How far an agent's clock may lag the registry's: a passport is usable this many seconds before
# its nbf/iat (the registry sets both to the issue time, so nothing is gained by it), never
# after its exp. The registry flags action events stamped further ahead of its own clock.
CLOCK_SKEW_LEEWAY = 300


def public_key_to_jwk(kid: str, public_key: Ed25519PublicKey) -> dict[str, str]:
    jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Parse a JWKS document into ``{kid: public key}``, skipping keys that are not Ed25519."""
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks.get("keys", []):
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        if "d" in jwk or not isinstance(jwk.get("kid"), str):
            continue  # never accept private material or unnamed keys as verification keys
        key = OKPAlgorithm.from_jwk(dict(jwk))
        if isinstance(key, Ed25519PublicKey):
            keys[jwk["kid"]] = key
    return keys


def read_header(token: str) -> dict[str, Any]:
    """Return the unverified header after the cheap structural checks."""
    if not isinstance(token, str) or not token:
        raise PassportInvalid("the token is empty or not a string", "malformed")
    if len(token) > MAX_TOKEN_BYTES:
        raise PassportInvalid(f"the token is larger than {MAX_TOKEN_BYTES} bytes", "too_large")
    if token.count(".") != 2:
        raise PassportInvalid("the token is not a JWS compact serialization", "malformed")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.DecodeError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise PassportInvalid(f"the token header cannot be decoded ({exc})", "malformed") from exc
    if header.get("alg") != ALGORITHM:
        raise PassportInvalid(
            f"algorithm {header.get('alg')!r} is not accepted; passports are signed with EdDSA",
            "unsupported_algorithm",
        )
    if header.get("typ") != TOKEN_TYPE:
        raise PassportInvalid(
            f"token type {header.get('typ')!r} is not {TOKEN_TYPE!r}", "wrong_type"
        )
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise PassportInvalid("the token header names no signing key (kid)", "unknown_key")
    return header


def verify_token(
    token: str,
    keys: KeyLookup | Mapping[str, Ed25519PublicKey],
    *,
    issuer: str,
    audience: str,
    leeway: float = 0,
) -> dict[str, Any]:
    """Verify ``token`` and return its claims, or raise a :class:`PassportError` subclass.

    ``keys`` maps a kid to a public key (a dict or a lookup function returning ``None`` when
    unknown). Expiry, not-before, issuer and audience are enforced; only EdDSA is accepted.
    ``nbf``/``iat`` get CLOCK_SKEW_LEEWAY seconds; ``exp`` gets only ``leeway`` (0: a guard
    never runs on an expired passport; the registry takes reports an hour after expiry).
    """
    header = read_header(token)
    lookup = keys.get if isinstance(keys, Mapping) else keys
    public_key = lookup(header["kid"])
    if public_key is None:
        raise PassportInvalid(f"signing key {header['kid']!r} is not known", "unknown_key")
    try:
        claims = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=max(leeway, CLOCK_SKEW_LEEWAY),  # PyJWT has one leeway; exp is checked below
            options={"require": list(REQUIRED_CLAIMS)},
        )
        if int(claims["exp"]) <= time.time() - leeway:
            raise jwt.ExpiredSignatureError
    except jwt.ExpiredSignatureError as exc:
        raise PassportExpired("the passport has expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise PassportNotYetValid(
            f"the passport is not valid yet (nbf/iat more than {CLOCK_SKEW_LEEWAY} s ahead of "
            "this machine's clock: check this machine's clock)"
        ) from exc
    except jwt.InvalidAudienceError as exc:
        raise PassportInvalid(
            f"the passport is not meant for audience {audience!r}", "wrong_audience"
        ) from exc
    except jwt.InvalidIssuerError as exc:
        raise PassportInvalid(f"the passport was not issued by {issuer!r}", "wrong_issuer") from exc
    except jwt.InvalidSignatureError as exc:
        raise PassportInvalid("the signature does not match the token", "bad_signature") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise PassportInvalid(
            f"the passport lacks the {exc.claim!r} claim", "missing_claim"
        ) from exc
    except jwt.InvalidTokenError as exc:
        raise PassportInvalid(f"the token is malformed ({exc})", "malformed") from exc
    for name in ("scope", "jurisdiction"):
        value = claims[name]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise PassportInvalid(f"the {name!r} claim is not a list of strings", "malformed")
    return claims
