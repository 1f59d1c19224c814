"""The operator page's country map (filterdns.routing.country_routes) says what DNS does.

Each row is a runtime status; for every dynamic record of the bundled config and a real
address of each of ~180 countries (found in the embedded country database), the map's regions are
those ``DynamicRecord.resolve`` (the query path) answers that address with, or, for a chain
that picks at random, the set it picks from.
"""

from __future__ import annotations

import random
from types import MappingProxyType

import pytest

from conftest import ROOT
from filterdns.model import A, Client
from filterdns.routing.country_routes import compute, country_location, country_routes
from filterdns.routing.geo import COUNTRIES, COUNTRY_DB
from filterdns.routing.inventory import Drain, Status

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


def _drains(*keys):
    return MappingProxyType({(r, s): Drain(r, s, "test", "operator:test", "operator", T0) for r, s in keys})


ALL_WSS_BUT_SYDNEY = ("ap-northeast-1", "ap-south-1", "ap-southeast-1", "ca-central-1", "eu-central-1",
                      "eu-west-1", "eu-west-2", "sa-east-1", "us-east-1", "us-west-2")
STATUSES = [
    pytest.param(Status(), id="nothing-drained"),
    pytest.param(Status(1, _drains(("eu-west-2", None))), id="region-drain"),
    pytest.param(Status(2, _drains(("eu-central-1", "wss"), ("us-east-1", "api"))), id="service-drains"),
    pytest.param(Status(3, _drains(*((r, "wss") for r in ALL_WSS_BUT_SYDNEY))), id="all-wss-but-one"),
    pytest.param(Status(4, feeds=MappingProxyType({("ap-south-1", None): MappingProxyType({"up": False})})),
                 id="feed-down"),
    pytest.param(Status(5, _drains(*((r, "img") for r in ALL_WSS_BUT_SYDNEY + ("ap-southeast-2",)))),
                 id="img-all-drained"),
]


@pytest.fixture(scope="module")
def state():
    from filterdns.config.build import build_state

    # the map places each country's clients where the country database does (its centroid); the
    # bundled routing database spreads them over states and provinces, so the map is checked
    # against DNS on the country file, where the two must agree exactly
    return build_state(ROOT / "zones", ROOT / "chains", str(COUNTRY_DB))


@pytest.fixture(scope="module")
def addresses(state):
    """One real IPv4 address per country, found by looking up seeded random addresses."""
    rng = random.Random(1)
    found: dict[str, str] = {}
    for _ in range(40_000):
        ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        loc = state.geo.lookup(ip)
        if loc.country in COUNTRIES and loc.country not in found:
            found[loc.country] = ip
    assert len(found) > 150
    return found


@pytest.mark.parametrize("status", STATUSES)
def test_the_map_is_what_dns_answers(state, addresses, status):
    checked = 0
    for name, rec in state.records.items():
        routes = compute(rec, status)
        assert set(routes) == set(COUNTRIES)
        for cc, ip in addresses.items():
            client = Client(ip, 4, 24, True)
            # the map's location for a country is the one the database gives its clients
            assert state.geo.locate(client).key == country_location(cc).key, cc
            got = routes[cc]
            for seed in range(3 if got["random"] else 1):
                res = rec.resolve(A, client, state.geo, status, random.Random(seed))
                if got["random"]:
                    assert set(res.regions) <= set(got["regions"]), (name, cc, seed)
                else:
                    assert list(res.regions) == got["regions"], (name, cc)
                assert res.fallback == got["fallback"], (name, cc)
            checked += 1
    assert checked > 900


def test_a_drain_moves_countries_and_nodata_is_empty(state):
    rec = "wss-primary.example.com."
    before = country_routes(state, Status(), rec)
    assert before["GB"]["regions"] == ["eu-west-2"] and not before["GB"]["random"]
    after = country_routes(state, Status(1, _drains(("eu-west-2", None))), rec)
    assert after["GB"]["regions"] and after["GB"]["regions"] != ["eu-west-2"]
    assert not any("eu-west-2" in v["regions"] for v in after.values())
    backup = country_routes(state, Status(), "wss-backup.example.com.")
    assert backup["GB"]["random"] and len(backup["GB"]["regions"]) == 3
    gone = country_routes(state, STATUSES[5].values[0], "img.example.com.")
    assert all(v["regions"] == [] for v in gone.values())


def test_cached_per_snapshot(state):
    st = Status(9)
    a = country_routes(state, st, "api.example.com.")
    assert country_routes(state, st, "api.example.com.") is a
    assert country_routes(state, Status(9), "api.example.com.") is not a
    with pytest.raises(KeyError):
        country_routes(state, st, "nope.example.com.")
