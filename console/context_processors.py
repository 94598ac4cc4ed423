"""Template context every console page gets."""

from django.http import HttpRequest

from killswitch.selectors import standing_group_kills
from passports.roles import role_of


def kill_banner(request: HttpRequest) -> dict:
    """The fleet and global kills in force, for the banner on every signed-in page."""
    if role_of(getattr(request, "user", None)) is None:
        return {}
    return {"standing_kills": standing_group_kills()}
