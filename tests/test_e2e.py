"""End to end: a real server process on a loopback port, real packets, real clients
(dnspython over UDP and TCP, and dig), against the bundled example config."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from collections import Counter

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from conftest import ROOT, start_server

pytestmark = pytest.mark.e2e

GB = "81.2.69.0/24"
JP = "133.242.0.0/24"
LONDON_V4 = {"192.0.2.161", "192.0.2.162"}
TOKYO_V4 = {"192.0.2.211", "192.0.2.212"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    sp = start_server(tmp_path_factory.mktemp("e2e"))
    yield sp
    sp.stop()
    assert "Traceback" not in sp.log(), sp.log()


def ecs(subnet):
    addr, plen = subnet.split("/")
    return [dns.edns.ECSOption(addr, int(plen))]


def addrs(r):
    return {rr.address for rrset in r.answer for rr in rrset}


def dig(srv, *args):
    out = subprocess.run(["dig", "+norec", "+time=2", "+tries=1", "@127.0.0.1", "-p", str(srv.port), *args],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


# (id, name, type, transport, edns/ecs, expected rcode, aa)
BASIC = [
    ("soa-udp", "example.com.", "SOA", False, None, "NOERROR", True),
    ("soa-tcp", "example.com.", "SOA", True, None, "NOERROR", True),
    ("nx-udp", "nope.example.com.", "A", False, None, "NXDOMAIN", True),
    ("nx-tcp-ecs", "nope.example.com.", "A", True, GB, "NXDOMAIN", True),
    ("nodata", "ns1.example.com.", "MX", False, GB, "NOERROR", True),
    ("refused", "example.org.", "A", False, None, "REFUSED", False),
    ("referral", "host.corp.example.com.", "A", False, None, "NOERROR", False),
    ("dynamic-udp", "wss-primary.example.com.", "A", False, GB, "NOERROR", True),
    ("dynamic-tcp", "wss-primary.example.com.", "AAAA", True, GB, "NOERROR", True),
]


@pytest.mark.parametrize("case", BASIC, ids=[c[0] for c in BASIC])
def test_basic_over_the_wire(srv, case):
    _, name, rdtype, tcp, subnet, rcode, aa = case
    kw = {"use_edns": 0, "options": ecs(subnet)} if subnet else {}
    r = srv.query(name, rdtype, tcp=tcp, **kw)
    assert dns.rcode.to_text(r.rcode()) == rcode
    assert bool(r.flags & dns.flags.AA) == aa
    assert not r.flags & dns.flags.RA
    if subnet:
        (o,) = r.options
        assert o.srclen == int(subnet.split("/")[1])
    else:
        assert r.edns == -1


def test_dig_soa_authoritative(srv):
    out = dig(srv, "example.com", "SOA")
    assert re.search(r"flags: qr aa;", out) and "status: NOERROR" in out
    assert "ns1.example.com. hostmaster.example.com." in out


def test_dig_subnet_routes_gb_and_jp(srv):
    gb = dig(srv, "+short", "wss-primary.example.com", "A", f"+subnet={GB}").split()
    jp = dig(srv, "+short", "wss-primary.example.com", "A", f"+subnet={JP}").split()
    assert set(gb) == LONDON_V4
    assert set(jp) == TOKYO_V4
    full = dig(srv, "wss-primary.example.com", "A", f"+subnet={GB}")
    assert re.search(r"CLIENT-SUBNET: 81\.2\.69\.0/24/\d+", full)


def test_dig_udp_truncation_then_tcp_full_answer(tmp_path):
    from conftest import FIXTURES
    chains = tmp_path / "chains"
    chains.mkdir()
    (chains / "none.yaml").write_text("regions: {}\nrecords: {}\n")
    sp = start_server(tmp_path, zones=FIXTURES / "zones", chains=chains, probe="test.example.")
    try:
        out = dig(sp, "+noedns", "+ignore", "big.test.example", "TXT")
        assert re.search(r"flags: qr aa tc;", out) and "ANSWER: 0" in out, out
        out = dig(sp, "+noedns", "big.test.example", "TXT")  # dig retries over TCP itself
        assert "ANSWER: 6" in out and "(TCP)" in out
        out = dig(sp, "+tcp", "+subnet=81.2.69.0/24", "big.test.example", "TXT")
        assert "ANSWER: 6" in out and "CLIENT-SUBNET: 81.2.69.0/24/0" in out
    finally:
        sp.stop()


@pytest.mark.parametrize("family,subnet,expected", [
    ("A", GB, LONDON_V4),
    ("A", JP, TOKYO_V4),
    ("AAAA", GB, {"2001:db8:e106::1", "2001:db8:e106::2"}),
    ("AAAA", "2a02:8010::/56", {"2001:db8:e106::1", "2001:db8:e106::2"}),
])
def test_wss_primary_by_country(srv, family, subnet, expected):
    r = srv.query("wss-primary.example.com.", family, use_edns=0, options=ecs(subnet))
    assert addrs(r) == expected
    assert {rrset.ttl for rrset in r.answer} == {20}  # the configured TTL
    (o,) = r.options
    assert 0 < o.scopelen <= (32 if ":" not in subnet else 128)


def test_wss_backup_spreads_over_three_nearest(srv):
    seen = Counter()
    q = dns.message.make_query("wss-backup.example.com.", "A", use_edns=0, options=ecs(GB))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for i in range(3000):
        q.id = i
        s.sendto(q.to_wire(), ("127.0.0.1", srv.port))
        r = dns.message.from_wire(s.recv(4096))
        seen[frozenset(addrs(r))] += 1
    s.close()
    assert len(seen) == 3, seen
    for n in seen.values():
        assert 0.20 * 3000 <= n <= 0.47 * 3000, seen
    assert frozenset(LONDON_V4) in seen


def test_resolver_address_used_without_ecs(srv):
    # no ECS: 127.0.0.1 has no location -> the default region (us-east-1)
    r = srv.query("wss-primary.example.com.", "A")
    assert addrs(r) == {"192.0.2.111", "192.0.2.112", "192.0.2.113"}
    assert r.edns == -1


def test_ecs_scope_zero_for_static_and_negative(srv):
    for name, t in (("example.com.", "SOA"), ("nope.example.com.", "A")):
        r = srv.query(name, t, use_edns=0, options=ecs(GB))
        (o,) = r.options
        assert o.scopelen == 0


def _edited_server(tmp_path, edit):
    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains)
    doc = yaml.safe_load((chains / "regions.yaml").read_text())
    edit(doc["regions"])
    (chains / "regions.yaml").write_text(yaml.safe_dump(doc))
    return start_server(tmp_path, chains=chains)


def test_region_down_is_skipped(tmp_path):
    def edit(regions):
        regions["eu-west-2"]["meta"]["up"] = False
    sp = _edited_server(tmp_path, edit)
    try:
        r = sp.query("wss-primary.example.com.", "A", use_edns=0, options=ecs(GB))
        got = addrs(r)
        assert got and not got & LONDON_V4
    finally:
        sp.stop()


def test_region_over_high_watermark_is_skipped(tmp_path):
    def edit(regions):
        regions["eu-west-2"]["services"]["wss"]["meta"]["connections"] = 9000
    sp = _edited_server(tmp_path, edit)
    try:
        r = sp.query("wss-primary.example.com.", "A", use_edns=0, options=ecs(GB))
        assert addrs(r) and not addrs(r) & LONDON_V4
        r = sp.query("api.example.com.", "A", use_edns=0, options=ecs(GB))  # api does not shed
        assert addrs(r) == {"198.51.100.161", "198.51.100.162"}
    finally:
        sp.stop()


def test_everything_down_returns_everything(tmp_path):
    def edit(regions):
        for reg in regions.values():
            reg["meta"]["up"] = False
    sp = _edited_server(tmp_path, edit)
    try:
        r = sp.query("wss-primary.example.com.", "A", use_edns=0, options=ecs(GB))
        # up fails open; geotarget then still picks the nearest
        assert addrs(r) == LONDON_V4
    finally:
        sp.stop()


def test_malformed_over_udp_gets_formerr_and_server_lives(srv):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    bad = struct.pack("!6H", 99, 0x0100, 2, 0, 0, 0)
    s.sendto(bad, ("127.0.0.1", srv.port))
    data = s.recv(512)
    assert struct.unpack("!HH", data[:4]) == (99, 0x8101)
    s.close()
    assert srv.query("example.com.", "SOA").rcode() == 0


def test_tcp_pipelined_and_split_frames(srv):
    qs = [dns.message.make_query("example.com.", "SOA"), dns.message.make_query("nope.example.com.", "A"),
          dns.message.make_query("wss-primary.example.com.", "A", use_edns=0, options=ecs(JP))]
    blob = b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in qs))
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
    for i in range(0, len(blob), 7):  # dribble the frames in small pieces
        c.sendall(blob[i:i + 7])
    got = []
    buf = b""
    while len(got) < 3:
        buf += c.recv(4096)
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
            n = struct.unpack("!H", buf[:2])[0]
            got.append(dns.message.from_wire(buf[2:2 + n]))
            buf = buf[2 + n:]
    c.close()
    assert [m.id for m in got] == [q.id for q in qs]
    assert [m.rcode() for m in got] == [0, 3, 0]
    assert addrs(got[2]) == TOKYO_V4


def test_tcp_idle_timeout_and_connection_cap(tmp_path):
    sp = start_server(tmp_path, "--tcp-idle-timeout", "0.5", "--tcp-max-connections", "2")
    try:
        a = socket.create_connection(("127.0.0.1", sp.port), timeout=3)
        b = socket.create_connection(("127.0.0.1", sp.port), timeout=3)
        import time
        time.sleep(0.1)
        c = socket.create_connection(("127.0.0.1", sp.port), timeout=3)
        assert c.recv(10) == b""  # over the cap: closed at once
        c.close()
        assert a.recv(10) == b""  # idle: closed after the timeout
        b.close()
        a.close()
        assert sp.query("example.com.", "SOA", tcp=True).rcode() == 0
    finally:
        sp.stop()


def test_record_with_ecs_off_routes_by_resolver_and_scope_zero(tmp_path):
    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains)
    edge = chains / "edge.yaml"
    edge.write_text(edge.read_text().replace("    ttl: 20\n    chain: wss-primary",
                                             "    ttl: 20\n    ecs: false\n    chain: wss-primary"))
    sp = start_server(tmp_path, chains=chains)
    try:
        for _ in range(2):  # the second answer comes from the rendered-answer cache
            r = sp.query("wss-primary.example.com.", "A", use_edns=0, options=ecs(GB))
            # the resolver is 127.0.0.1 (no location): the default region, not London
            assert addrs(r) == {"192.0.2.111", "192.0.2.112", "192.0.2.113"}
            (o,) = r.options
            assert o.scopelen == 0 and o.srclen == 24
        r = sp.query("wss-backup.example.com.", "A", use_edns=0, options=ecs(GB))  # ecs still on here
        assert addrs(r) and r.options[0].scopelen > 0
    finally:
        sp.stop()
