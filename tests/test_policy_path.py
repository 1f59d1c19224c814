"""One policy path: the responder's caches hold what core.plan / core.route return, so a cached
answer is the uncached one (core.decide + wire.render_decision) byte for byte, over thousands
of distinct client subnets; the routing rules every path shares (ECS /0 -> scope 0, AAAA
candidates, location-independent answers -> scope 0); and bounded caches under a flood."""

from __future__ import annotations

import ipaddress
import random

import dns.edns
import dns.message
import maxminddb
import pytest

from conftest import ROOT

pytestmark = pytest.mark.unit

REGIONS = ("us-east-1", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1", "eu-west-2",
           "eu-central-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1")


def _state():
    from filterdns.config.build import build_state

    return build_state(ROOT / "zones", ROOT / "chains")


def _responder(state, inv, cache=True, seed=7):
    from filterdns.config.state import StateHolder
    from filterdns.dns.responder import Responder

    return Responder(StateHolder(state), inv, rng=random.Random(seed), cache=cache)


def subnets(n: int, seed: int, family: int = 4, countries=None) -> list[tuple[str, int]]:
    """``n`` distinct client subnets the geo database maps (IPv4 /24 or IPv6 /56), with a few
    other source prefixes mixed in."""
    from filterdns.routing.geo import DEFAULT_DB

    reader = maxminddb.open_database(str(DEFAULT_DB))
    rng = random.Random(seed)
    out: list[tuple[str, int]] = []
    seen = set()
    while len(out) < n:
        if family == 4:
            a = rng.getrandbits(24) << 8
            ip = str(ipaddress.IPv4Address(a))
            plen = rng.choice((24, 24, 24, 20, 32, 16))
        else:
            a = (0x2 << 124) | (rng.getrandbits(53) << 72)  # 2000::/3, /56 aligned
            ip = str(ipaddress.IPv6Address(a))
            plen = rng.choice((56, 56, 48, 64))
        if a in seen:
            continue
        seen.add(a)
        rec = reader.get(ip)
        if not rec or (countries and rec.get("country_code") not in countries):
            continue
        net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
        out.append((str(net.network_address), plen))
    reader.close()
    return out


def shed_some(inv):
    inv.feed("eu-west-2", "wss", {"connections": 7000})  # between the watermarks: random
    inv.feed("us-east-1", "wss", {"connections": 9000})  # above: always shed


def shed_all(inv):
    for r in REGIONS:
        inv.feed(r, "wss", {"connections": 9000})


def drain_some(inv):
    inv.drain("eu-west-2", None, "t", "operator:test")
    inv.drain("ap-southeast-2", None, "t", "operator:test")


NAMES = ["wss-primary.example.com.", "WSS-backup.example.com.", "api.example.com.",
         "edgeapi.example.com.", "www.example.com.", "nope.example.com."]


def table(seed: int):
    rng = random.Random(seed)
    clients = subnets(1500, seed) + subnets(300, seed, family=6) + [("0.0.0.0", 0), ("::", 0)]
    out = []
    for addr, plen in clients:
        name = rng.choice(NAMES)
        qtype = rng.choice(("A", "AAAA"))
        q = dns.message.make_query(name, qtype, use_edns=0, options=[dns.edns.ECSOption(addr, plen)])
        q.id = rng.getrandbits(16)
        out.append((q.to_wire(), ("192.0.2.9" if rng.random() < 0.5 else "2001:db8::9", 53)))
    for i in range(200):  # no ECS: routed on the resolver's address
        q = dns.message.make_query(rng.choice(NAMES), rng.choice(("A", "AAAA")),
                                   use_edns=rng.choice((False, 0)))
        out.append((q.to_wire(), (f"81.2.{i}.7", 53) if i % 2 else (f"2400:4050:{i:x}::1", 53)))
    return out


