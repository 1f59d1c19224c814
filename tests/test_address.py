"""The one ADDR:PORT parser behind --listen, --metrics, --control and the operator CLI."""

from __future__ import annotations

import pytest

from filterdns.serve.address import format_hostport, parse_hostport

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text,kw,expected", [
    ("127.0.0.1:8053", {}, ("127.0.0.1", 8053)),
    ("[::1]:53", {}, ("::1", 53)),
    (" 0.0.0.0:0 ", {}, ("0.0.0.0", 0)),
    ("::1", {"default_port": 53}, ("::1", 53)),
    ("127.0.0.1", {"default_port": 9154}, ("127.0.0.1", 9154)),
    ("localhost:0", {"names": True}, ("localhost", 0)),
    ("dns-1.example.net:9154", {"names": True}, ("dns-1.example.net", 9154)),
    ("localhost:53", {}, "not an IP address"),
    ("127.0.0.1", {}, "a port is required"),
    (":9154", {"names": True}, "an address is required"),
    ("127.0.0.1:99999", {}, "bad port"),
    ("127.0.0.1:８０", {}, "bad port"),
    ("[::1]53", {}, "expected [IPV6]:PORT"),
    ("[::1", {}, "expected [IPV6]:PORT"),
    ("bad_name:53", {"names": True}, "not an IP address"),
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_parse_hostport(text, kw, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected.replace("[", r"\[")):
            parse_hostport(text, **kw)
    else:
        assert parse_hostport(text, **kw) == expected


def test_format_hostport():
    assert format_hostport("::1", 53) == "[::1]:53"
    assert format_hostport("127.0.0.1", 8053) == "127.0.0.1:8053"
