"""Wire format: EDNS0 (RFC 6891), Client Subnet (RFC 7871), truncation, malformed packets.
Byte-exact where the bytes are ours to choose, and round-tripped through dnspython."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from conftest import ask
from filterdns.dns import wire

pytestmark = pytest.mark.unit


def raw_query(qname=b"\x04test\x07example\x00", qtype=1, qclass=1, qid=0x1234, flags=0x0100,
              an=0, ns=0, ar=0, tail=b""):
    return struct.pack("!6H", qid, flags, 1, an, ns, ar) + qname + struct.pack("!HH", qtype, qclass) + tail


def opt(payload=1232, version=0, do=False, options=b"", owner=b"\x00", ext=0):
    ttl = (ext << 24) | (version << 16) | (0x8000 if do else 0)
    return owner + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options


def ecs_opt(family, source, scope, addr):
    body = struct.pack("!HBB", family, source, scope) + addr
    return struct.pack("!HH", 8, len(body)) + body


def test_parse_plain_query_byte_exact():
    q = wire.parse_query(raw_query())
    assert (q.id, q.qtype, q.qclass, q.edns, q.payload) == (0x1234, 1, 1, False, 512)
    assert q.qname == b"\x04test\x07example\x00"
    assert q.question == b"\x04test\x07example\x00\x00\x01\x00\x01"


def test_render_soa_byte_exact(responder):
    raw = responder.respond(raw_query(qtype=6), ("127.0.0.1", 1), "udp", 0)
    expected = (struct.pack("!6H", 0x1234, 0x8500, 1, 1, 0, 0)
                + b"\x04test\x07example\x00\x00\x06\x00\x01"
                + b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 3600, 5 + 8 + 20)
                + b"\x02ns\xc0\x0c" + b"\x05admin\xc0\x0c" + struct.pack("!5I", 7, 3600, 600, 86400, 60))
    assert raw == expected


@pytest.mark.parametrize("do", [False, True])
def test_opt_echo_and_payload(responder, do):
    r, raw = ask(responder, raw_query(qtype=6, ar=1, tail=opt(4096, do=do)))
    assert r.edns == 0 and r.payload == 1232
    assert bool(r.ednsflags & dns.flags.DO) == do
    # our OPT is the last record: root owner, type 41, class 1232, flags only DO
    assert raw.endswith(opt(1232, do=do))


def test_no_opt_without_edns(responder):
    r, raw = ask(responder, raw_query(qtype=6))
    assert r.edns == -1
    assert struct.unpack_from("!H", raw, 10)[0] == 0


def test_unknown_options_ignored_not_echoed(responder):
    r, raw = ask(responder, raw_query(qtype=6, ar=1, tail=opt(options=struct.pack("!HH", 65001, 3) + b"abc")))
    assert r.rcode() == 0 and r.edns == 0 and not r.options
    assert raw.endswith(opt())


def test_unknown_edns_flag_bits_cleared(responder):
    q = raw_query(qtype=6, ar=1, tail=b"\x00" + struct.pack("!HHIH", 41, 1232, 0x00007FFF, 0))
    r, raw = ask(responder, q)
    assert raw.endswith(opt())


def test_badvers(responder):
    r, raw = ask(responder, raw_query(qtype=6, ar=1, tail=opt(version=1)))
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0 and not r.answer
    assert raw.endswith(opt(ext=1))  # BADVERS = 16: upper 8 bits of 12 in the OPT TTL


@pytest.mark.parametrize("tail,ar,why", [
    (opt() + opt(), 2, "two OPT records"),
    (opt(owner=b"\x01a\x00"), 1, "OPT not owned by root"),
    (opt(options=b"\x00\x08\x00"), 1, "truncated option header"),
    (opt(options=struct.pack("!HH", 8, 10) + b"\x00\x01"), 1, "option past the OPT"),
    (opt(options=ecs_opt(1, 33, 0, b"\x01\x02\x03\x04\x05")), 1, "ECS source > 32"),
    (opt(options=ecs_opt(2, 129, 0, b"\x20" + b"\x00" * 16)), 1, "ECS source > 128"),
    (opt(options=ecs_opt(1, 24, 0, b"\x51\x02\x45\x00")), 1, "ECS address longer than prefix"),
    (opt(options=ecs_opt(1, 24, 0, b"\x51\x02")), 1, "ECS address shorter than prefix"),
    (opt(options=ecs_opt(1, 23, 0, b"\x51\x02\x45")), 1, "ECS bits past the prefix"),
    (opt(options=ecs_opt(3, 0, 0, b"")), 1, "ECS unknown family"),
    (opt(options=struct.pack("!HH", 8, 3) + b"\x00\x01\x18"), 1, "ECS option too short"),
    (opt(options=ecs_opt(1, 24, 0, b"\x51\x02\x45") * 2), 1, "two ECS options"),
])
def test_edns_formerr(responder, tail, ar, why):
    r, raw = ask(responder, raw_query(qtype=6, ar=ar, tail=tail))
    assert r.rcode() == dns.rcode.FORMERR, why
    assert not r.answer
    assert not r.options  # no ECS echoed in a FORMERR


def test_ecs_echo_v4(responder):
    q = dns.message.make_query("test.example.", "SOA", use_edns=0,
                               options=[dns.edns.ECSOption("81.2.69.0", 24)])
    r, raw = ask(responder, q)
    (o,) = r.options
    assert (o.address, o.srclen, o.scopelen) == ("81.2.69.0", 24, 0)  # static data: scope 0
    assert raw.endswith(struct.pack("!HH", 8, 7) + struct.pack("!HBB", 1, 24, 0) + b"\x51\x02\x45")


def test_ecs_echo_v6_odd_prefix(responder):
    q = dns.message.make_query("nope.test.example.", "A", use_edns=0,
                               options=[dns.edns.ECSOption("2a02:8010::", 31)])
    r, _ = ask(responder, q)
    assert r.rcode() == dns.rcode.NXDOMAIN
    (o,) = r.options
    assert (o.address, o.srclen, o.scopelen) == ("2a02:8010::", 31, 0)


def test_ecs_source_zero_echoed(responder):
    q = raw_query(qtype=6, ar=1, tail=opt(options=ecs_opt(1, 0, 0, b"")))
    r, raw = ask(responder, q)
    assert r.rcode() == 0
    assert raw.endswith(ecs_opt(1, 0, 0, b""))


def test_no_ecs_in_response_without_ecs(responder):
    r, _ = ask(responder, dns.message.make_query("test.example.", "SOA", use_edns=0))
    assert not r.options


def test_truncation_udp_without_edns(responder):
    q = dns.message.make_query("big.test.example.", "TXT")
    r, raw = ask(responder, q)
    assert r.flags & dns.flags.TC
    assert len(raw) <= 512 and not r.answer
    assert r.question[0].name.to_text() == "big.test.example."


def test_truncation_keeps_opt_and_ecs(responder):
    q = dns.message.make_query("big.test.example.", "TXT", use_edns=0, payload=512,
                               options=[dns.edns.ECSOption("81.2.69.0", 24)])
    r, raw = ask(responder, q)
    assert r.flags & dns.flags.TC and r.edns == 0 and len(r.options) == 1


def test_large_payload_fits(responder):
    q = dns.message.make_query("big.test.example.", "TXT", use_edns=0, payload=4096)
    r, raw = ask(responder, q)
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 6


def test_payload_below_512_treated_as_512(responder):
    q = wire.parse_query(raw_query(ar=1, tail=opt(100)))
    assert q.payload == 512 and wire.udp_limit(q) == 512


def test_tcp_gets_full_answer(responder):
    q = dns.message.make_query("big.test.example.", "TXT")
    r, raw = ask(responder, q, transport="tcp", limit=wire.TCP_LIMIT)
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 6


@pytest.mark.parametrize("packet,why", [
    (b"", "empty"),
    (b"\x12\x34\x01", "short header"),
    (struct.pack("!6H", 1, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", "QR set"),
])
def test_dropped(responder, packet, why):
    assert responder.respond(packet, ("127.0.0.1", 1), "udp", 0) is None, why


@pytest.mark.parametrize("packet,why", [
    (struct.pack("!6H", 7, 0x0100, 0, 0, 0, 0), "qdcount 0"),
    (struct.pack("!6H", 7, 0x0100, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2, "qdcount 2"),
    (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\x04test", "label past end"),
    (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\x44test\x00\x00\x01\x00\x01", "bad label type"),
    (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", "compression loop"),
    (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\x00\x00\x01", "short question"),
    (raw_query(tail=b"junk"), "trailing junk"),
    (raw_query(ar=1), "missing additional record"),
    (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "name > 255"),
])
def test_formerr(responder, packet, why):
    raw = responder.respond(packet, ("127.0.0.1", 1), "udp", 0)
    assert raw is not None, why
    qid, flags = struct.unpack_from("!HH", raw)
    assert qid == 7 or qid == 0x1234
    assert flags & 0x8000 and flags & 0xF == 1, why
    dns.message.from_wire(raw)  # well-formed


@pytest.mark.parametrize("opcode", [1, 2, 3, 4, 5, 6, 7, 15])
def test_other_opcodes_notimp_header_only(responder, opcode):
    raw = raw_query(flags=(opcode << 11) | 0x0100, ar=1, tail=opt())
    out = responder.respond(raw, ("127.0.0.1", 1), "udp", 0)
    assert out == struct.pack("!6H", 0x1234, 0x8000 | (opcode << 11) | 0x0100 | 4, 0, 0, 0, 0)


def test_answer_records_in_query_are_skipped(responder):
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
    r, _ = ask(responder, raw_query(qtype=6, an=1, tail=rr))
    assert r.rcode() == 0 and len(r.answer) == 1


def test_exception_while_answering_is_servfail(responder, monkeypatch):
    import filterdns.dns.responder as mod

    def boom(*a, **k):
        raise RuntimeError("injected")

    from filterdns.ops.metrics import Metrics

    responder.metrics = Metrics()
    monkeypatch.setattr(mod, "plan", boom)
    r, _ = ask(responder, dns.message.make_query("test.example.", "SOA"))
    assert r.rcode() == dns.rcode.SERVFAIL
    assert responder.errors == 1
    assert responder.metrics._scalars["servfail_exception"] == 1
    ask(responder, dns.message.make_query("test.example.", "SOA"))
    assert responder.errors == 2 and responder.metrics._scalars["servfail_exception"] == 2


def test_renderer_compresses_names_against_each_other():
    r = wire.Renderer(b"\x01x\x00", b"\x01x\x00")
    n = wire.Name(b"\x03foo\x07example\x00")
    r.rr(n, 1, 1, 1, b"\x01\x02\x03\x04")
    r.rr(wire.Name(b"\x03bar\x07example\x00"), 1, 1, 1, b"\x01\x02\x03\x04")
    # the second owner reuses "example." from the first: 12 + len(question)=7 -> first owner at 19
    assert r.data()[14 + 4:] .startswith(b"\x03bar\xc0") or b"\x03bar\xc0" in r.data()
