"""Authoritative semantics, table-driven, through the Responder (parse -> decide -> render),
each response parsed back with dnspython."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from conftest import ask

pytestmark = pytest.mark.unit

SOA = "test.example. 60 IN SOA ns.test.example. admin.test.example. 7 3600 600 86400 60"

# (id, name, type, rcode, aa, answer lines, authority lines, additional lines)
CASES = [
    ("apex-soa", "test.example.", "SOA", "NOERROR", True,
     ["test.example. 3600 IN SOA ns.test.example. admin.test.example. 7 3600 600 86400 60"], [], []),
    ("apex-ns-with-glue", "test.example.", "NS", "NOERROR", True,
     ["test.example. 3600 IN NS ns.test.example."], [], ["ns.test.example. 3600 IN A 192.0.2.1"]),
    ("mx-additional", "test.example.", "MX", "NOERROR", True,
     ["test.example. 3600 IN MX 5 mail.test.example."], [],
     ["mail.test.example. 3600 IN A 192.0.2.2", "mail.test.example. 3600 IN AAAA 2001:db8::2"]),
    ("a", "a.b.c.test.example.", "A", "NOERROR", True, ["a.b.c.test.example. 3600 IN A 192.0.2.3"], [], []),
    ("nodata", "a.b.c.test.example.", "AAAA", "NOERROR", True, [], [SOA.replace(" 60 IN", " 60 IN")], []),
    ("nxdomain", "nope.test.example.", "A", "NXDOMAIN", True, [], [SOA], []),
    ("empty-non-terminal", "b.c.test.example.", "A", "NOERROR", True, [], [SOA], []),
    ("empty-non-terminal-2", "c.test.example.", "TXT", "NOERROR", True, [], [SOA], []),
    ("below-existing-name", "x.a.b.c.test.example.", "A", "NXDOMAIN", True, [], [SOA], []),
    ("cname-chase", "alias.test.example.", "A", "NOERROR", True,
     ["alias.test.example. 3600 IN CNAME a.b.c.test.example.", "a.b.c.test.example. 3600 IN A 192.0.2.3"], [], []),
    ("cname-asked", "alias.test.example.", "CNAME", "NOERROR", True,
     ["alias.test.example. 3600 IN CNAME a.b.c.test.example."], [], []),
    ("cname-chain", "chain1.test.example.", "A", "NOERROR", True,
     ["chain1.test.example. 3600 IN CNAME chain2.test.example.",
      "chain2.test.example. 3600 IN CNAME alias.test.example.",
      "alias.test.example. 3600 IN CNAME a.b.c.test.example.",
      "a.b.c.test.example. 3600 IN A 192.0.2.3"], [], []),
    ("cname-nodata-at-target", "alias.test.example.", "AAAA", "NOERROR", True,
     ["alias.test.example. 3600 IN CNAME a.b.c.test.example."], [SOA], []),
    ("cname-dangling-nxdomain", "dangling.test.example.", "A", "NXDOMAIN", True,
     ["dangling.test.example. 3600 IN CNAME missing.test.example."], [SOA], []),
    ("cname-out-of-zone", "outside.test.example.", "A", "NOERROR", True,
     ["outside.test.example. 3600 IN CNAME www.example.org."], [], []),
    ("wildcard", "anything.wild.test.example.", "A", "NOERROR", True,
     ["anything.wild.test.example. 3600 IN A 192.0.2.10"], [], []),
    ("wildcard-deeper", "a.b.wild.test.example.", "TXT", "NOERROR", True,
     ['a.b.wild.test.example. 3600 IN TXT "wild"'], [], []),
    ("wildcard-nodata", "anything.wild.test.example.", "MX", "NOERROR", True, [], [SOA], []),
    ("wildcard-blocked-by-existing", "exists.wild.test.example.", "A", "NOERROR", True, [], [SOA], []),
    ("wildcard-not-for-parent", "wild.test.example.", "A", "NOERROR", True, [], [SOA], []),
    ("wildcard-cname", "x.cw.test.example.", "A", "NOERROR", True,
     ["x.cw.test.example. 3600 IN CNAME a.b.c.test.example.", "a.b.c.test.example. 3600 IN A 192.0.2.3"], [], []),
    ("referral", "sub.test.example.", "A", "NOERROR", False, [],
     ["sub.test.example. 3600 IN NS ns1.sub.test.example.", "sub.test.example. 3600 IN NS ns2.elsewhere.example."],
     ["ns1.sub.test.example. 3600 IN A 192.0.2.53"]),
    ("referral-below-cut", "www.sub.test.example.", "A", "NOERROR", False, [],
     ["sub.test.example. 3600 IN NS ns1.sub.test.example.", "sub.test.example. 3600 IN NS ns2.elsewhere.example."],
     ["ns1.sub.test.example. 3600 IN A 192.0.2.53"]),
    ("referral-glue-name", "ns1.sub.test.example.", "A", "NOERROR", False, [],
     ["sub.test.example. 3600 IN NS ns1.sub.test.example.", "sub.test.example. 3600 IN NS ns2.elsewhere.example."],
     ["ns1.sub.test.example. 3600 IN A 192.0.2.53"]),
    ("ds-at-cut-answered-by-parent", "sub.test.example.", "DS", "NOERROR", True,
     ["sub.test.example. 3600 IN DS 12345 13 2 2bb183af5f22588179a53b0a98631fad1a292118a3b6b4b5a1d5a0c6cf22f5f1"], [], []),
    ("ds-below-cut-referral", "x.sub.test.example.", "DS", "NOERROR", False, [],
     ["sub.test.example. 3600 IN NS ns1.sub.test.example.", "sub.test.example. 3600 IN NS ns2.elsewhere.example."],
     ["ns1.sub.test.example. 3600 IN A 192.0.2.53"]),
    ("any-minimal", "test.example.", "ANY", "NOERROR", True, ['test.example. 60 IN HINFO "RFC8482" ""'], [], []),
    ("any-nxdomain", "nope.test.example.", "ANY", "NXDOMAIN", True, [], [SOA], []),
    ("outside-zones", "example.org.", "A", "REFUSED", False, [], [], []),
    ("root", ".", "NS", "REFUSED", False, [], [], []),
    ("parent-of-zone", "example.", "SOA", "REFUSED", False, [], [], []),
    ("axfr-refused", "test.example.", "AXFR", "REFUSED", False, [], [], []),
    ("ixfr-refused", "test.example.", "IXFR", "REFUSED", False, [], [], []),
]


def lines(section):
    return sorted(rr for rrset in section for rr in rrset.to_text().splitlines())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
def test_semantics(responder, case, edns):
    _, name, rdtype, rcode, aa, answer, authority, additional = case
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    r, _ = ask(responder, q, transport="tcp", limit=65535)
    assert dns.rcode.to_text(r.rcode()) == rcode
    assert bool(r.flags & dns.flags.AA) == aa
    assert not r.flags & dns.flags.RA
    assert r.flags & dns.flags.QR
    assert r.id == q.id
    assert lines(r.answer) == sorted(answer)
    assert lines(r.authority) == sorted(authority)
    assert lines(r.additional) == sorted(additional)
    assert (r.edns >= 0) == edns


def test_cname_loop_terminates(responder):
    from filterdns.dns.core import MAX_CHASE

    r, raw = ask(responder, dns.message.make_query("loop1.test.example.", "A"))
    assert r.rcode() == 0
    # the query name's CNAME, then MAX_CHASE links followed, alternating loop1, loop2, ...
    # (counted in the header: dnspython merges the repeated records)
    assert int.from_bytes(raw[6:8], "big") == MAX_CHASE + 1
    assert sorted(rr.name.to_text() for rr in r.answer) == ["loop1.test.example.", "loop2.test.example."]


def test_chaos_class_refused(responder):
    q = dns.message.make_query("version.bind.", "TXT", rdclass="CH")
    r, _ = ask(responder, q)
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.answer


def test_case_preserved_byte_for_byte(responder):
    q = dns.message.make_query("A.b.C.TeSt.ExAmPlE.", "A")
    r, raw = ask(responder, q)
    assert raw[12:12 + len(b"\x01A\x01b\x01C\x04TeSt\x07ExAmPlE\x00")] == b"\x01A\x01b\x01C\x04TeSt\x07ExAmPlE\x00"
    assert r.answer[0].name.to_text() == "A.b.C.TeSt.ExAmPlE."  # owner points at the question


def test_rd_cd_copied_ra_clear(responder):
    q = dns.message.make_query("test.example.", "SOA")
    q.flags |= dns.flags.CD
    r, _ = ask(responder, q)
    assert r.flags & dns.flags.RD and r.flags & dns.flags.CD
    assert not r.flags & dns.flags.RA and not r.flags & dns.flags.AD
    q.flags &= ~(dns.flags.RD | dns.flags.CD)
    r, _ = ask(responder, q)
    assert not r.flags & dns.flags.RD and not r.flags & dns.flags.CD


def test_negative_ttl_is_min_of_soa_ttl_and_minimum(responder):
    r, _ = ask(responder, dns.message.make_query("nope.test.example.", "A"))
    assert r.authority[0].ttl == 60  # SOA TTL 3600, MINIMUM 60


def test_compression_is_used(responder):
    r, raw = ask(responder, dns.message.make_query("test.example.", "MX"))
    assert b"\x04mail\xc0\x0c" in raw  # the MX target points at the question name


def test_static_answers_identical_with_and_without_cache():
    from filterdns.routing.inventory import Inventory
    from filterdns.dns.responder import Responder
    from filterdns.config.state import StateHolder
    from conftest import static_state

    holder = StateHolder(static_state())
    cached = Responder(holder, Inventory(), cache=True)
    plain = Responder(holder, Inventory(), cache=False)
    for case in CASES:
        for edns in (False, 0):
            for name in (case[1], case[1].upper()):
                q = dns.message.make_query(name, case[2], use_edns=edns)
                w = q.to_wire()
                for _ in range(2):  # second round is served from the cache
                    for limit in (0, 65535):
                        assert cached.respond(w, ("127.0.0.1", 1), "udp", limit) == \
                            plain.respond(w, ("127.0.0.1", 1), "udp", limit), case[0]
