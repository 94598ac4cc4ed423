"""The egress proxy's request parser: one canonical host:port per target, strict heads.

The proxy itself (sockets, the guard, kills) is tested against the live registry in
tests/sdk/test_egress.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_passport.cli import main
from agent_passport.egress import (
    ProxyError,
    canonical_host,
    parse_authority,
    parse_listen,
    parse_request,
)
from agent_passport.rules import Policy
from agent_passport.session import CLIError

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    ("written", "checked"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("203.0.113.9", "203.0.113.9"),
        ("[2001:DB8:0:0::1]", "[2001:db8::1]"),
        ("[::ffff:203.0.113.9]", "203.0.113.9"),  # an IPv4-mapped address is its IPv4 address
        ("my_host-1.internal", "my_host-1.internal"),
    ],
)
def test_hosts_are_checked_in_one_spelling(written, checked):
    assert canonical_host(written) == checked


@pytest.mark.parametrize(
    "host",
    [
        "127.1",  # inet_aton reads these as 127.0.0.1: an IP rule must not be sidestepped
        "0x7f.0.0.1",
        "2130706433",
        "010.0.0.1",
        "[fe80::1%eth0]",
        "[::1",
        "",
        "a..b",
        "-a.com",
        "ex ample.com",
        "exämple.com",
        "a" * 64 + ".com",
    ],
)
def test_ambiguous_or_malformed_hosts_are_refused(host):
    with pytest.raises(ProxyError) as caught:
        canonical_host(host)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("example.com:443", ("example.com", 443)),
        ("example.com:0022", ("example.com", 22)),  # not a way around !net:connect:*:22
        ("[::1]:8080", ("[::1]", 8080)),
    ],
)
def test_authority(authority, expected):
    assert parse_authority(authority) == expected


@pytest.mark.parametrize(
    ("authority", "message"),
    [
        ("example.com", "needs a port"),
        ("example.com:", "bad port"),
        ("example.com:65536", "bad port"),
        ("example.com:0", "bad port"),
        ("example.com:+22", "bad port"),
        ("example.com:\uff12\uff12", "bad port"),  # full-width digits
        ("user@example.com:443", "user information"),
        ("[::1]x:443", "malformed target"),
        ("::1:443", "malformed host"),
    ],
)
def test_bad_authority(authority, message):
    with pytest.raises(ProxyError, match=message):
        parse_authority(authority)


def test_plain_request_is_rewritten_for_the_origin():
    request = parse_request(
        b"POST http://Example.com:8080/a/b?q=1#frag HTTP/1.1\r\n"
        b"Host: example.com:8080\r\nProxy-Authorization: Basic eA==\r\n"
        b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nContent-Length: 5\r\n"
        b"Accept: */*\r\n\r\n"
    )
    assert (request.method, request.target, request.content_length) == (
        "POST",
        "example.com:8080",
        5,
    )
    assert request.head == (
        b"POST /a/b?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 5\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n"
    )


def test_connect_request():
    request = parse_request(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n")
    assert (request.method, request.target, request.head) == ("CONNECT", "[::1]:443", b"")


@pytest.mark.parametrize(
    ("head", "status", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "forward proxy"),
        (b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "use CONNECT"),
        (b"GET http://a/ HTTP/1.1\r\n\r\n", 400, "Host header"),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host header"),
        (b"GET http://a/ HTTP/2.0\r\nHost: a\r\n\r\n", 400, "request line"),
        (b"GET  http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request line"),
        (b"GET http://a/ HTTP/1.1\r\n Host: a\r\n\r\n", 400, "header line"),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400, "control character"),
        (
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
            "smuggling",
        ),
        (
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
            "Content-Length",
        ),
        (b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: \xb2\r\n\r\n", 400, "Content"),
        (b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "chunked"),
        (b"CONNECT a:1 HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, "header fields"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "request line"),
    ],
)
def test_malformed_heads(head, status, message):
    with pytest.raises(ProxyError, match=message) as caught:
        parse_request(head)
    assert caught.value.status == status


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_give_an_http_error(head):
    try:
        request = parse_request(head + b"\r\n\r\n")
    except ProxyError as exc:
        assert exc.status in {400, 431, 501}
    else:
        assert canonical_host(request.host) == request.host
        assert 0 < request.port <= 65535


TARGET_CHARS = st.sampled_from([*"aZ09.-_:[]@%/?# \t\x00\x7fé", "::", "0x", "ffff"])


@PROPERTY
@given(st.lists(TARGET_CHARS, max_size=40).map("".join))
def test_accepted_targets_are_canonical_and_stable(target):
    try:
        host, port = parse_authority(target)
    except ProxyError as exc:
        assert exc.status == 400
        return
    assert parse_authority(f"{host}:{port}") == (host, port)  # checked spelling is a fixpoint
    assert not any(c in host for c in " \t@/%?#")


def test_listen_option():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8899") == ("::1", 8899)
    for bad in ("8899", "localhost:8899", "127.0.0.1:http", "127.0.0.1:70000", ":80"):
        with pytest.raises(CLIError, match="--listen"):
            parse_listen(bad)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--listen", "localhost:8899"], "--listen"),
        (["--max-connections", "0"], "--max-connections must be positive"),
        (["--idle-timeout", "-1"], "--idle-timeout must be positive"),
        ([], "no passport"),  # checked before anything is started
    ],
)
def test_proxy_command_refuses_bad_options_with_a_message(capsys, monkeypatch, options, message):
    monkeypatch.delenv("AGENT_PASSPORT_TOKEN", raising=False)
    base = ["proxy", "--registry", "http://127.0.0.1:9", "--redis", "redis://127.0.0.1:9/0"]
    assert main([*base, *options]) == 2
    said = capsys.readouterr().err
    assert message in said and "Traceback" not in said


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT [::1]:22 HTTP/1.1\r\n\r\n",
        b"CONNECT [0:0:0:0:0:0:0:1]:0022 HTTP/1.1\r\n\r\n",
        b"CONNECT [::ffff:127.0.0.1]:22 HTTP/1.1\r\n\r\n",
        b"CONNECT Example.COM.:22 HTTP/1.1\r\n\r\n",
        b"GET http://example.com:22/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ],
)
def test_every_spelling_of_port_22_meets_the_deny_rule(head):
    policy = Policy(["net:connect", "!net:connect:*:22"], ["GLOBAL"])
    decision = policy.decide("net:connect", parse_request(head).target)
    assert not decision.allowed and decision.rule == "!net:connect:*:22"
