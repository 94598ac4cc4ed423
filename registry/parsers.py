"""The one JSON parser of the API: bounded nesting, and only text PostgreSQL can store.

DRF's ``JSONParser`` lets a 10,000-level document overflow Python's stack (RecursionError) and
accepts ``"\\ud800"`` (a lone surrogate, not Unicode) and ``"\\u0000"`` (refused by PostgreSQL
text and jsonb columns); each used to become a 500 wherever the value went. Here they are a 400
naming the field, before any view sees the body.
"""

from collections.abc import Iterator
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_JSON_DEPTH = 32

_Path = tuple[str | int, ...]


class RefusedJSON(ParseError):
    """Well-formed JSON we do not accept; ``field`` names the top-level key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def printable(text: str) -> str:
    """``text`` with lone surrogates and NUL escaped (``\\ud800``, ``\\u0000``), so that it
    can be echoed in a response."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def _problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (e.g. \\ud800), which is not valid Unicode"
    return None


def _nodes(document: Any) -> Iterator[tuple[_Path, Any]]:
    """Every value and object key of ``document`` with its path, without recursion."""
    stack: list[tuple[_Path, Any]] = [((), document)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            for key, item in value.items():
                yield (*path, key), key
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))


def _field(path: _Path) -> str:
    return printable(path[0]) if path and isinstance(path[0], str) else "body"


def _where(path: _Path) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{printable(part)}" for part in path)


def check_document(document: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and text that is not storable Unicode."""
    for path, value in _nodes(document):
        if len(path) > MAX_JSON_DEPTH:
            raise RefusedJSON("body", f"is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(value, str) and (problem := _problem(value)):
            where = _where(path).lstrip(".") or "the body"
            raise RefusedJSON(_field(path), f"{where} {problem}")


class SafeJSONParser(JSONParser):
    """``application/json`` bodies, checked by :func:`check_document`."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        try:
            document = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise RefusedJSON("body", f"is nested more than {MAX_JSON_DEPTH} levels deep") from exc
        check_document(document)
        return document
