"""The one JSON parser of the API: bounded nesting, and only text PostgreSQL can store.

DRF's ``JSONParser`` lets a 10,000-level document overflow Python's stack (RecursionError) and
accepts ``"\\ud800"`` (a lone surrogate, not Unicode) and ``"\\u0000"`` (refused by PostgreSQL
text and jsonb columns); each used to become a 500 wherever the value went. Here they are a 400
naming the field, before any view sees the body.
"""

import io
import json
import re
from collections.abc import Iterator
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_JSON_DEPTH = 32
TOO_DEEP = f"is nested more than {MAX_JSON_DEPTH} levels deep"
TEXT_TO_CHECK = "text_to_check"  # parser_context key set by ItemwiseJSONParser

_Path = tuple[str | int, ...]
# Only these escapes can put NUL or a surrogate into a parsed string (the raw bytes cannot:
# JSON refuses control characters and UTF-8 refuses encoded surrogates), so a body without them
# skips the walk over every string.
_SUSPICIOUS_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89abcdefABCDEF])")


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


_CONTAINERS = (dict, list)  # the only ones json.loads makes (exact types: 5x faster to test)


def _too_deep(document: Any) -> bool:
    """Nesting deeper than MAX_JSON_DEPTH, level by level over containers only (fast)."""
    level = [document]
    for _ in range(MAX_JSON_DEPTH + 1):
        level = [
            child
            for value in level
            for child in (value.values() if isinstance(value, dict) else value)
            if type(child) in _CONTAINERS
        ]
        if not level:
            return False
    return True


def check_text(document: Any) -> None:
    """Refuse text (values and keys) that is not storable Unicode, naming where it is.

    The document is first scanned as escaped JSON (C speed): without a suspicious escape no
    string in it can hold NUL or a surrogate, and the walk is skipped.
    """
    if not _SUSPICIOUS_ESCAPE.search(json.dumps(document).encode()):
        return
    for path, value in _nodes(document):
        if isinstance(value, str) and (problem := _problem(value)):
            where = _where(path).lstrip(".") or "the body"
            raise RefusedJSON(_field(path), f"{where} {problem}")


class SafeJSONParser(JSONParser):
    """``application/json`` bodies with bounded nesting and only storable text."""

    refuses_unstorable_text = True

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        raw = stream.read()
        try:
            document = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError as exc:
            raise RefusedJSON("body", TOO_DEEP) from exc
        if isinstance(document, dict | list) and _too_deep(document):
            raise RefusedJSON("body", TOO_DEEP)
        if self.refuses_unstorable_text and _SUSPICIOUS_ESCAPE.search(raw):
            check_text(document)
        return document


class ItemwiseJSONParser(SafeJSONParser):
    """For a batch whose items are accepted or refused one by one: the view calls
    :func:`check_text` per item, so that one bad item does not fail the others. Whether that is
    needed at all is left in ``request.parser_context[TEXT_TO_CHECK]`` (usually it is not)."""

    refuses_unstorable_text = False

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        raw = stream.read()
        document = super().parse(io.BytesIO(raw), media_type, parser_context)
        if parser_context is not None:
            parser_context[TEXT_TO_CHECK] = bool(_SUSPICIOUS_ESCAPE.search(raw))
        return document
