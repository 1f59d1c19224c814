"""Each filter on its own: tables of (options, answers' metadata, client) -> expected order.

Random filters are checked statistically under a seeded RNG. Every filter's docstring is its
manual, and the YAML example in it is loaded here.
"""

from __future__ import annotations

import collections
import importlib
import random
import re
import shutil
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from filterdns.config.chains import load_chains
from filterdns.routing.filters import REGISTRY
from filterdns.routing.filters.base import Answer, BuildContext, Context, Option
from filterdns.routing.filters.geofence_regional import georegion
from filterdns.routing.geo import COUNTRIES, Location
from filterdns.routing.inventory import Region, Service
from filterdns.model import Client

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent

# name: (country, subdivision, lat, lon)
GEO = {
    "us-east-1": ("US", "VA", 38.95, -77.45),
    "us-west-2": ("US", "OR", 45.84, -119.70),
    "eu-west-1": ("IE", None, 53.35, -6.26),
    "eu-west-2": ("GB", "ENG", 51.51, -0.13),
    "eu-central-1": ("DE", "HE", 50.11, 8.68),
    "ap-northeast-1": ("JP", "13", 35.68, 139.69),
    "ap-southeast-2": ("AU", "NSW", -33.87, 151.21),
}
REGIONS = MappingProxyType({
    n: Region(n, n[:3].upper(), cc, sub, COUNTRIES[cc].continent, lat, lon,
              MappingProxyType({"web": Service("web", ("192.0.2.1",))}))
    for n, (cc, sub, lat, lon) in GEO.items()
})
TABLES = MappingProxyType({"default": {
    "countries": {"GB": {"eu-west-1": 4.0, "eu-west-2": 9.0}},
    "continents": {"EU": {"eu-central-1": 12.0}},
}})
BUILD = BuildContext(REGIONS, "us-east-1", TABLES)


def make(name: str, **opts):
    cls = REGISTRY[name]
    o = cls.defaults()
    o.update(opts)
    for opt in cls.OPTIONS:
        val, reason = opt.coerce(o[opt.name])
        assert reason is None, reason
        o[opt.name] = val
    return cls(o, BUILD)


def answers(*names, **meta):
    """Answers for ``names`` (all regions by default); ``meta={region: {...}}``."""
    out = []
    for n in names or tuple(GEO):
        m = {"up": True}
        m.update(meta.get(n.replace("-", "_"), {}))
        out.append(Answer(n, REGIONS[n], (b"\xc0\x00\x02\x01",), (), MappingProxyType(m)))
    return tuple(out)


def where(country=None, sub=None, asn=None, prefix=16):
    if country is None:
        return Location(None, None, None, None, None, prefix, asn)
    c = COUNTRIES[country]
    return Location(country, sub, c.continent, c.lat, c.lon, prefix, asn)


def ctx(loc=None, client=None, seed=1, trace=True):
    loc = loc or where()
    origin = (loc.lat, loc.lon) if loc.lat is not None else (38.95, -77.45)  # default us-east-1
    return Context(client or Client("81.2.69.1", 4, 24, True), loc, random.Random(seed), origin, trace)


def run(f, ans, c):
    before = tuple(ans)
    out = f.apply(ans, c)
    assert ans == before, "apply must not mutate its input"
    assert isinstance(out, tuple)
    return [a.name for a in out]


# -- deterministic filters: one table --------------------------------------------------------

GB, JP, FR, US_OR, BR, UNKNOWN = (where("GB"), where("JP"), where("FR"), where("US", "OR"),
                                  where("BR"), where())

