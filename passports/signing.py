"""Signing keys: creation, encryption at rest, rotation, retirement, JWKS and token signing.

Private keys are Ed25519 seeds wrapped with AES-256-GCM under a key derived (HKDF-SHA256) from
``settings.KEY_ENCRYPTION_KEY``, with the kid as associated data so a wrapped key cannot be
swapped onto another row. They are decrypted only inside :func:`sign_claims`.
"""

import os
import secrets
import threading
import time
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from agent_passport.protocol import ALGORITHM, TOKEN_TYPE
from agent_passport.tokens import public_key_to_jwk
from passports.models import Passport, SigningKey

_RAW = serialization.Encoding.Raw
_VERIFY_KEY_CACHE_SECONDS = 5.0


def _key_wrapper() -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"agent-passport-registry", info=b"kek v1"
    ).derive(settings.KEY_ENCRYPTION_KEY.encode())
    return AESGCM(derived)


def _wrap(kid: str, seed: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + _key_wrapper().encrypt(nonce, seed, kid.encode())


def _unwrap(kid: str, blob: bytes | memoryview) -> Ed25519PrivateKey:
    blob = bytes(blob)
    seed = _key_wrapper().decrypt(blob[:12], blob[12:], kid.encode())
    return Ed25519PrivateKey.from_private_bytes(seed)


def _new_key(state: SigningKey.State) -> SigningKey:
    private_key = Ed25519PrivateKey.generate()
    kid = timezone.now().strftime("%Y%m%d") + "-" + secrets.token_hex(6)
    seed = private_key.private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return SigningKey.objects.create(
        kid=kid,
        public_key=private_key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw),
        encrypted_private_key=_wrap(kid, seed),
        state=state,
    )


def active_signing_key() -> SigningKey:
    """The key that signs new passports, created on first use if there is none."""
    key = SigningKey.objects.filter(state=SigningKey.State.ACTIVE).first()
    if key is not None:
        return key
    try:
        with transaction.atomic():
            return _new_key(SigningKey.State.ACTIVE)
    except IntegrityError:  # another process created it first
        return SigningKey.objects.get(state=SigningKey.State.ACTIVE)


@transaction.atomic
def activate_new_signing_key() -> SigningKey:
    """Make a new active key; the previous one stays verify-only until its tokens expire.

    The key swap alone: rotating keys is ``actions.services.rotate_signing_key``."""
    now = timezone.now()
    SigningKey.objects.select_for_update().filter(state=SigningKey.State.ACTIVE).update(
        state=SigningKey.State.VERIFY_ONLY, deactivated_at=now
    )
    key = _new_key(SigningKey.State.ACTIVE)
    _verify_key_cache.clear()
    return key


def retire_signing_keys(*, now: datetime | None = None) -> list[str]:
    """Retire verify-only keys that no unexpired passport depends on. Returns retired kids."""
    now = now or timezone.now()
    still_needed = Passport.objects.filter(expires_at__gt=now).values("kid")
    retired = list(
        SigningKey.objects.filter(state=SigningKey.State.VERIFY_ONLY)
        .exclude(kid__in=still_needed)
        .values_list("kid", flat=True)
    )
    SigningKey.objects.filter(kid__in=retired).update(
        state=SigningKey.State.RETIRED, retired_at=now
    )
    _verify_key_cache.clear()
    return retired


class _VerifyKeyCache:
    """Per-process cache of verification keys, reloaded every few seconds.

    An unknown kid is looked up in the database at once, so a freshly rotated key verifies
    immediately; a retired key drops out at the next reload.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._loaded_at = float("-inf")

    def clear(self) -> None:
        self._loaded_at = float("-inf")

    @staticmethod
    def _usable() -> QuerySet[SigningKey]:
        return SigningKey.objects.exclude(state=SigningKey.State.RETIRED)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        if time.monotonic() - self._loaded_at > _VERIFY_KEY_CACHE_SECONDS:
            with self._lock:
                rows = self._usable().values_list("kid", "public_key")
                self._keys = {k: Ed25519PublicKey.from_public_bytes(bytes(p)) for k, p in rows}
                self._loaded_at = time.monotonic()
        key = self._keys.get(kid)
        if key is None:
            public = self._usable().filter(kid=kid).values_list("public_key", flat=True).first()
            if public is not None:
                key = self._keys[kid] = Ed25519PublicKey.from_public_bytes(bytes(public))
        return key


_verify_key_cache = _VerifyKeyCache()


def verification_key(kid: str) -> Ed25519PublicKey | None:
    """Public key for ``kid`` if it is active or verify-only; retired and unknown keys give None."""
    return _verify_key_cache.get(kid)


def jwks() -> dict[str, list[dict[str, str]]]:
    keys = SigningKey.objects.exclude(state=SigningKey.State.RETIRED).order_by("created_at")
    return {
        "keys": [
            public_key_to_jwk(key.kid, Ed25519PublicKey.from_public_bytes(bytes(key.public_key)))
            for key in keys
        ]
    }


def sign_claims(claims: dict[str, Any]) -> tuple[str, str]:
    """Sign ``claims`` with the active key; returns ``(kid, token)``."""
    key = active_signing_key()
    private_key = _unwrap(key.kid, key.encrypted_private_key)
    token = jwt.encode(
        claims, private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": TOKEN_TYPE}
    )
    return key.kid, token


def sign_bytes(data: bytes) -> tuple[str, bytes]:
    """Sign bytes (audit checkpoints) with the active key; returns ``(kid, signature)``."""
    key = active_signing_key()
    return key.kid, _unwrap(key.kid, key.encrypted_private_key).sign(data)


def all_public_keys() -> dict[str, Ed25519PublicKey]:
    """Every key ever used, retired ones included: old checkpoints stay verifiable server-side."""
    return {
        kid: Ed25519PublicKey.from_public_bytes(bytes(public))
        for kid, public in SigningKey.objects.values_list("kid", "public_key")
    }
