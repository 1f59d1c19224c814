"""The UDP Replay (``filterdns/serve/_mmsg.c``): answers the policy path marked fixed, replayed
in C for queries that can only get the same answer.

* its key names a client's geo database network exactly as ``GeoDB.lookup`` does (every
  address family, both bundled databases), and a query of any shape it does not key is left to
  Python;
* over real servers (one with the Replay, one with ``FILTERDNS_NO_REPLAY``, same seed, one
  worker each) every reply is the same, byte for byte, and so is every counter, over a mix of
  many client subnets, every seed chain (random ones included), static names, NXDOMAIN,
  REFUSED, and malformed variants of queries the Replay holds;
* a drain is in effect from the reply after it is acknowledged (the Replay is reset).
"""

from __future__ import annotations

import ipaddress
import random
import socket
import urllib.request

import dns.edns
import dns.message
import pytest

from conftest import free_port, start_server

from filterdns.routing.geo import COUNTRY_DB, GeoDB
from filterdns.serve import udp

pytestmark = pytest.mark.skipif(not udp.native(), reason="the native _mmsg module is not built")

PEER = ("127.0.0.1", 5353)


def _ecs_query(address: str, source: int, name: str = "wss-primary.example.com", qtype: str = "A") -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=0, options=[dns.edns.ECSOption(address, source)])
    q.id = 4242
    return q.to_wire()