TABLE = [
    # (id, filter, options, answers meta, location, client, expected names)
    ("up-all-up", "up", {}, {}, GB, None, list(GEO)),
    ("up-removes-false", "up", {}, {"eu_west_1": {"up": False}}, GB, None,
     [n for n in GEO if n != "eu-west-1"]),
    ("up-removes-unset", "up", {}, {"eu_west_2": {"up": None}}, GB, None,
     [n for n in GEO if n != "eu-west-2"]),
    ("up-fail-open", "up", {}, {n.replace("-", "_"): {"up": False} for n in GEO}, GB, None, list(GEO)),
    ("shed-below-low", "shed_load", {"metric": "connections"},
     {"eu_west_2": {"connections": 10, "low_watermark": 10, "high_watermark": 20}}, GB, None, list(GEO)),
    ("shed-at-high", "shed_load", {"metric": "connections"},
     {"eu_west_2": {"connections": 20, "low_watermark": 10, "high_watermark": 20}}, GB, None,
     [n for n in GEO if n != "eu-west-2"]),
    ("shed-no-metric-kept", "shed_load", {"metric": "connections"},
     {"eu_west_2": {"loadavg": 99, "low_watermark": 1, "high_watermark": 2}}, GB, None, list(GEO)),
    ("shed-no-watermarks-kept", "shed_load", {}, {"eu_west_2": {"loadavg": 99}}, GB, None, list(GEO)),
    ("shed-default-metric-loadavg", "shed_load", {},
     {"eu_west_2": {"loadavg": 5, "low_watermark": 1, "high_watermark": 2}}, GB, None,
     [n for n in GEO if n != "eu-west-2"]),
    ("geotarget-gb", "geotarget_country", {}, {}, GB, None,
     ["eu-west-2", "eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-northeast-1", "ap-southeast-2"]),
    ("geotarget-jp", "geotarget_country", {}, {}, JP, None,
     ["ap-northeast-1", "ap-southeast-2", "us-west-2", "eu-central-1", "eu-west-2", "eu-west-1", "us-east-1"]),
    ("geotarget-no-region-in-country", "geotarget_country", {}, {}, FR, None,
     ["eu-west-2", "eu-central-1", "eu-west-1", "us-east-1", "us-west-2", "ap-northeast-1", "ap-southeast-2"]),
    ("geotarget-subdivision-first", "geotarget_country", {}, {}, US_OR, None,
     ["us-west-2", "us-east-1", "eu-west-1", "eu-west-2", "eu-central-1", "ap-northeast-1", "ap-southeast-2"]),
    ("geotarget-unknown-default-region", "geotarget_country", {}, {}, UNKNOWN, None,
     ["us-east-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-central-1", "ap-northeast-1", "ap-southeast-2"]),
    ("geotarget-never-removes", "geotarget_country", {}, {"eu_west_2": {"up": False}}, BR, None,
     ["us-east-1", "eu-west-1", "eu-west-2", "eu-central-1", "us-west-2", "ap-southeast-2", "ap-northeast-1"]),
    ("latlong-gb", "geotarget_latlong", {}, {}, GB, None,
     ["eu-west-1", "eu-west-2", "eu-central-1", "us-east-1", "us-west-2", "ap-northeast-1", "ap-southeast-2"]),
    ("latlong-unknown", "geotarget_latlong", {}, {}, UNKNOWN, None,
     ["us-east-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-central-1", "ap-northeast-1", "ap-southeast-2"]),
    ("first-1", "select_first_n", {}, {}, GB, None, ["us-east-1"]),
    ("first-3", "select_first_n", {"n": 3}, {}, GB, None, ["us-east-1", "us-west-2", "eu-west-1"]),
    ("first-more-than-all", "select_first_n", {"n": 30}, {}, GB, None, list(GEO)),
    ("priority-sort", "priority", {},
     {"eu_west_1": {"priority": 2}, "eu_west_2": {"priority": 1}, "us_east_1": {"priority": 2}}, GB, None,
     ["eu-west-2", "us-east-1", "eu-west-1", "us-west-2", "eu-central-1", "ap-northeast-1", "ap-southeast-2"]),
    ("priority-eliminate", "priority", {"eliminate": True},
     {"eu_west_1": {"priority": 2}, "eu_west_2": {"priority": 1}, "us_east_1": {"priority": 1}}, GB, None,
     ["us-east-1", "eu-west-2"]),
    ("priority-eliminate-none-set", "priority", {"eliminate": True}, {}, GB, None, list(GEO)),
    ("geofence-country-match", "geofence_country", {},
     {"eu_west_2": {"country": ("GB", "IE")}, "us_east_1": {"country": ("US",)}}, GB, None,
     [n for n in GEO if n != "us-east-1"]),
    ("geofence-country-remove-no-location", "geofence_country", {"remove_no_location": True},
     {"eu_west_2": {"country": ("GB",)}, "us_east_1": {"country": ("US",)}}, GB, None, ["eu-west-2"]),
    ("geofence-country-nothing-matched-keeps-unfenced", "geofence_country", {"remove_no_location": True},
     {"eu_west_2": {"country": "FR"}}, GB, None, [n for n in GEO if n != "eu-west-2"]),
    ("geofence-country-unknown-client", "geofence_country", {"remove_no_location": True},
     {"eu_west_2": {"country": "FR"}}, UNKNOWN, None, list(GEO)),
    ("geofence-regional", "geofence_regional", {"remove_no_georegion": True},
     {"eu_west_2": {"georegion": "EUROPE"}, "eu_west_1": {"georegion": ("EUROPE", "AFRICA")},
      "us_east_1": {"georegion": "US-EAST"}}, GB, None, ["eu-west-1", "eu-west-2"]),
    ("geofence-regional-keep-missing", "geofence_regional", {},
     {"us_east_1": {"georegion": "US-EAST"}}, JP, None, [n for n in GEO if n != "us-east-1"]),
    ("netfence-prefix", "netfence_prefix", {},
     {"eu_west_2": {"ip_prefixes": ("81.2.0.0/16",)}, "us_east_1": {"ip_prefixes": ("8.8.0.0/16", "2001:db8::/32")}},
     GB, Client("81.2.69.1", 4, 24, True), [n for n in GEO if n != "us-east-1"]),
    ("netfence-prefix-remove-no", "netfence_prefix", {"remove_no_ip_prefixes": True},
     {"eu_west_2": {"ip_prefixes": "81.2.0.0/16"}}, GB, Client("81.2.69.1", 4, 24, True), ["eu-west-2"]),
    ("netfence-prefix-v6", "netfence_prefix", {"remove_no_ip_prefixes": True},
     {"eu_west_2": {"ip_prefixes": ("81.2.0.0/16",)}, "eu_west_1": {"ip_prefixes": ("2001:db8::/32",)}},
     GB, Client("2001:db8:1::", 6, 48, True), ["eu-west-1"]),
    ("netfence-asn", "netfence_asn", {"remove_no_asn": True},
     {"eu_west_2": {"asn": (2856, 5089)}, "us_east_1": {"asn": 7018}}, where("GB", asn=2856), None, ["eu-west-2"]),
    ("netfence-asn-unknown-client", "netfence_asn", {"remove_no_asn": True},
     {"eu_west_2": {"asn": (2856,)}}, GB, None, list(GEO)),
    ("latency-country-row", "latency", {}, {}, GB, None,
     ["eu-west-1", "eu-west-2", "eu-central-1", "us-east-1", "us-west-2", "ap-northeast-1", "ap-southeast-2"]),
    ("latency-continent-row", "latency", {}, {}, where("DE"), None,
     ["eu-central-1", "eu-west-2", "eu-west-1", "us-east-1", "us-west-2", "ap-northeast-1", "ap-southeast-2"]),
    ("latency-distance-fallback", "latency", {}, {}, JP, None,
     ["ap-northeast-1", "ap-southeast-2", "us-west-2", "eu-central-1", "eu-west-2", "eu-west-1", "us-east-1"]),
    ("latency-unknown-client", "latency", {}, {}, UNKNOWN, None,
     ["us-east-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-central-1", "ap-northeast-1", "ap-southeast-2"]),
]


