"""The MCP gateway's stdio framing and message parsing, for any input an agent can send."""

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("mcp_types")  # the optional agent-passport[mcp] extra

from agent_passport.mcp_gateway import (
    Malformed,
    _Oversized,
    check_server_name,
    parse_message,
    read_lines,
)

LIMIT = 64


def lines_of(chunks: list[bytes]) -> list[bytes | int]:
    """What read_lines yields for ``chunks`` arriving one by one (oversized lines as sizes)."""

    async def collect() -> list[bytes | int]:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        return [
            item.size if isinstance(item, _Oversized) else item
            async for item in read_lines(reader, LIMIT)
        ]

    return asyncio.run(collect())


def expected(data: bytes) -> list[bytes | int]:
    """The lines of ``data``: blank ones skipped, oversized ones as their size."""
    pieces = data.split(b"\n")
    return [
        len(piece) if len(piece) > LIMIT else piece
        for piece in pieces
        if piece.strip() or len(piece) > LIMIT
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=150), max_size=8), st.data())
def test_lines_are_the_same_however_the_bytes_are_chunked(pieces, data):
    stream = b"\n".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert lines_of(chunks) == expected(stream)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_any_line_parses_to_a_message_or_a_json_rpc_refusal(line):
    message = parse_message(line)
    if isinstance(message, Malformed):
        assert message.error.error.code in (-32700, -32600)
        assert json.loads(message.error.model_dump_json(by_alias=True))["jsonrpc"] == "2.0"


@pytest.mark.parametrize("name", ["files", "fs-2", "a.b_c"])
def test_safe_server_names_are_accepted(name):
    assert check_server_name(name) == name


@pytest.mark.parametrize("name", ["", "Files", "a:b", "*", "a*", "a b", "-x", "x\n", "ü"])
def test_server_names_a_rule_cannot_express_are_refused(name):
    with pytest.raises(ValueError):
        check_server_name(name)
