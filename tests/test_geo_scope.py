"""ECS scope = the widest aligned prefix around the client whose every address gets the same
deterministic decision, per record and region state; never wider than true.

A synthetic City database (made here with the writer library) lays out west-coast, east-coast
and unknown networks; each widened scope is checked against brute force: every database
network inside the scope block gets the same answer, and the block one bit wider does not (or
the walk's budget ended)."""

from __future__ import annotations

import ipaddress
import random

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from filterdns.config.chains import load_chains
from filterdns.model import A, Client
from filterdns.routing.geo import GeoDB
from filterdns.routing.inventory import Drain, Status

pytestmark = pytest.mark.unit

WEST = [{"country_code": "US", "continent_code": "NA", "subdivision_code": "CA", "latitude": 38.5 + i / 2,
         "longitude": -121.5} for i in range(4)]
EAST = [{"country_code": "US", "continent_code": "NA", "subdivision_code": "NY", "latitude": 40.5,
         "longitude": -74.0 - i / 2} for i in range(4)]
GB = {"country_code": "GB", "continent_code": "EU", "subdivision_code": "ENG", "latitude": 51.5, "longitude": 0.0}


def layout():
    """11.0.0.0/16: 11.0.0.0/17 west (four different records), 11.0.128.0/18 east,
    11.0.192.0/19 east but 11.0.200.0/24 missing (unknown), 11.0.224.0/19 GB.
    2001:db8::/40 west in /48s; 2001:db8:100::/40 east."""
    nets = []
    for i in range(128):
        nets.append((f"11.0.{i}.0/24", WEST[i % 4]))
    for i in range(128, 192):
        nets.append((f"11.0.{i}.0/24", EAST[i % 4]))
    for i in range(192, 224):
        if i != 200:
            nets.append((f"11.0.{i}.0/24", EAST[0]))
    for i in range(224, 256):
        nets.append((f"11.0.{i}.0/24", GB))
    for j in range(256):
        nets.append((f"2001:db8:{j:x}::/48", WEST[j % 4]))
        nets.append((f"2001:db8:1{j:02x}::/48", EAST[j % 4]))
    return nets


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="test-City")
    for net, rec in layout():
        w.insert_network(IPSet([net]), rec)
    w.to_db_file(str(path))
    return GeoDB.open(str(path))


def record(tmp_path, chain="[up, geotarget_country, select_first_n]"):
    (tmp_path / "a.yaml").write_text(f"""
default_region: us-east-1
regions:
  us-east-1: {{country: US, subdivision: VA, lat: 38.95, lon: -77.45, meta: {{up: true}},
              services: {{web: {{v4: [192.0.2.1], v6: ["2001:db8:e::1"]}}}}}}
  us-west-2: {{country: US, subdivision: OR, lat: 45.84, lon: -119.7, meta: {{up: true}},
              services: {{web: {{v4: [192.0.2.2], v6: ["2001:db8:e::2"]}}}}}}
  eu-west-2: {{country: GB, subdivision: ENG, lat: 51.51, lon: -0.13, meta: {{up: true}},
              services: {{web: {{v4: [192.0.2.3], v6: ["2001:db8:e::3"]}}}}}}
records:
  w.example.com: {{service: web, chain: {chain}}}
""")
    return load_chains(tmp_path, ["example.com."]).records["w.example.com."]


def c(subnet):
    n = ipaddress.ip_network(subnet)
    return Client(str(n.network_address), n.version, n.prefixlen, True)


def settled_scope(rec, cl, geo, status, qtype=A):
    """The scope once the walk around the client's network has finished: each query pays a
    bounded part of it (chain.WALK_LOOKS, WALK_RUNS) and the next ones from that network
    resume it, so the scope only widens, query after query, up to the widest."""
    scopes = [rec.resolve(qtype, cl, geo, status, random.Random(1)).scope for _ in range(40)]
    assert scopes == sorted(scopes, reverse=True), scopes  # never narrower again
    return scopes[-1]


def regions_of(rec, geo, status, subnet):
    return rec.resolve(A, c(subnet), geo, status, random.Random(1)).regions


UP = Status()
WEST_DOWN = Status(generation=1, drains={("us-west-2", None): Drain("us-west-2", None, "t", "operator:t",
                                                                     "operator", 0.0)})

EU_DOWN = Status(generation=2, drains={("eu-west-2", None): Drain("eu-west-2", None, "t", "operator:t",
                                                                   "operator", 0.0)})


