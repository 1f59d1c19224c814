"""Strict parsing (RFC 1035 §4.1, RFC 6891 §6.1.1, RFC 8945 §5.2): a table of malformed query
shapes and the rcode each gets, whether the answer carries our OPT, and what the strict
parser (dnspython) thinks of the query. A query dnspython rejects never gets an answer."""

from __future__ import annotations

import struct

import dns.message
import dns.rcode
import dns.tsig
import pytest

from conftest import ask

pytestmark = pytest.mark.unit

QNAME = b"\x04test\x07example\x00"  # at offset 12; its root octet is at 12 + 13 = 25


def query(an=0, ns=0, ar=0, tail=b"", qtype=6):
    return struct.pack("!6H", 0x4242, 0x0100, 1, an, ns, ar) + QNAME + struct.pack("!HH", qtype, 1) + tail


def opt(payload=1232, version=0, options=b"", owner=b"\x00", do=False):
    ttl = (version << 16) | (0x8000 if do else 0)
    return owner + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options


def option(code, body):
    return struct.pack("!HH", code, len(body)) + body


def rr(rtype=1, rdata=b"\x01\x02\x03\x04", owner=b"\xc0\x0c", rclass=1):
    return owner + struct.pack("!HHIH", rtype, rclass, 60, len(rdata)) + rdata


FORMERR, NOERROR, BADVERS, NOTAUTH = 1, 0, dns.rcode.BADVERS, 9

# (id, query bytes, expected rcode, answer has our OPT, dnspython accepts the query)
CASES = [
    ("opt-in-answer", query(an=1, tail=opt()), FORMERR, False, False),
    ("opt-in-answer-and-additional", query(an=1, ar=1, tail=opt() + opt()), FORMERR, True, False),
    ("opt-in-authority", query(ns=1, ar=1, tail=opt() + opt()), FORMERR, True, False),
    ("two-opt", query(ar=2, tail=opt() + opt()), FORMERR, False, False),
    ("two-opt-version-1", query(ar=2, tail=opt(version=1) + opt(version=1)), FORMERR, False, False),
    ("opt-owner-pointer-to-root", query(ar=1, tail=opt(owner=b"\xc0\x19")), FORMERR, True, True),
    ("opt-owner-not-root", query(ar=1, tail=opt(owner=b"\x01a\x00")), FORMERR, True, False),
    ("trailing-junk-after-opt", query(ar=1, tail=opt() + b"junk"), FORMERR, True, False),
    ("trailing-junk-after-opt-v1", query(ar=1, tail=opt(version=1) + b"\x00"), FORMERR, False, False),
    ("trailing-junk-no-opt", query(tail=b"\x00"), FORMERR, False, False),
    ("short-a-in-additional", query(ar=2, tail=rr(rdata=b"\x01\x02\x03") + opt()), FORMERR, True, False),
    ("short-a-in-answer", query(an=1, tail=rr(rdata=b"\x01\x02")), FORMERR, False, False),
    ("bad-mx-in-additional", query(ar=1, tail=rr(rtype=15, rdata=b"\x00")), FORMERR, False, False),
    ("record-past-end", query(ar=2, tail=opt() + b"\xc0\x0c\x00\x01"), FORMERR, True, False),
    ("additional-owner-forward-pointer", query(ar=2, tail=opt() + rr(owner=b"\xc0\x40")), FORMERR, True, False),
    ("cookie-5-octets", query(ar=1, tail=opt(options=option(10, b"12345"))), FORMERR, True, False),
    ("cookie-server-too-long", query(ar=1, tail=opt(options=option(10, b"c" * 8 + b"s" * 33))), FORMERR, True, False),
    ("ede-1-octet", query(ar=1, tail=opt(options=option(15, b"\x00"))), FORMERR, True, False),
    ("ede-bad-utf8", query(ar=1, tail=opt(options=option(15, b"\x00\x01\xff\xfe"))), FORMERR, True, False),
    ("reportchannel-bad-name", query(ar=1, tail=opt(options=option(18, b"\x05ab"))), FORMERR, True, False),
    ("ecs-scope-33", query(ar=1, tail=opt(options=option(8, struct.pack("!HBB", 1, 24, 33) + b"\x51\x02\x45"))),
     FORMERR, True, False),
    ("two-ecs", query(ar=1, tail=opt(options=option(8, struct.pack("!HBB", 1, 0, 0)) * 2)), FORMERR, True, True),
    ("option-past-opt", query(ar=1, tail=opt(options=struct.pack("!HH", 65001, 9) + b"ab")), FORMERR, True, False),
    ("badvers-only", query(ar=1, tail=opt(version=1)), BADVERS, True, True),
    ("badvers-after-good-extra-record", query(ar=2, tail=rr() + opt(version=1)), BADVERS, True, True),
    ("good-cookie", query(ar=1, tail=opt(options=option(10, b"c" * 8))), NOERROR, True, True),
    ("good-ede", query(ar=1, tail=opt(options=option(15, b"\x00\x01hi"))), NOERROR, True, True),
    ("good-a-in-additional", query(ar=2, tail=rr() + opt()), NOERROR, True, True),
    ("good-a-in-answer", query(an=1, tail=rr()), NOERROR, False, True),
    ("opt-first-then-a", query(ar=2, tail=opt(do=True) + rr()), NOERROR, True, True),
]


