"""Chains end to end (no sockets): the bundled edge, fallback, ECS scope, precedence, explain."""

from __future__ import annotations

import collections
import random
import socket
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from filterdns.routing.chain import Candidate, merge_meta
from filterdns.config.chains import load_chains
from filterdns.ops.explain import client_from, explain
from filterdns.routing.geo import COUNTRY_DB, GeoDB
from filterdns.routing.inventory import Inventory, Region, Status
from filterdns.model import AAAA, A, Client

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent

GB24 = Client("81.2.69.0", 4, 24, True)
JP24 = Client("133.1.1.0", 4, 24, True)
US24 = Client("8.8.8.0", 4, 24, True)
PRIVATE = Client("10.1.2.3", 4, 32, False)


@pytest.fixture(scope="module")
def chains():
    return load_chains(ROOT / "chains", ["example.com."])


@pytest.fixture(scope="module")
def geo():
    # the country file: these expectations are its networks and centroids
    return GeoDB.open(str(COUNTRY_DB))


def addrs(chains, region, service, qtype=A):
    s = chains.regions[region].services[service]
    return tuple(socket.inet_pton(socket.AF_INET if qtype == A else socket.AF_INET6, a)
                 for a in (s.v4 if qtype == A else s.v6))


def resolve(chains, geo, name, client, status=None, qtype=A, seed=1, trace=False):
    rec = chains.records[f"{name}.example.com."]
    return rec.resolve(qtype, client, geo, status or Status(), random.Random(seed), trace)


class _State:
    def __init__(self, chains, geo):
        self.records, self.regions, self.geo = chains.records, chains.regions, geo