@pytest.mark.parametrize("subnet,status,scope", [
    ("11.0.5.0/24", UP, 17),        # four west records, one decision: the whole /17
    ("11.0.130.0/24", UP, 18),      # east /18; its sibling /18 holds the unknown /24
    ("11.0.201.0/24", UP, 19),      # the unknown 11.0.200.0/24 goes to the default region, east too
    ("11.0.230.0/24", UP, 19),      # GB
    ("11.0.5.0/24", WEST_DOWN, 17),  # west and east both get us-east-1, but GB is in the sibling /17
    ("11.0.130.0/24", EU_DOWN, 17),  # GB gets us-east-1 too: the east /17 is one decision
    ("11.0.230.0/24", EU_DOWN, 17),
    ("2001:db8:5::/48", UP, 40),
    ("2001:db8:105::/56", UP, 40),
    ("11.0.5.128/25", UP, 17),      # source longer than the network: still the /17 (capped by source)
    ("11.0.0.0/12", UP, 12),        # never above the source prefix
], ids=["west", "east", "east-gap", "gb", "west-drained", "eu-drained-east", "eu-drained-gb", "v6-west", "v6-east", "source-25", "capped"])
def test_widest_scope(tmp_path, geo, subnet, status, scope):
    rec = record(tmp_path)
    assert settled_scope(rec, c(subnet), geo, status) == scope


def test_gap_with_the_same_default_is_uniform(tmp_path, geo):
    # the unknown /24 is answered as if at the default region (us-east-1), like the east networks
    rec = record(tmp_path)
    assert regions_of(rec, geo, UP, "11.0.200.0/24") == regions_of(rec, geo, UP, "11.0.201.0/24") == ("us-east-1",)


def representatives(geo, block):
    """One address of every database network that overlaps ``block`` (the database's own
    iteration, not the walk under test), plus one address of the first gap, if any (a gap
    is the unknown location)."""
    nets = sorted((n for n, _ in geo_networks(geo) if n.version == block.version and n.overlaps(block)),
                  key=lambda n: int(n.network_address))
    out, cursor = [], int(block.network_address)
    gap = None
    for n in nets:
        lo = max(int(n.network_address), int(block.network_address))
        if gap is None and lo > cursor:
            gap = cursor
        out.append(lo)
        cursor = max(cursor, int(n.broadcast_address) + 1)
    if gap is None and cursor <= int(block.broadcast_address):
        gap = cursor
    if gap is not None:
        out.append(gap)
    host = 32 if block.version == 4 else 128
    return [f"{ipaddress.ip_address(a)}/{host}" for a in out]


_NETWORKS: dict = {}


def geo_networks(geo):
    if geo.path not in _NETWORKS:
        import maxminddb

        with maxminddb.open_database(geo.path, maxminddb.MODE_MEMORY) as r:
            _NETWORKS[geo.path] = list(r)
    return _NETWORKS[geo.path]


def brute_force_uniform(rec, geo, status, block, answer=None):
    """Every database network and gap inside ``block`` gets one answer."""
    answer = answer or regions_of
    seen = {answer(rec, geo, status, sub) for sub in representatives(geo, block)}
    return len(seen) == 1


@pytest.mark.parametrize("status", [UP, WEST_DOWN, EU_DOWN], ids=["up", "west-drained", "eu-drained"])
@pytest.mark.parametrize("chain", ["[up, geotarget_country, select_first_n]",
                                   "[up, geotarget_regional, select_first_n: {n: 2}, shuffle]",
                                   "[up, geotarget_latlong]"], ids=["country", "regional-random", "latlong"])
def test_scope_is_the_widest_true_prefix(tmp_path, geo, status, chain):
    rec = record(tmp_path, chain)
    for subnet in ["11.0.5.0/24", "11.0.77.0/24", "11.0.150.0/24", "11.0.199.0/24", "11.0.240.0/24",
                   "2001:db8:7::/48", "2001:db8:1ff::/48"]:
        cl = c(subnet)
        scope = settled_scope(rec, cl, geo, status)
        block = ipaddress.ip_network(f"{cl.address}/{scope}", strict=False)
        if "shuffle" in chain:  # the answer is random; the decision is the set before shuffle
            def regions_of_set(r, g, s, sn):
                return frozenset(r.resolve(A, c(sn), g, s, random.Random(1)).regions)
            assert brute_force_uniform(rec, geo, status, block, regions_of_set), (subnet, scope)
            continue
        assert brute_force_uniform(rec, geo, status, block), (subnet, scope)
        if scope > 0 and block.version == 4 and scope > 16:
            assert not brute_force_uniform(rec, geo, status, block.supernet()), (subnet, scope, "not widest")