@pytest.mark.parametrize("packet,rcode,with_opt,dnspython_ok", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_malformed_shapes(responder, packet, rcode, with_opt, dnspython_ok):
    try:
        dns.message.from_wire(packet, keyring=False)
        accepted = True
    except Exception:  # noqa: BLE001
        accepted = False
    assert accepted == dnspython_ok  # the row says what the strict parser thinks
    for transport, limit in (("udp", 0), ("tcp", 65535)):
        r, raw = ask(responder, packet, transport=transport, limit=limit)
        assert r is not None
        assert r.id == 0x4242 and r.rcode() == rcode
        assert (r.edns == 0) == with_opt
        if rcode != NOERROR:
            assert not r.answer and not r.authority
            assert r.question[0].name.to_text() == "test.example."
        else:
            assert r.answer  # the SOA


def test_tsig_signed_query_gets_notauth_badkey(responder):
    key = dns.tsig.Key("k.example.", "c2VjcmV0c2VjcmV0c2VjcmV0", "hmac-sha256")
    q = dns.message.make_query("test.example.", "SOA", use_edns=0)
    q.use_tsig(key)
    raw = responder.respond(q.to_wire(), ("127.0.0.1", 1), "udp", 0)
    r = dns.message.from_wire(raw, keyring=False)
    assert r.rcode() == NOTAUTH and not r.answer and r.edns == 0
    # the TSIG is last, unsigned, error BADKEY, same key name, algorithm and original id
    rd = r.tsig[0]
    assert r.tsig.name.to_text() == "k.example." and rd.error == 17 and rd.mac == b""
    assert rd.algorithm.to_text() == "hmac-sha256." and rd.original_id == q.id


def test_every_dnspython_rejection_is_formerr(responder):
    """Mutate good queries byte by byte: whenever dnspython rejects the packet, the server
    answers FORMERR (or nothing); never NOERROR, NXDOMAIN or REFUSED with records."""
    import random

    rng = random.Random(7)
    seeds = [c[1] for c in CASES if c[3]]
    seen = 0
    for _ in range(4000):
        p = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            p[rng.randrange(12, len(p))] = rng.randrange(256)
        p = bytes(p)
        try:
            dns.message.from_wire(p, keyring=False)
            continue
        except Exception:  # noqa: BLE001
            pass
        out = responder.respond(p, ("127.0.0.1", 1), "udp", 0)
        if out is not None:
            seen += 1
            assert out[3] & 0xF == FORMERR, p.hex()
    assert seen > 1000