@pytest.mark.parametrize("setup", [None, shed_some, shed_all, drain_some],
                         ids=["plain", "shedding", "all-shed", "drained"])
def test_cached_answers_equal_the_one_path_over_many_clients(setup, monkeypatch):
    from filterdns.routing.chain import DynamicRecord
    from filterdns.routing.inventory import Inventory

    state = _state()
    inv = Inventory()
    if setup:
        setup(inv)
    rows = table(11)
    # twice through: the second pass answers from the caches (plans, bodies, chain memos)
    rows = rows + rows
    cached = _responder(state, inv, cache=True)
    got = [cached.respond(w, src, "udp", 0) for w, src in rows]
    got_tcp = [cached.respond(w, src, "tcp", 65535) for w, src in rows[:600]]
    # a state of its own: the ECS scope walk progresses with each query from a network (a
    # bounded part per query), so each path must see the same queries from the start
    full = _responder(_state(), inv, cache=False)
    with monkeypatch.context() as mp:  # and every filter run every time
        mp.setattr(DynamicRecord, "resolve",
                   lambda self, qtype, client, geo, status, rng, trace=False:
                   self._resolve_full(qtype, client, geo, status, rng, trace))
        expected = [full.respond(w, src, "udp", 0) for w, src in rows]
        expected_tcp = [full.respond(w, src, "tcp", 65535) for w, src in rows[:600]]
    bad = [i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b]
    assert not bad, (len(bad), dns.message.from_wire(rows[bad[0]][0]), dns.message.from_wire(expected[bad[0]]),
                     dns.message.from_wire(got[bad[0]]))
    assert expected_tcp == got_tcp
    assert cached.errors == 0 and full.errors == 0
    answered = [dns.message.from_wire(m) for m in got]
    assert sum(1 for r in answered if r.answer) > len(rows) // 2  # the table routes, not just refuses


def _ecs_scope(raw: bytes):
    r = dns.message.from_wire(raw)
    opts = [o for o in r.options if isinstance(o, dns.edns.ECSOption)]
    return r, opts[0]


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("address", ["0.0.0.0", "::"], ids=["v4-option", "v6-option"])
def test_ecs_source_zero_gets_scope_zero(cache, transport, address):
    from filterdns.routing.inventory import Inventory

    r = _responder(_state(), Inventory(), cache=cache)
    for name in ("wss-primary.example.com.", "wss-backup.example.com.", "api.example.com.",
                 "www.example.com."):
        for qtype in ("A", "AAAA"):
            for src in (("81.2.69.7", 53), ("2400:4050::1", 53)):
                q = dns.message.make_query(name, qtype, use_edns=0, options=[dns.edns.ECSOption(address, 0)])
                for _ in range(2):  # the second one from the caches
                    raw = r.respond(q.to_wire(), src, transport, 65535 if transport == "tcp" else 0)
                    resp, opt = _ecs_scope(raw)
                    assert resp.rcode() == 0 and resp.answer, (name, qtype, resp)
                    assert (opt.srclen, opt.scopelen) == (0, 0), (name, qtype, src, opt)
                    assert opt.family == (1 if address == "0.0.0.0" else 2)


