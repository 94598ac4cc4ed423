"""Fetching and caching the registry's public keys (JWKS) for offline verification."""

from __future__ import annotations

import logging
import threading
import time

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_passport.tokens import keys_from_jwks

logger = logging.getLogger(__name__)


class JWKSClient:
    """Looks keys up by kid; refetches on expiry of the cache or on an unknown kid.

    Unknown-kid refetches are limited to one per ``min_refetch_interval`` so a flood of forged
    kids cannot turn into a flood of requests. Thread-safe. Use as ``keys`` for verify_token.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = 300,
        min_refetch_interval: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def refresh(self) -> None:
        response = requests.get(self.url, timeout=self.timeout)
        response.raise_for_status()
        self._keys = keys_from_jwks(response.json())
        self._fetched_at = time.monotonic()

    @property
    def keys(self) -> dict[str, Ed25519PublicKey]:
        """The keys fetched so far (call refresh() first for a complete set)."""
        return dict(self._keys)

    def __call__(self, kid: str) -> Ed25519PublicKey | None:
        age = time.monotonic() - self._fetched_at
        stale = age > self.cache_seconds
        if stale or (kid not in self._keys and age > self.min_refetch_interval):
            with self._lock:
                try:
                    self.refresh()
                except (requests.RequestException, ValueError) as exc:
                    logger.warning("could not fetch JWKS from %s: %s", self.url, exc)
                    if stale:
                        self._fetched_at = time.monotonic() - self.cache_seconds + 1
        return self._keys.get(kid)