@pytest.mark.parametrize("name,opts,meta,loc,client,expected", [r[1:] for r in TABLE], ids=[r[0] for r in TABLE])
def test_filter_table(name, opts, meta, loc, client, expected):
    f = make(name, **opts)
    assert run(f, answers(**meta), ctx(loc, client)) == expected


@pytest.mark.parametrize("name,opts,meta,loc,note", [
    ("up", {}, {"eu_west_1": {"up": False}}, GB, ("eu-west-1", "removed: up=false")),
    ("shed_load", {"metric": "connections"},
     {"ap_northeast_1": {"connections": 9000, "low_watermark": 6000, "high_watermark": 8000}}, GB,
     ("ap-northeast-1", "shed: connections 9000 above high watermark 8000")),
    ("select_first_n", {"n": 6}, {}, GB, ("ap-southeast-2", "removed: beyond the first 6")),
    ("geotarget_country", {}, {}, GB, ("eu-west-2", "319 km, same country")),
    ("latency", {}, {}, GB, ("eu-west-1", "4 ms (table GB)")),
], ids=["up", "shed_load", "select_first_n", "geotarget_country", "latency"])
def test_trace_reasons(name, opts, meta, loc, note):
    c = ctx(loc)
    make(name, **opts).apply(answers(**meta), c)
    assert note in c.notes


def test_no_notes_without_trace():
    c = ctx(GB, trace=False)
    make("up").apply(answers(eu_west_1={"up": False}), c)
    assert c.notes == []


# -- random filters: statistics under a seeded RNG -------------------------------------------

def first_counts(f, ans, n=3000, loc=GB, seed=7):
    rng = random.Random(seed)
    c = Context(Client("81.2.69.1", 4, 24, True), loc, rng, (loc.lat, loc.lon), False)
    return collections.Counter(f.apply(ans, c)[0].name for _ in range(n)), collections.Counter(
        len(f.apply(ans, c)) for _ in range(200))