def test_sticky_is_not_widened(tmp_path, geo):
    rec = record(tmp_path, "[up, geotarget_country, sticky]")
    assert rec.resolve(A, c("11.0.5.0/24"), geo, UP, random.Random(1)).scope == 24


def test_second_query_from_the_network_is_a_lookup(tmp_path, geo):
    rec = record(tmp_path)
    cl = c("11.0.5.0/24")
    settled_scope(rec, cl, geo, UP)
    loc = geo.locate(cl)
    assert rec._memo4.nets.get(loc.net) == 17 and loc.net == (4, loc.network, loc.prefix_len)
    # another network of the same uniform block: its walk meets the first one's memo
    other = c("11.0.99.0/24")
    assert rec.resolve(A, other, geo, UP, random.Random(1)).scope == 17


def test_no_query_pays_for_the_whole_walk(tmp_path, geo, monkeypatch):
    """The first query from a network visits at most WALK_LOOKS search-tree nodes and runs the
    chain for at most WALK_RUNS new locations (plus its own); every scope answered on the way
    is a uniform block (a correct scope, only narrower), and the walk settles on the widest."""
    from filterdns.routing import chain as chain_mod

    rec = record(tmp_path)
    runs, reads = [0], [0]
    real_entry, real_children = chain_mod.DynamicRecord._memo_entry, geo._tree.children

    def children(node):
        reads[0] += 1
        return real_children(node)

    monkeypatch.setattr(chain_mod.DynamicRecord, "_memo_entry",
                        lambda self, *a: runs.__setitem__(0, runs[0] + 1) or real_entry(self, *a))
    monkeypatch.setattr(geo._tree, "children", children)
    cl = c("11.0.5.0/24")
    scopes = []
    for _ in range(40):
        runs[0] = reads[0] = 0
        scopes.append(rec.resolve(A, cl, geo, UP, random.Random(1)).scope)
        # node reads: 24 down to the client's /24, at most 24 on the way up, WALK_LOOKS visited
        assert runs[0] <= chain_mod.WALK_RUNS + 1 and reads[0] <= chain_mod.WALK_LOOKS + 48, (runs, reads)
    monkeypatch.undo()
    assert scopes[0] > 17 and scopes[-1] == 17, scopes  # more than one query's budget, settled
    for s in sorted(set(scopes)):
        assert brute_force_uniform(rec, geo, UP, ipaddress.ip_network(f"11.0.5.0/{s}", strict=False)), s


def test_neighbours_share_the_walk(tmp_path, geo, monkeypatch):
    """Walks from networks of one block share what they found (the subtree memo): once one
    network's walk has settled, a neighbour's settles on its first query, with few node reads."""
    rec = record(tmp_path)
    settled_scope(rec, c("11.0.5.0/24"), geo, UP)
    reads = [0]
    real_children = geo._tree.children
    monkeypatch.setattr(geo._tree, "children", lambda n: reads.__setitem__(0, reads[0] + 1) or real_children(n))
    assert rec.resolve(A, c("11.0.99.0/24"), geo, UP, random.Random(1)).scope == 17
    # down to the /24 (24 reads), up to the /17 (8), and a few nodes the first walk had no
    # reason to visit (the writer shares identical subtrees: 11.0.64.0/18 is 11.0.0.0/18's
    # node, so this path crosses nodes whose siblings no walk has checked); its own walk,
    # with nothing memoised, reads 257 over its first queries
    assert reads[0] <= 24 + 8 + 16, reads


def test_whole_empty_space_is_one_block(tmp_path, geo):
    """With us-west-2 drained, west, east and unknown all get us-east-1: the block is as wide as
    the database says (2000::/3 holds nothing else). The first network's walk spends its whole
    budget on the two /40s (so it settles at /40: narrower, never wider); the next network's
    walk starts from what that one verified and reaches /3 at once."""
    rec = record(tmp_path)
    assert settled_scope(rec, c("2001:db8:7::/48"), geo, WEST_DOWN) == 40
    assert rec.resolve(A, c("2001:db8:1ff::/48"), geo, WEST_DOWN, random.Random(1)).scope == 3
    assert brute_force_uniform(rec, geo, WEST_DOWN, ipaddress.ip_network("2000::/3"))
    assert not brute_force_uniform(rec, geo, UP, ipaddress.ip_network("2001:db8::/39"))
