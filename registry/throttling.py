"""Rate limits kept in Redis (Django's cache), which never take the API down with them.

If Redis is unreachable the limit is skipped (and logged) rather than answering 500: the kill
switch must keep working during exactly the outage it is built for.
"""

import logging
import time
from typing import Any, cast

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)
_last_warning = 0.0


class RedisTolerantMixin(SimpleRateThrottle):
    def allow_request(self, request: Request, view) -> bool:
        global _last_warning
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # any cache backend failure (redis.ConnectionError, timeouts…)
            if time.monotonic() - _last_warning > 10:
                logger.warning("rate limiting skipped: cache unavailable (%s)", type(exc).__name__)
                _last_warning = time.monotonic()
            return True


class AnonThrottle(RedisTolerantMixin, AnonRateThrottle):
    pass


class UserThrottle(RedisTolerantMixin, UserRateThrottle):
    pass


class PerAgentThrottle(RedisTolerantMixin, SimpleRateThrottle):
    """Requests per agent (the passport's agent), shared across processes. Subclasses set
    ``scope`` and ``setting``, the name of the Django setting that holds the rate."""

    setting: str

    def get_rate(self) -> str:
        return getattr(settings, self.setting)

    def get_cache_key(self, request: Request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class PerPassportIngestThrottle(PerAgentThrottle):
    """Action-log batches per passport: every copy of an agent (each with its own passport, or
    a supervisor and the agent it runs sharing one) gets its own budget, so many copies of one
    agent do not throttle each other's denies, which the kill rules wait for."""

    scope = "actions"
    setting = "ACTIONS_RATE_LIMIT"

    def get_cache_key(self, request: Request, view) -> str:
        passport = cast(Any, request.auth)  # a Passport, set by PassportBearerAuthentication
        return self.cache_format % {"scope": self.scope, "ident": f"passport:{passport.jti}"}


class PerAgentRenewThrottle(PerAgentThrottle):
    """Self-renewals per agent (an agent renews once per passport lifetime)."""

    scope = "self_renew"
    setting = "SELF_RENEW_RATE_LIMIT"
