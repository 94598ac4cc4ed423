"""Query parameters parsed in one place: a value the database cannot take is a 400 naming it.

A query parameter is text an outsider chooses. Every conversion here either returns a value the
database and Python's datetime arithmetic accept, or raises ``RequestRejected`` for the parameter.
"""

import uuid
from datetime import UTC, datetime

from django.utils.dateparse import parse_datetime

from registry.errors import RequestRejected

MAX_DATABASE_ID = 2**63 - 1
DATETIME_EXAMPLE = "2026-11-25T10:00:00Z"


def moment(value: str, field: str) -> datetime:
    """An ISO 8601 date-time (naive means UTC) that exists and stays in range once in UTC."""
    try:
        parsed = parse_datetime(value)
    except ValueError as exc:  # well formed but impossible: Feb 30, hour 25, offset +99:00
        raise RequestRejected(field, f"is not a real date-time ({exc})") from exc
    if parsed is None:
        raise RequestRejected(field, f"must be an ISO 8601 date-time, e.g. {DATETIME_EXAMPLE}")
    try:
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise RequestRejected(field, "is out of range (years 1 to 9999 in UTC)") from exc


def database_id(value: str, field: str) -> int:
    """A positive integer id written in ASCII digits that fits the database's bigint."""
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_DATABASE_ID))
    if not digits or not 0 < int(value) <= MAX_DATABASE_ID:
        raise RequestRejected(field, "must be an id (a positive integer)")
    return int(value)


def agent_id(value: str, field: str = "agent") -> uuid.UUID:
    """An agent id from a query parameter, or a 400 naming the parameter."""
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise RequestRejected(field, "must be an agent id (UUID)") from exc


def boolean(value: str, field: str) -> bool:
    if value not in ("true", "false"):
        raise RequestRejected(field, "must be true or false")
    return value == "true"


def choice(value: str | None, choices: list[str], field: str) -> str | None:
    """One of ``choices``, or None when the parameter is absent or empty."""
    if value in (None, ""):
        return None
    if value not in choices:
        raise RequestRejected(field, f"must be one of {', '.join(choices)}")
    return value
