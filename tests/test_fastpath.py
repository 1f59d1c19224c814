"""The lean query path (rendered-answer caches, memoised chain prefixes, the short path for
dynamic names) answers byte for byte what the full path answers, over a large table of
queries: dynamic and static names, A/AAAA/other types, ECS v4/v6/none, EDNS on/off, small
payloads (truncation), malformed EDNS, and inventory states including random shedding."""

from __future__ import annotations

import itertools
import random

import dns.edns
import dns.message
import pytest

from conftest import ROOT

pytestmark = pytest.mark.unit

SUBNETS = [None, ("81.2.69.0", 24), ("133.242.0.0", 24), ("8.8.8.0", 24), ("200.160.0.0", 24),
           ("117.192.0.0", 24), ("1.128.0.0", 24), ("196.25.1.0", 24), ("2a02:8010::", 56),
           ("2400:4050::", 56), ("81.2.69.0", 16), ("0.0.0.0", 0), ("80.128.0.0", 20)]
NAMES = ["wss-primary.example.com.", "WSS-Backup.Example.com.", "api.example.com.", "edgeapi.example.com.",
         "files.example.com.", "img.example.com.", "www.example.com.", "example.com.", "nope.example.com.",
         "x.static.example.com.", "host.corp.example.com.", "example.org."]
TYPES = ["A", "AAAA", "TXT", "ANY", "SOA"]
EDNS = [(False, 512), (0, 512), (0, 1232), (0, 4096)]
SOURCES = [("127.0.0.1", 5300), ("81.2.69.7", 5300), ("2400:4050::1", 5300, 0, 0)]


def queries():
    for name, t, sub, (edns, payload), src in itertools.product(NAMES, TYPES, SUBNETS, EDNS, SOURCES):
        if sub is not None and edns is False:
            continue
        opts = [dns.edns.ECSOption(sub[0], sub[1])] if sub else []
        q = dns.message.make_query(name, t, use_edns=edns, payload=payload, options=opts)
        q.id = 4242
        yield q.to_wire(), src


def feeds(inv):
    inv.feed("eu-west-2", "wss", {"connections": 7000})  # between watermarks: random shedding


def drain(inv):
    inv.drain("eu-west-2", None, "t", "operator:test")


def all_down(inv):
    for r in ("us-east-1", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1", "eu-west-2",
              "eu-central-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1"):
        inv.drain(r, None, "t", "operator:test")


@pytest.mark.parametrize("setup", [None, feeds, drain, all_down], ids=["plain", "shedding", "drained", "all-down"])
def test_lean_path_equals_full_path(setup, monkeypatch):
    from filterdns.routing.chain import DynamicRecord
    from filterdns.config.build import build_state
    from filterdns.routing.inventory import Inventory
    from filterdns.dns.responder import Responder
    from filterdns.config.state import StateHolder

    state = build_state(ROOT / "zones", ROOT / "chains")
    inv = Inventory()
    if setup:
        setup(inv)
    table = list(queries())
    assert len(table) > 2000

    # the reference: no answer cache, no short path, every filter run every time
    full = Responder(StateHolder(state), inv, rng=random.Random(7), cache=False)
    with monkeypatch.context() as mp:
        mp.setattr(DynamicRecord, "resolve",
                   lambda self, qtype, client, geo, status, rng, trace=False:
                   self._resolve_full(qtype, client, geo, status, rng, trace))
        expected = [full.respond(w, src, "udp", 0) for w, src in table]
        expected_tcp = [full.respond(w, src, "tcp", 65535) for w, src in table[:500]]

    # a state of its own: the ECS scope walk progresses with each query from a network, so
    # each path must see the same queries from the start
    lean = Responder(StateHolder(build_state(ROOT / "zones", ROOT / "chains")), inv, rng=random.Random(7),
                     cache=True)
    got = [lean.respond(w, src, "udp", 0) for w, src in table]
    got_tcp = [lean.respond(w, src, "tcp", 65535) for w, src in table[:500]]
    mismatches = [i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b]
    assert not mismatches, (len(mismatches), dns.message.from_wire(table[mismatches[0]][0]).question,
                            expected[mismatches[0]], got[mismatches[0]])
    assert expected_tcp == got_tcp
    from filterdns.dns.core import Route

    # the cached route path was really taken
    assert any(v.__class__ is Route for v in lean.plans.new.values()) and len(lean.bodies)
