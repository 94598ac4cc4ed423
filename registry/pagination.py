"""Cursor pagination for every list endpoint: stable under inserts, ``?page_size=`` up to 1,000.

A cursor comes back from the client, so it is input: DRF decodes it but hands its position to
the database unchecked (a forged ``p=garbage`` was a 500). Here a cursor whose position is not a
value of the ordering field is a 400 naming ``cursor``.
"""

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination

from registry.errors import RequestRejected
from registry.params import moment

INVALID_CURSOR = "is not a cursor this API issued; follow the 'next' and 'previous' links"
_BIGINT = range(-(2**63), 2**63)


class CheckedCursorPagination(CursorPagination):
    page_size_query_param = "page_size"
    max_page_size = 1000

    def paginate_queryset(self, queryset, request, view=None) -> list[Any] | None:
        self.model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
        except NotFound as exc:
            raise RequestRejected("cursor", INVALID_CURSOR) from exc
        if cursor is not None and cursor.position is not None:
            # DRF's stubs say int; the position is the string from the cursor parameter.
            self._check_position(cursor.position)  # type: ignore[arg-type]
        return cursor

    def _check_position(self, position: str) -> None:
        field = self.model._meta.get_field(self.ordering[0].lstrip("-"))
        try:
            if isinstance(field, models.DateTimeField):
                value: Any = moment(position, "cursor")
            else:
                value = field.to_python(position)
        except (RequestRejected, ValidationError) as exc:
            raise RequestRejected("cursor", INVALID_CURSOR) from exc
        if isinstance(value, int) and value not in _BIGINT:
            raise RequestRejected("cursor", INVALID_CURSOR)


def ordered_by(*fields: str) -> type[CursorPagination]:
    """A cursor paginator over ``fields`` (e.g. ``ordered_by("-epoch")``)."""
    return type(
        "CursorBy" + "".join(f.strip("-").title().replace("_", "") for f in fields),
        (CheckedCursorPagination,),
        {"ordering": fields},
    )