@pytest.mark.parametrize("name,client,qtype,region", [
    ("wss-primary", GB24, A, "eu-west-2"),
    ("wss-primary", GB24, AAAA, "eu-west-2"),
    ("wss-primary", JP24, A, "ap-northeast-1"),
    ("wss-primary", JP24, AAAA, "ap-northeast-1"),
    ("wss-primary", US24, A, "us-east-1"),
    ("wss-primary", Client("200.160.0.0", 4, 24, True), A, "sa-east-1"),
    ("wss-primary", Client("1.1.1.0", 4, 24, True), A, "ap-southeast-2"),
    ("wss-primary", Client("2a00:1450:4009::", 6, 56, True), AAAA, "eu-west-2"),
    ("wss-primary", PRIVATE, A, "us-east-1"),  # unknown location: the default region
    ("api", GB24, A, "eu-west-2"),
    ("api", Client("4.207.1.0", 4, 24, True), A, "eu-west-1"),  # IE
    ("edgeapi", JP24, AAAA, "ap-northeast-1"),
    ("files", Client("200.160.0.0", 4, 24, True), A, "sa-east-1"),
    ("img", PRIVATE, A, "us-east-1"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bundled_routing(chains, geo, name, client, qtype, region):
    res = resolve(chains, geo, name, client, qtype=qtype)
    assert res.regions == (region,)
    service = chains.records[f"{name}.example.com."].service
    assert res.addresses == addrs(chains, region, service, qtype)


def test_wss_backup_spreads_over_three_closest(chains, geo):
    rec = chains.records["wss-backup.example.com."]
    rng = random.Random(42)
    st = Status()
    counts = collections.Counter(rec.resolve(A, GB24, geo, st, rng).regions[0] for _ in range(3000))
    assert set(counts) == {"eu-west-2", "eu-west-1", "eu-central-1"}
    for n in counts.values():
        assert 0.20 * 3000 <= n <= 0.47 * 3000, counts


def test_drained_region_is_skipped(chains, geo):
    inv = Inventory()
    inv.drain("eu-west-2", None, "maintenance", "operator:test")
    res = resolve(chains, geo, "wss-primary", GB24, inv.status)
    assert res.regions == ("eu-west-1",)
    # an operator drain is hard: the region is no candidate, so no filter had to remove it
    assert "eu-west-2" not in [a.name for a in chains.records["wss-primary.example.com."].answers(inv.status)]
    assert res.removed == (("select_first_n", 9),)


def test_health_drained_service_is_skipped(chains, geo):
    inv = Inventory()
    inv.drain("eu-west-2", "wss", "health check failing", "health", cause="health")
    assert resolve(chains, geo, "wss-primary", GB24, inv.status).regions == ("eu-west-1",)
    # another service of the region is unaffected
    assert resolve(chains, geo, "api", GB24, inv.status).regions == ("eu-west-2",)


def test_failing_health_without_a_drain_stays_in_dns(chains, geo):
    # the verdict alone takes nothing out: the drain automation does, when the safety rule allows
    inv = Inventory()
    inv.set_health("eu-west-2", "wss", False)
    assert resolve(chains, geo, "wss-primary", GB24, inv.status).regions == ("eu-west-2",)
    st = {s.region: s for s in chains.records["wss-primary.example.com."].states(inv.status)}
    assert st["eu-west-2"].reason == "held" and st["eu-west-2"].serving


def test_over_high_watermark_is_shed(chains, geo):
    inv = Inventory()
    inv.feed("eu-west-2", "wss", {"connections": 9000})
    res = resolve(chains, geo, "wss-primary", GB24, inv.status)
    assert res.regions == ("eu-west-1",) and ("shed_load", 1) in res.removed


def test_all_down_fails_open(chains, geo):
    # `up` is fail-open (NS1): with every region down the rest of the chain still routes
    inv = Inventory()
    for r in chains.regions:
        inv.feed(r, None, {"up": False})
    res = resolve(chains, geo, "wss-primary", GB24, inv.status)
    assert res.regions == ("eu-west-2",) and not res.fallback
    assert "up" not in dict(res.removed)
    # wss-backup: every region is still a candidate, so the nearest three are used
    assert resolve(chains, geo, "wss-backup", GB24, inv.status).regions[0] in {"eu-west-2", "eu-west-1", "eu-central-1"}


def test_all_operator_drained_is_nodata(chains, geo):
    # operator drains are hard: neither fail-open nor the fallback brings a region back
    inv = Inventory()
    for r in chains.regions:
        inv.drain(r, None, "test", "operator:test")
    res = resolve(chains, geo, "wss-primary", GB24, inv.status)
    assert res.regions == () and res.addresses == () and not res.fallback


def test_all_shed_falls_back_to_everything(chains, geo):
    inv = Inventory()
    for r in chains.regions:
        inv.feed(r, "wss", {"connections": 9000})
    res = resolve(chains, geo, "wss-primary", GB24, inv.status, trace=True)
    assert res.fallback
    assert res.regions == tuple(chains.regions)  # the answers as they were before the chain
    assert len(res.addresses) == sum(len(r.services["wss"].v4) for r in chains.regions.values())
    assert res.removed == (("shed_load", 11),)
    assert res.trace[-1].filter == "fallback"


def _one_region_chain(tmp_path, fallback, default="r2"):
    (tmp_path / "a.yaml").write_text(f"""
default_region: {default}
regions:
  r1: {{country: GB, meta: {{up: true}}, services: {{web: {{v4: [192.0.2.1], v6: ["2001:db8::1"]}}}}}}
  r2: {{country: US, meta: {{up: true}}, services: {{web: {{v4: [192.0.2.2, 192.0.2.3]}}}}}}
records:
  w.example.com:
    service: web
    fallback: {fallback}
    chain: [up, {{netfence_prefix: {{remove_no_ip_prefixes: true}}}}, geotarget_country]
    meta: {{ip_prefixes: [203.0.113.0/24]}}
""")
    return load_chains(tmp_path, ["example.com."])


@pytest.mark.parametrize("fallback,regions", [
    ("all", ("r1", "r2")), ("default_region", ("r2",)), ("none", ()),
])
def test_fallback_options(tmp_path, geo, fallback, regions):
    ch = _one_region_chain(tmp_path, fallback)
    rec = ch.records["w.example.com."]
    res = rec.resolve(A, GB24, geo, Status(), random.Random(1))
    assert res.regions == regions and res.fallback
    assert len(res.addresses) == sum({"r1": 1, "r2": 2}[r] for r in regions)


def test_aaaa_candidates_are_the_regions_with_v6(tmp_path, geo):
    # r2 (the default region) has no IPv6 endpoint: it is no AAAA candidate, so the fallback
    # answers r1's AAAA instead of NODATA; A still gets the default region
    ch = _one_region_chain(tmp_path, "default_region")
    rec = ch.records["w.example.com."]
    for resolve in (rec.resolve, lambda *a: rec._resolve_full(*a, False)):
        res = resolve(AAAA, GB24, geo, Status(), random.Random(1))
        assert res.regions == ("r1",) and len(res.addresses) == 1, res
        res = resolve(A, GB24, geo, Status(), random.Random(1))
        assert res.regions == ("r2",) and len(res.addresses) == 2, res


def test_aaaa_nodata_only_when_no_region_has_v6(tmp_path, geo):
    (tmp_path / "a.yaml").write_text("""
regions:
  r1: {country: GB, meta: {up: true}, services: {web: {v4: [192.0.2.1]}}}
  r2: {country: US, meta: {up: true}, services: {web: {v4: [192.0.2.2]}}}
records:
  w.example.com: {service: web, chain: [up, geotarget_country, select_first_n]}
""")
    rec = load_chains(tmp_path, ["example.com."]).records["w.example.com."]
    res = rec.resolve(AAAA, GB24, geo, Status(), random.Random(1))
    assert res.regions == () and res.addresses == ()


# -- ECS scope --------------------------------------------------------------------------------

def _scope_chain(tmp_path, chain):
    (tmp_path / "a.yaml").write_text(f"""
default_region: r1
regions:
  r1: {{country: GB, meta: {{up: true}}, services: {{web: {{v4: [192.0.2.1]}}}}}}
  r2: {{country: JP, meta: {{up: true}}, services: {{web: {{v4: [192.0.2.2]}}}}}}
records:
  w.example.com: {{service: web, chain: {chain}}}
""")
    ch = load_chains(tmp_path, ["example.com."])
    return ch, ch.records["w.example.com."]


@pytest.mark.parametrize("chain,client,scope", [
    ("[up, select_first_n]", GB24, 0),                                   # nothing reads the client
    ("[up, {geotarget_country: {disabled: true}}]", GB24, 0),             # disabled does not count
    ("[geotarget_country]", GB24, 18),                                   # db network 81.2.64.0/18
    ("[geotarget_country]", Client("81.2.0.0", 4, 16, True), 16),        # capped at source prefix
    ("[geotarget_country]", Client("81.2.69.7", 4, 32, False), 18),
    ("[latency]", JP24, 8),                                              # 133.0.0.0/9 + /9: both JP
    ("[geotarget_country, sticky]", GB24, 24),                           # sticky: min(source, /24)
    ("[geotarget_country, {sticky: {prefix_v4: 20}}]", GB24, 20),
    ("[geotarget_country, {sticky: {prefix_v4: 16}}]", GB24, 18),        # db network wider need
    ("[netfence_prefix]", Client("81.2.69.128", 4, 25, True), 25),       # the whole source prefix
    ("[geotarget_country]", Client("2a00:1450:4009::", 6, 56, True), 44),  # GB around the /48
    ("[geotarget_country]", Client("2a00:1450:4009::", 6, 40, True), 40),
], ids=["no-reader", "disabled", "geo", "geo-capped", "geo-no-ecs", "latency", "sticky", "sticky-20",
        "sticky-16", "netfence", "v6", "v6-capped"])
def test_ecs_scope(tmp_path, geo, chain, client, scope):
    ch, rec = _scope_chain(tmp_path, chain)
    st = Status()
    # the walk that widens the scope is spread over the first queries from a network
    scopes = [rec.resolve(A, client, geo, st, random.Random(1)).scope for _ in range(40)]
    assert scopes[-1] == scope and scopes == sorted(scopes, reverse=True), scopes


# -- metadata precedence ----------------------------------------------------------------------

def test_metadata_precedence():
    region = Region("r", country="GB", meta=MappingProxyType({"weight": 2, "priority": 2, "note": "region"}))
    cand = Candidate(region, (), (), MappingProxyType({"weight": 3}))
    record = MappingProxyType({"weight": 1, "priority": 1, "low_watermark": 5, "note": "record"})
    m = merge_meta(record, cand, Status(), "web")
    assert (m["weight"], m["priority"], m["low_watermark"], m["note"]) == (3, 2, 5, "region")
    inv = Inventory()
    inv.feed("r", None, {"priority": 7, "weight": 9})      # runtime region level
    inv.feed("r", "web", {"connections": 10})               # runtime answer level
    inv.drain("r", "web", "x", "health", cause="health")
    m = merge_meta(record, cand, inv.status, "web")
    # answer (service config) still beats the runtime region value; runtime region beats region config
    assert (m["weight"], m["priority"], m["connections"], m["up"]) == (3, 7, 10, False)


def test_answers_cached_per_status(chains):
    rec = chains.records["wss-primary.example.com."]
    st = Status()
    assert rec.answers(st) is rec.answers(st)
    inv = Inventory(st)
    inv.drain("eu-west-2", None, "x", "operator:t")
    assert rec.answers(inv.status) is not rec.answers(st)


# -- explain ----------------------------------------------------------------------------------

def test_explain_text(chains, geo):
    inv = Inventory()
    inv.drain("eu-west-1", None, "maintenance", "operator:t")
    inv.feed("ap-south-1", "wss", {"connections": 9000})
    text = explain(_State(chains, geo), "wss-primary.example.com", "A", client_from(subnet="81.2.69.0/24"),
                   inv.status)
    for part in ("client: ECS subnet 81.2.69.0/24", "location: GB (continent EU), 54.00, -2.50",
                 "matched network 81.2.64.0/18 (prefix 18)", "1. up: no change",
                 "eu-west-1: not serving [operator_drain] drained by operator:t: maintenance (the whole region)",
                 "ap-south-1 shed: connections 9000 above high watermark 8000",
                 "3. geotarget_country: reordered", "eu-west-2 (319 km, same country)",
                 "answer (A, ttl 20): eu-west-2", "192.0.2.161", "ECS scope: /18"):
        assert part in text, (part, text)


def test_explain_unknown_client_and_fallback(chains, geo):
    inv = Inventory()
    for r in chains.regions:
        inv.feed(r, "wss", {"connections": 9000})
    text = explain(_State(chains, geo), "wss-primary", "AAAA", client_from("10.1.2.3"), inv.status)
    assert "location: unknown" in text and "default region us-east-1" in text
    assert "fallback 'all' applied" in text and "2001:db8:e101::1" in text


def test_explain_unknown_name(chains, geo):
    with pytest.raises(KeyError):
        explain(_State(chains, geo), "nope.example.com", "A", client_from("10.1.2.3"))


@pytest.mark.parametrize("ip,subnet,expected", [
    ("192.0.2.1", None, Client("192.0.2.1", 4, 32, False)),
    ("::ffff:192.0.2.1", None, Client("192.0.2.1", 4, 32, False)),
    (None, "81.2.69.77/24", Client("81.2.69.0", 4, 24, True)),
    (None, "2001:db8::/48", Client("2001:db8::", 6, 48, True)),
])
def test_client_from(ip, subnet, expected):
    assert client_from(ip, subnet) == expected


# -- cost ------------------------------------------------------------------------------------

def test_resolve_cost(chains, geo, monkeypatch):
    """A repeated query is a lookup: no filter runs and no geo database read (counted, so the
    test does not depend on the machine's load), and it takes about a microsecond (the bound,
    on the best of several rounds, leaves room for a loaded machine)."""
    rec = chains.records["wss-primary.example.com."]
    st, rng = Status(), random.Random(1)
    first = rec.resolve(A, GB24, geo, st, rng)
    calls = collections.Counter()
    for step in rec.steps:
        cls = type(step.filter)
        monkeypatch.setattr(cls, "apply", lambda self, a, ctx, _f=cls.apply: calls.update([self.name]) or _f(self, a, ctx))
    monkeypatch.setattr(GeoDB, "lookup", lambda self, a, _f=GeoDB.lookup: calls.update(["lookup"]) or _f(self, a))
    assert rec.resolve(A, GB24, geo, st, rng) is first
    assert not calls, calls
    monkeypatch.undo()
    n = 5000
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            rec.resolve(A, GB24, geo, st, rng)
        best = min(best, (time.perf_counter() - t) / n)
    assert best < 20e-6, f"{best * 1e6:.1f} us per resolve"
