"""--server-id: NSID (RFC 5001) and CHAOS TXT id.server / hostname.bind (RFC 4892)."""

from __future__ import annotations

import subprocess

import dns.edns
import dns.message
import dns.rdataclass
import dns.rcode
import pytest

from conftest import ask, start_server
from filterdns.dns import identity


@pytest.fixture
def ident():
    identity.set_server_id("edge-7.fra")
    yield "edge-7.fra"
    identity.set_server_id(None)


def _nsid(resp):
    return [o.data if hasattr(o, "data") else o.nsid for o in resp.options if o.otype == dns.edns.NSID]


NSID_REQ = [dns.edns.GenericOption(dns.edns.NSID, b"")]
ECS_GB = dns.edns.ECSOption("81.2.69.0", 24)


@pytest.mark.unit
@pytest.mark.parametrize("options", [NSID_REQ, [ECS_GB, *NSID_REQ], [*NSID_REQ, dns.edns.GenericOption(10, b"12345678")]],
                         ids=["nsid", "ecs+nsid", "nsid+cookie"])
def test_nsid_is_sent_when_asked(responder, ident, options):
    for _ in range(2):  # the second time from the rendered-answer cache
        q = dns.message.make_query("test.example.", "SOA", use_edns=0, options=options)
        resp, raw = ask(responder, q)
        assert resp.rcode() == dns.rcode.NOERROR and resp.answer
        assert _nsid(resp) == [b"edge-7.fra"]
        if any(o.otype == dns.edns.ECS for o in options):
            assert [o for o in resp.options if o.otype == dns.edns.ECS]


@pytest.mark.unit
def test_no_nsid_unless_asked_or_configured(responder, ident):
    q = dns.message.make_query("test.example.", "SOA", use_edns=0)
    assert _nsid(ask(responder, q)[0]) == []
    identity.set_server_id(None)
    q = dns.message.make_query("test.example.", "SOA", use_edns=0, options=NSID_REQ)
    assert _nsid(ask(responder, q)[0]) == []


@pytest.mark.unit
def test_nsid_left_out_rather_than_truncating(responder):
    identity.set_server_id("x" * 64)
    try:
        q = dns.message.make_query("test.example.", "NS", use_edns=0, payload=512, options=NSID_REQ)
        full, raw = ask(responder, q, limit=10000)
        size_without = len(raw) - 68  # the NSID option is 4 + 64 octets
        resp, raw = ask(responder, q, limit=size_without)
        assert not resp.flags & dns.flags.TC and _nsid(resp) == [] and resp.answer == full.answer
    finally:
        identity.set_server_id(None)


@pytest.mark.unit
@pytest.mark.parametrize("name,rdtype,want", [
    ("id.server.", "TXT", "edge-7.fra"),
    ("hostname.bind.", "TXT", "edge-7.fra"),
    ("ID.Server.", "TXT", "edge-7.fra"),
    ("id.server.", "A", None),          # NODATA
    ("version.bind.", "TXT", "REFUSED"),
    ("test.example.", "TXT", "REFUSED"),
])
def test_chaos_identity(responder, ident, name, rdtype, want):
    q = dns.message.make_query(name, rdtype, rdclass=dns.rdataclass.CH)
    resp, _ = ask(responder, q)
    if want == "REFUSED":
        assert resp.rcode() == dns.rcode.REFUSED
        return
    assert resp.rcode() == dns.rcode.NOERROR and resp.flags & dns.flags.AA
    if want is None:
        assert resp.answer == []
    else:
        (rrset,) = resp.answer
        assert rrset.rdclass == dns.rdataclass.CH and rrset.ttl == 0
        assert [b"".join(r.strings).decode() for r in rrset] == [want]


@pytest.mark.unit
def test_chaos_refused_without_identity(responder):
    q = dns.message.make_query("id.server.", "TXT", rdclass=dns.rdataclass.CH)
    assert ask(responder, q)[0].rcode() == dns.rcode.REFUSED


@pytest.mark.unit
@pytest.mark.parametrize("value", ["has space", "x" * 65, "caf\u00e9"])
def test_bad_server_id(value):
    with pytest.raises(ValueError, match="--server-id"):
        identity.resolve(value)


@pytest.mark.unit
def test_hostname_value():
    import socket
    assert identity.resolve("@hostname") == socket.gethostname()


def dig(port, *args):
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=3", "+tries=3", *args],
                         capture_output=True, text=True, timeout=30)
    return out.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "2"])
def test_dig_nsid_and_chaos_on_a_real_server(tmp_path, workers):
    sp = start_server(tmp_path, "--server-id", "edge-7.fra", "--workers", workers)
    try:
        out = dig(sp.port, "+nsid", "example.com", "SOA")
        assert "status: NOERROR" in out and 'NSID: 65 64 67 65 2d 37 2e 66 72 61 ("edge-7.fra")' in out, out
        for name in ("id.server", "hostname.bind"):
            out = dig(sp.port, "CH", "TXT", name, "+short")
            assert out.strip() == '"edge-7.fra"', out
        out = dig(sp.port, "CH", "TXT", "version.bind")
        assert "status: REFUSED" in out, out
    finally:
        sp.stop()


@pytest.mark.e2e
def test_default_no_identity(tmp_path):
    sp = start_server(tmp_path)
    try:
        out = dig(sp.port, "+nsid", "example.com", "SOA")
        assert "status: NOERROR" in out and "NSID" not in out, out
        assert "status: REFUSED" in dig(sp.port, "CH", "TXT", "id.server")
    finally:
        sp.stop()