def _net_suffix(depth: int, network: int, v6: bool) -> bytes:
    """How a key ends for an ECS address in the database network ``network``/``depth``: tag,
    depth, the network's masked octets (as many as the depth covers)."""
    octets = 16 if v6 else 4
    raw = network.to_bytes(octets, "big")[: (depth + 7) // 8]
    return bytes([0x26 if v6 else 0x24, depth]) + raw


@pytest.mark.unit
@pytest.mark.parametrize("db", ["country", "routing"])
def test_key_names_the_database_network(db):
    path = COUNTRY_DB if db == "country" else COUNTRY_DB.with_name("dbip-routing.mmdb")
    geo = GeoDB.open(str(path))
    rp = udp._mmsg.Replay(64)
    rp.reset(**geo.replay_tree())
    rng = random.Random(11)
    checked = 0
    for _ in range(3000):
        if rng.random() < 0.5:
            source = rng.choice([8, 16, 20, 24, 24, 32])
            a = ipaddress.IPv4Network((rng.getrandbits(32), source), strict=False).network_address
            v6 = False
        else:
            source = rng.choice([32, 48, 56, 56, 64])
            top = rng.choice([0x2001, 0x2003, 0x2400, 0x2600, 0x2a00, 0x2a02, 0x2c0f]) << 112
            a = ipaddress.IPv6Network((top | rng.getrandbits(112), source), strict=False).network_address
            v6 = True
        key = rp.key(_ecs_query(str(a), source), PEER)
        assert key is not None
        loc = geo.lookup(str(a))
        assert key.endswith(_net_suffix(loc.prefix_len, loc.network, v6)), (str(a), source, loc, key.hex())
        checked += 1
    # the packet's source address, without ECS: the same network as the Python side's
    q = dns.message.make_query("wss-primary.example.com", "A")
    for host in ("81.2.69.160", "2a02:c7c:1::1", "::ffff:81.2.69.160", "127.0.0.1"):
        assert rp.key(q.to_wire(), (host, 53)) is not None
    a = rp.key(q.to_wire(), ("81.2.69.160", 53))
    b = rp.key(q.to_wire(), ("81.2.69.161", 53))
    assert a == b  # one network, one key
    assert checked == 3000
    geo.close()


@pytest.mark.unit
def test_shapes_it_does_not_key_are_left_to_python():
    rp = udp._mmsg.Replay(64)
    good = _ecs_query("81.2.69.0", 24)
    assert rp.key(good, PEER) is not None
    # the ECS address past its source prefix is not zero (FORMERR in Python)
    g20 = _ecs_query("81.2.64.0", 20)
    assert rp.key(g20, PEER) is not None
    bad = bytearray(g20)
    bad[-1] |= 1  # a bit past /20 in the address's last octet
    assert rp.key(bytes(bad), PEER) is None
    # a scope in the query
    bad = bytearray(good)
    bad[-4] = 24
    assert rp.key(bytes(bad), PEER) is None
    # the address longer than the source prefix needs
    assert rp.key(_ecs_query("81.2.69.0", 24)[:-1], PEER) is None
    # two options (ECS and a cookie)
    q = dns.message.make_query("a.example.com", "A", use_edns=0,
                               options=[dns.edns.ECSOption("81.2.69.0", 24),
                                        dns.edns.GenericOption(10, b"12345678")])
    assert rp.key(q.to_wire(), PEER) is None
    # trailing octets, a response, a compressed question
    assert rp.key(good + b"\0", PEER) is None
    resp = bytearray(good)
    resp[2] |= 0x80
    assert rp.key(bytes(resp), PEER) is None
    comp = bytes.fromhex("abcd0100000100000000000003777777c00c00010001")
    assert rp.key(comp, PEER) is None
    # the ID and the port are not part of the key; the peer's network and the flags are
    other = bytearray(good)
    other[0:2] = b"\x99\x99"
    assert rp.key(bytes(other), ("127.0.0.1", 9)) == rp.key(good, PEER)
    rd = bytearray(good)
    rd[2] ^= 0x01
    assert rp.key(bytes(rd), PEER) != rp.key(good, PEER)


NAMES = ["wss-primary.example.com", "wss-backup.example.com", "api.example.com", "edgeapi.example.com",
         "files.example.com", "img.example.com", "example.com", "nothere.example.com", "www.example.org"]


def _mix(rng: random.Random, n: int):
    """Queries as resolvers send them: many subnets, every seed name, repeats (what the Replay
    holds), and malformed variants of queries it holds."""
    for _ in range(n):
        name, qtype = rng.choice(NAMES), rng.choice(["A", "A", "AAAA", "TXT", "SOA"])
        kind = rng.random()
        if kind < 0.45:
            a = f"{rng.choice([81, 2, 41, 5, 31, 62, 80, 103, 177, 200])}.{rng.randrange(256)}.{rng.randrange(256)}.0"
            opts = [dns.edns.ECSOption(a, rng.choice([24, 24, 16, 20, 32]))]
        elif kind < 0.8:
            a = f"2a0{rng.randrange(10)}:{rng.randrange(65536):x}:{rng.randrange(65536):x}::"
            opts = [dns.edns.ECSOption(a, rng.choice([56, 48, 64]))]
        elif kind < 0.9:
            opts = None
        else:
            opts = []
        q = dns.message.make_query(name, qtype, use_edns=0 if opts is not None else False, options=opts or None)
        for _ in range(rng.choice([1, 2, 3])):
            q.id = rng.randrange(65536)
            w = q.to_wire()
            yield w
            if opts and rng.random() < 0.05:  # the same, with a bit set past the source prefix
                bad = bytearray(w)
                bad[-1] |= 1
                yield bytes(bad)


def _ask(port: int, w: bytes) -> bytes | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(w, ("127.0.0.1", port))
        return s.recvfrom(65535)[0]
    finally:
        s.close()


def _counters(mport: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("filterdns_") or "duration" in fam.name or "replay" in fam.name:
            continue
        for s in fam.samples:
            if s.name.endswith("_created") or "timestamp" in s.name:
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


@pytest.mark.e2e
def test_replayed_answers_and_counters_are_the_python_ones(tmp_path):
    servers = []
    try:
        for name, env in (("replay", {}), ("python", {"FILTERDNS_NO_REPLAY": "1"})):
            d = tmp_path / name
            d.mkdir()
            mport = free_port()
            sp = start_server(d, "--metrics", f"127.0.0.1:{mport}", "--seed", "5", "--no-health",
                              "--no-watch", env=env)
            sp.mport = mport
            servers.append(sp)
        a, b = servers
        before = [_counters(a.mport), _counters(b.mport)]
        sent, differ = 0, []
        for w in _mix(random.Random(3), 2500):
            ra, rb = _ask(a.port, w), _ask(b.port, w)
            sent += 1
            if ra != rb:
                differ.append((w.hex(), ra.hex(), rb.hex()))
        assert not differ, (len(differ), differ[:3])
        assert sent > 4000
        da, db = _delta(_counters(a.mport), before[0]), _delta(_counters(b.mport), before[1])
        assert da == db
        text = urllib.request.urlopen(f"http://127.0.0.1:{a.mport}/metrics", timeout=10).read().decode()
        hits = float(next(x.split()[-1] for x in text.splitlines()
                          if x.startswith('filterdns_udp_replay_total{result="hit"}')))
        assert hits > sent / 4, hits  # the mix repeats: the Replay answered a good part of it
        text = urllib.request.urlopen(f"http://127.0.0.1:{b.mport}/metrics", timeout=10).read().decode()
        assert 'filterdns_udp_replay_total{result="hit"} 0.0' in text
    finally:
        for sp in servers:
            sp.stop()


@pytest.mark.e2e
def test_a_drain_is_in_effect_from_the_reply_after_it_is_acknowledged(tmp_path):
    """Replayed answers of a drained region are gone from the first query after the drain's
    reply, on every worker, and come back after the undrain's reply."""
    from test_drain_semantics_e2e import gb, serve
    from test_ops_e2e import cli

    sp = serve(tmp_path)
    try:
        for _ in range(40):  # both workers hold the answer in their Replay
            assert gb(sp) == {"lon"}
        hits = [x for x in urllib.request.urlopen(f"http://127.0.0.1:{sp.mport}/metrics", timeout=10)
                .read().decode().splitlines() if x.startswith('filterdns_udp_replay_total{result="hit"}')]
        assert hits and float(hits[0].split()[-1]) >= 30, hits
        r = cli(sp, "drain", "lon", "--service", "wss", "--reason", "replay test")
        assert r.returncode == 0, r.stderr
        assert [gb(sp) for _ in range(40)] == [{"dub"}] * 40
        r = cli(sp, "undrain", "lon", "--service", "wss", "--reason", "replay test")
        assert r.returncode == 0, r.stderr
        assert [gb(sp) for _ in range(40)] == [{"lon"}] * 40
    finally:
        sp.stop()


def _shed_state(state_dir) -> None:
    """eu-west-2's wss between its shed_load watermarks: GB clients' wss-primary draws."""
    import json
    import time

    import yaml

    from conftest import ROOT

    meta = yaml.safe_load((ROOT / "chains" / "regions.yaml").read_text())["regions"]["eu-west-2"]["services"]["wss"]["meta"]
    load = (float(meta["low_watermark"]) + float(meta["high_watermark"])) / 2
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps(
        {"version": 1, "saved_at": int(time.time()), "drains": [],
         "feeds": [{"region": "eu-west-2", "service": "wss", "values": {"connections": load}}]}))


def _tally(port: int, name: str, n: int) -> dict:
    q = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.ECSOption("81.2.69.0", 24)])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    out: dict = {}
    try:
        for i in range(n):
            q.id = i
            s.sendto(q.to_wire(), ("127.0.0.1", port))
            r = dns.message.from_wire(s.recv(4096))
            assert r.id == i
            k = tuple(sorted(rr.address for rrset in r.answer for rr in rrset))
            out[k] = out.get(k, 0) + 1
    finally:
        s.close()
    return out