def test_shuffle_uniform():
    counts, lengths = first_counts(make("shuffle"), answers("eu-west-1", "eu-west-2", "eu-central-1"))
    assert set(lengths) == {3}
    for n in ("eu-west-1", "eu-west-2", "eu-central-1"):
        assert 850 <= counts[n] <= 1150, counts


@pytest.mark.parametrize("weights,expected_share", [
    ({"eu_west_1": 1, "eu_west_2": 2, "eu_central_1": 7}, {"eu-west-1": .1, "eu-west-2": .2, "eu-central-1": .7}),
    ({"eu_west_1": 0, "eu_west_2": 1, "eu_central_1": 1}, {"eu-west-1": 0, "eu-west-2": .5, "eu-central-1": .5}),
    ({}, {"eu-west-1": 1 / 3, "eu-west-2": 1 / 3, "eu-central-1": 1 / 3}),
], ids=["1-2-7", "zero-weight-last", "default-weight"])
def test_weighted_shuffle_first_pick(weights, expected_share):
    meta = {k: {"weight": w} for k, w in weights.items()}
    counts, lengths = first_counts(make("weighted_shuffle"), answers("eu-west-1", "eu-west-2", "eu-central-1", **meta))
    assert set(lengths) == {3}
    for n, share in expected_share.items():
        assert abs(counts[n] / 3000 - share) < 0.035, counts


def test_shed_load_between_watermarks_probability():
    # load 7500 between 6000 and 8000: shed with p = 0.75
    f = make("shed_load", metric="connections")
    ans = answers("eu-west-2", "eu-west-1",
                  eu_west_2={"connections": 7500, "low_watermark": 6000, "high_watermark": 8000})
    rng = random.Random(3)
    c = Context(Client("81.2.69.1", 4, 24, True), GB, rng, None, False)
    kept = sum("eu-west-2" in [a.name for a in f.apply(ans, c)] for _ in range(4000))
    assert abs(kept / 4000 - 0.25) < 0.03


# -- sticky ---------------------------------------------------------------------------------

def sticky_order(f, addr, prefix=24, fam=4):
    c = ctx(GB, Client(addr, fam, prefix, True))
    return [a.name for a in f.apply(answers(), c)]


def test_sticky_same_subnet_same_order():
    f = make("sticky")
    assert sticky_order(f, "81.2.69.1") == sticky_order(f, "81.2.69.200") == sticky_order(f, "81.2.69.0")
    assert sorted(sticky_order(f, "81.2.69.1")) == sorted(GEO)


def test_sticky_spreads_subnets_and_is_stable_under_removal():
    f = make("sticky")
    firsts = collections.Counter(sticky_order(f, f"10.{i // 256}.{i % 256}.0")[0] for i in range(3500))
    for n in GEO:
        assert 350 <= firsts[n] <= 650, firsts
    # removing one answer only moves the clients that had it first
    for i in range(200):
        addr = f"10.0.{i}.0"
        full = sticky_order(f, addr)
        c = ctx(GB, Client(addr, 4, 24, True))
        without = [a.name for a in f.apply(tuple(a for a in answers() if a.name != "eu-west-2"), c)]
        assert without == [n for n in full if n != "eu-west-2"]


def test_sticky_weighted():
    f = make("sticky", weighted=True)
    meta = {"eu_west_1": {"weight": 3}, "eu_west_2": {"weight": 1}}
    firsts = collections.Counter()
    for i in range(4000):
        c = ctx(GB, Client(f"10.{i // 256}.{i % 256}.0", 4, 24, True))
        firsts[f.apply(answers("eu-west-1", "eu-west-2", **meta), c)[0].name] += 1
    assert abs(firsts["eu-west-1"] / 4000 - 0.75) < 0.03


@pytest.mark.parametrize("client,opts,needed", [
    (Client("81.2.69.0", 4, 24, True), {}, 24),
    (Client("81.2.0.0", 4, 16, True), {}, 16),
    (Client("81.2.69.7", 4, 32, False), {"prefix_v4": 20}, 20),
    (Client("2001:db8::", 6, 64, True), {}, 56),
    (Client("2001:db8::", 6, 48, True), {}, 48),
])
def test_sticky_prefix_needed(client, opts, needed):
    assert make("sticky", **opts).prefix_needed(client) == needed


# -- schema, registry and manuals -----------------------------------------------------------

EXPECTED_FILTERS = ["up", "shed_load", "geotarget_country", "geotarget_latlong", "geotarget_regional",
                    "select_first_n", "shuffle",
                    "weighted_shuffle", "priority", "sticky", "geofence_country", "geofence_regional",
                    "netfence_prefix", "netfence_asn", "latency"]


