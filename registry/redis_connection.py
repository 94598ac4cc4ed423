"""The registry's own Redis connection (revocation channel, witness heads), one per URL."""

import redis
from django.conf import settings

_clients: dict[str, redis.Redis] = {}


def redis_client() -> redis.Redis:
    """A shared client with short timeouts, so a dead Redis never stalls a request for long."""
    url = settings.REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=0.5, decode_responses=True
        )
    return _clients[url]
