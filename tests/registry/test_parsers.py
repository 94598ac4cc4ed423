"""Property tests of the API's JSON parser against a plain reference walk."""

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.parsers import MAX_JSON_DEPTH, RefusedJSON, SafeJSONParser

TEXT = st.text(st.characters(codec=None, blacklist_categories=()), max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=20,
)


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def storable(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def parse(document, ensure_ascii: bool = True):
    body = json.dumps(document, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    return SafeJSONParser().parse(io.BytesIO(body), "application/json", {})


def nest(value, levels: int):
    for _ in range(levels):
        value = [value]
    return value


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS, st.integers(min_value=0, max_value=MAX_JSON_DEPTH + 4))
def test_accepts_exactly_the_shallow_storable_documents(document, extra_levels):
    document = nest(document, extra_levels)
    acceptable = depth(document) - 1 <= MAX_JSON_DEPTH and all(map(storable, strings(document)))
    try:
        parsed = parse(document)
    except RefusedJSON:
        assert not acceptable
    else:
        assert acceptable and parsed == document


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_text_outside_ascii_survives_either_encoding(ensure_ascii):
    document = {"name": "Zoë 😀 ü", "nested": {"list": ["日本", "\u202e"]}}
    assert parse(document, ensure_ascii=ensure_ascii) == document