def test_aaaa_candidates_are_regions_with_v6_so_au_backup_is_never_nodata(tmp_path):
    import shutil

    from filterdns.config.build import build_state
    from filterdns.routing.inventory import Inventory

    # the operator's Sydney load balancer has no IPv6 endpoint (NS1 keeps A and AAAA apart)
    shutil.copytree(ROOT / "chains", tmp_path / "chains")
    regions = tmp_path / "chains" / "regions.yaml"
    text = regions.read_text()
    v6 = "        v6: [2001:db8:e10a::1, 2001:db8:e10a::2]\n"
    assert text.count(v6) == 1
    regions.write_text(text.replace(v6, ""))
    r = _responder(build_state(ROOT / "zones", tmp_path / "chains"), Inventory())
    nodata = 0
    clients = subnets(400, 5, countries=("AU",)) + subnets(100, 5, family=6, countries=("AU",))
    for addr, plen in clients:
        q = dns.message.make_query("wss-backup.example.com.", "AAAA", use_edns=0,
                                   options=[dns.edns.ECSOption(addr, plen)])
        resp = dns.message.from_wire(r.respond(q.to_wire(), ("192.0.2.9", 53), "udp", 0))
        assert resp.rcode() == 0
        nodata += not resp.answer
    assert nodata == 0, f"{nodata} of {len(clients)} AU wss-backup AAAA queries got NODATA"
    # and A still goes to Sydney for some of them
    q = dns.message.make_query("wss-backup.example.com.", "A", use_edns=0,
                               options=[dns.edns.ECSOption(clients[0][0], clients[0][1])])
    seen = set()
    for _ in range(60):
        resp = dns.message.from_wire(r.respond(q.to_wire(), ("192.0.2.9", 53), "udp", 0))
        seen |= {rr.address for rr in resp.answer[0]}
    assert seen & {"192.0.2.201", "192.0.2.202"}


def test_answer_that_does_not_depend_on_location_has_scope_zero():
    from filterdns.routing.inventory import Inventory

    inv = Inventory()
    shed_all(inv)  # every region above its high watermark: the fallback returns every region
    state = _state()
    for cache in (True, False):
        r = _responder(state, inv, cache=cache)
        for addr, plen in subnets(50, 3) + subnets(20, 3, family=6):
            q = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0,
                                       options=[dns.edns.ECSOption(addr, plen)])
            resp, opt = _ecs_scope(r.respond(q.to_wire(), ("192.0.2.9", 53), "udp", 0))
            assert len(resp.answer[0]) == sum(
                len(reg.services["wss"].v4) for reg in state.regions.values() if "wss" in reg.services)
            assert opt.scopelen == 0, (addr, plen, opt)
    # one region under its watermarks again: the answer depends on the location once more
    inv.feed("eu-west-2", "wss", {"connections": 10})
    r = _responder(state, inv)
    q = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0,
                               options=[dns.edns.ECSOption("81.2.69.0", 24)])
    _, opt = _ecs_scope(r.respond(q.to_wire(), ("192.0.2.9", 53), "udp", 0))
    assert opt.scopelen > 0


def test_a_flood_of_random_names_keeps_the_hot_names_cached_and_the_cache_bounded(monkeypatch):
    import filterdns.dns.responder as mod
    from filterdns.cache import Cache
    from filterdns.routing.inventory import Inventory

    r = _responder(_state(), Inventory())
    r.respond(dns.message.make_query("example.com.", "SOA").to_wire(), ("192.0.2.9", 53), "udp", 0)
    r.plans = Cache(2000)  # small, so the flood cycles it many times
    planned = []
    real_plan = mod.plan
    monkeypatch.setattr(mod, "plan", lambda q, state: planned.append(q.qname_lower) or real_plan(q, state))
    hot = [dns.message.make_query(n, t).to_wire() for n, t in
           [("example.com.", "SOA"), ("www.example.com.", "A"), ("example.com.", "NS"),
            ("wss-primary.example.com.", "A")]]
    for h in hot:
        r.respond(h, ("192.0.2.9", 53), "udp", 0)
    rng = random.Random(1)
    src = ("192.0.2.9", 53)
    peak = 0
    for i in range(60_000):
        name = "".join(rng.choice("abcdefghij") for _ in range(12)) + ".example.com."
        r.respond(dns.message.make_query(name, "A").to_wire(), src, "udp", 0)
        if i % 500 == 0:
            for h in hot:
                r.respond(h, src, "udp", 0)
        peak = max(peak, len(r.plans))
    assert len(planned) == 4 + 60_000  # each hot name planned once, before the flood; every random once
    assert peak <= 3 * 2000
    assert r.errors == 0
