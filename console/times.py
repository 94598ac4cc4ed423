"""The one way the console shows a moment: ``2026-12-01 18:42:57 UTC``, exact ISO 8601 on hover."""

from datetime import UTC, datetime
from typing import TypedDict

TEXT_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


class Moment(TypedDict):
    text: str  # what people read, to the second
    iso: str  # the exact time, to the millisecond (the <time> element's datetime and title)


def moment(value: datetime | None) -> Moment | None:
    """A moment for a page or a live JSON update (live.js renders it like the template filter)."""
    if value is None:
        return None
    utc = value.astimezone(UTC)
    iso = utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"text": utc.strftime(TEXT_FORMAT), "iso": iso}
