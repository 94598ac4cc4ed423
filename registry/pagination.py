"""Cursor pagination for every list endpoint: stable under inserts, ``?page_size=`` up to 1,000."""

from rest_framework.pagination import CursorPagination


def ordered_by(*fields: str) -> type[CursorPagination]:
    """A cursor paginator over ``fields`` (e.g. ``ordered_by("-epoch")``)."""
    return type(
        "CursorBy" + "".join(f.strip("-").title().replace("_", "") for f in fields),
        (CursorPagination,),
        {"ordering": fields, "page_size_query_param": "page_size", "max_page_size": 1000},
    )