@pytest.mark.e2e
def test_random_answers_replayed_from_pools_keep_pythons_distribution(tmp_path):
    """wss-backup (shuffle over the 3 nearest, then the first) and wss-primary (shed_load
    between its watermarks) for one GB subnet, without --seed: replayed from pools of Python's
    draws, each answer has the probabilities Python's own draw has (against a server without the
    Replay), the Replay answers most queries, and /metrics counts every answer's region exactly."""
    import re

    servers = []
    try:
        for name, env in (("replay", {}), ("python", {"FILTERDNS_NO_REPLAY": "1"})):
            d = tmp_path / name
            _shed_state(d / "state")
            mport = free_port()
            sp = start_server(d, "--metrics", f"127.0.0.1:{mport}", "--no-health", "--no-watch", env=env)
            sp.mport = mport
            servers.append(sp)
        n = 4000
        seen = {}
        for record in ("wss-backup.example.com", "wss-primary.example.com"):
            got = seen[record] = [_tally(sp.port, record, n) for sp in servers]
            assert set(got[0]) == set(got[1]) and len(got[0]) >= 2, got
            for k in got[0]:
                pa, pb = got[0][k] / n, got[1][k] / n
                assert abs(pa - pb) < 0.05, (record, k, got)  # ~4.5 standard deviations
        import time

        time.sleep(1.3)
        text = urllib.request.urlopen(f"http://127.0.0.1:{servers[0].mport}/metrics", timeout=10).read().decode()
        hits = float(re.search(r'filterdns_udp_replay_total\{result="hit"\} (\S+)', text).group(1))
        assert hits > 2 * n * 0.6, hits  # one query in 4 of a full pool goes to Python
        backup = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'filterdns_answers_total\{record="wss-backup.example.com.",region="([^"]+)"\} (\S+)', text)}
        # each answer is one region's addresses: as many regions counted as answers seen, and
        # their counts are the counts the client saw
        assert sum(backup.values()) == n and len(backup) == len(seen["wss-backup.example.com"][0]), backup
        assert sorted(backup.values()) == sorted(seen["wss-backup.example.com"][0].values()), (backup, seen)
    finally:
        for sp in servers:
            sp.stop()


@pytest.mark.unit
def test_the_replay_is_bounded_by_entries_and_by_octets():
    """Distinct keys beyond either bound rotate the generations: the entries and the octets
    held never pass twice a generation's share, whatever the traffic; pooled keys the same."""
    from array import array

    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.bind(("127.0.0.1", 0))
    cli.setblocking(False)
    for cap, max_bytes, pooled in ((16, 1 << 30, False), (4096, 1 << 16, False), (4096, 1 << 16, True)):
        rp = udp._mmsg.Replay(cap, (), max_bytes=max_bytes)
        cell = array("Q", bytes(8 * 2))

        def respond(data, addr, rp=rp, cell=cell, pooled=pooled):
            rp.arm(cell, pooled)
            return data[:2] + b"\x81\x80" + data[4:] + b"\0" * 900  # a reply of ~930 octets

        peak_e = peak_b = 0
        for i in range(3000):
            q = dns.message.make_query(f"n{i}.example.com", "A")
            cli.sendto(q.to_wire(), srv.getsockname())
            if i % 16 == 15:
                while udp._mmsg.serve(srv.fileno(), 32, respond, rp)[0]:
                    pass
                st = rp.stats()
                peak_e, peak_b = max(peak_e, st["entries"]), max(peak_b, st["bytes"])
                try:
                    while cli.recv(4096):
                        pass
                except BlockingIOError:
                    pass
        st = rp.stats()
        assert st["inserts"] > 2000, st
        assert peak_e <= 2 * cap, (cap, peak_e)
        assert peak_b <= max_bytes + 2 * 5000, (max_bytes, peak_b)  # each generation may pass by one entry
        assert st["rotations"] > 0, st
    srv.close()
    cli.close()