def test_registry_names_match_modules():
    assert sorted(REGISTRY) == sorted(EXPECTED_FILTERS)
    for name, cls in REGISTRY.items():
        assert cls.__module__ == f"filterdns.routing.filters.{name}"


@pytest.mark.parametrize("name,reads,prefix,rand", [
    ("up", False, False, False), ("shed_load", False, False, True), ("geotarget_country", True, False, False),
    ("geotarget_latlong", True, False, False), ("geotarget_regional", True, False, False),
    ("select_first_n", False, False, False),
    ("shuffle", False, False, True), ("weighted_shuffle", False, False, True), ("priority", False, False, False),
    ("sticky", True, True, False), ("geofence_country", True, False, False),
    ("geofence_regional", True, False, False), ("netfence_prefix", True, True, False),
    ("netfence_asn", True, False, False), ("latency", True, False, False),
])
def test_filter_flags(name, reads, prefix, rand):
    cls = REGISTRY[name]
    assert (cls.reads_client, cls.needs_prefix, cls.random) == (reads, prefix, rand)


def _example(doc: str) -> str:
    m = re.search(r"Example::\n\n((?:    .*\n|\n)+)", doc + "\n")
    assert m, "docstring has no Example:: block"
    return textwrap.dedent(m.group(1))


@pytest.mark.parametrize("name", EXPECTED_FILTERS)
def test_docstring_is_the_manual(tmp_path, name):
    mod = importlib.import_module(f"filterdns.routing.filters.{name}")
    doc = mod.__doc__
    assert doc.startswith(f"``{name}``")
    assert "Options" in doc and "Metadata read" in doc and "Metrics" in doc
    for opt in REGISTRY[name].OPTIONS:
        assert f"``{opt.name}``" in doc, f"option {opt.name} undocumented"
    # the YAML example loads against the bundled regions and latency table
    for f in ("regions.yaml", "latency.yaml"):
        shutil.copy(ROOT / "chains" / f, tmp_path / f)
    (tmp_path / "example.yaml").write_text(_example(doc))
    chains = load_chains(tmp_path, ["example.com."])
    assert len(chains.chains) == 1
    steps = next(iter(chains.chains.values()))
    assert name in [s.name for s in steps]


@pytest.mark.parametrize("opt,value,ok", [
    (Option("n", "int", 1, min=1), 0, "n must be an integer >= 1, got 0"),
    (Option("n", "int", 1, min=1), True, "n must be an integer >= 1, got True"),
    (Option("n", "int", 1, min=1), 2, None),
    (Option("p", "int", 24, min=0, max=32), 33, "p must be an integer in 0..32, got 33"),
    (Option("w", "float", 1.0, min=0), -1, "w must be a number >= 0, got -1"),
    (Option("w", "float", 1.0, min=0), 2, None),
    (Option("e", "bool", False), "yes", "e must be true or false, got 'yes'"),
    (Option("m", "choice", "a", choices=("a", "b")), "c", "m must be one of a, b, got 'c'"),
    (Option("t", "str", "x"), "", "t must be a non-empty string, got ''"),
])
def test_option_coerce(opt, value, ok):
    val, reason = opt.coerce(value)
    assert reason == ok
    if ok is None:
        assert val == value


@pytest.mark.parametrize("loc,region", [
    (where("GB"), "EUROPE"), (where("JP"), "ASIAPAC"), (where("AU"), "ASIAPAC"), (where("ZA"), "AFRICA"),
    (where("BR"), "SOUTH-AMERICA"), (where("US"), "US-CENTRAL"), (where("CA"), "US-WEST"),
    (Location("US", "NY", "NA", 40.7, -74.0, 24), "US-EAST"),
    (Location("US", "CA", "NA", 37.4, -122.1, 24), "US-WEST"), (where(), None),
])
def test_georegion(loc, region):
    assert georegion(loc) == region


def test_registry_refuses_a_duplicate_name():
    from filterdns.routing.filters import build_registry
    from filterdns.routing.filters.base import Filter
    from filterdns.routing.filters.up import Up

    class OtherUp(Filter):
        name = "up"

    class Nameless(Filter):
        pass

    assert dict(build_registry(REGISTRY.values())) == dict(REGISTRY)  # the real one has no clash
    with pytest.raises(ValueError, match=r"filter name 'up' is claimed by both .*Up and .*OtherUp"):
        build_registry((Up, OtherUp))
    with pytest.raises(ValueError, match="has no name"):
        build_registry((Up, Nameless))
