"""City-level routing: georegions, Geotarget Regional, US state / Canadian province metadata
for Geotarget and Geofence Country. Tables of (client, answers' metadata, expected order)."""

from __future__ import annotations

import random
from types import MappingProxyType

import pytest

from filterdns.config.chains import load_chains
from filterdns.errors import ConfigError
from filterdns.model import Client
from filterdns.routing.filters import REGISTRY
from filterdns.routing.filters.base import Answer, BuildContext, Context
from filterdns.routing.geo import COUNTRIES, Location
from filterdns.routing.georegions import (CA_PROVINCES, GEOREGION_CENTRES, GEOREGIONS, US_STATES,
                                          georegion, georegion_of)
from filterdns.routing.inventory import Region, Service

pytestmark = pytest.mark.unit

# name: (country, subdivision, lat, lon)
GEO = {
    "us-east-1": ("US", "VA", 38.95, -77.45),
    "us-west-2": ("US", "OR", 45.84, -119.70),
    "ca-central-1": ("CA", "QC", 45.50, -73.57),
    "ca-west-1": ("CA", "AB", 51.05, -114.07),
    "sa-east-1": ("BR", "SP", -23.55, -46.63),
    "eu-west-2": ("GB", "ENG", 51.51, -0.13),
    "ap-southeast-2": ("AU", "NSW", -33.87, 151.21),
    "ap-southeast-4": ("AU", "VIC", -37.81, 144.96),
}
REGIONS = MappingProxyType({
    n: Region(n, n[:3].upper(), cc, sub, COUNTRIES[cc].continent, lat, lon,
              MappingProxyType({"web": Service("web", ("192.0.2.1",))}))
    for n, (cc, sub, lat, lon) in GEO.items()
})
BUILD = BuildContext(REGIONS, "us-east-1")


def client(cc=None, sub=None, lat=None, lon=None):
    if cc is None:
        return Location(None, None, None, None, None, 0)
    return Location(cc, sub, COUNTRIES[cc].continent, lat, lon, 24)


# clients as `filterdns geo build` places them (coordinates on the 0.5 degree grid)
SACRAMENTO = client("US", "CA", 38.5, -121.5)
MOUNTAIN_VIEW = client("US", "CA", 37.5, -122.0)
NEW_YORK = client("US", "NY", 40.5, -74.0)
ASHBURN = client("US", "VA", 39.0, -77.5)
DALLAS = client("US", "TX", 33.0, -97.0)
PITTSBURGH = client("US", "PA", 40.5, -80.0)
US_NO_STATE = client("US", None, 39.8, -98.6)
VANCOUVER = client("CA", "BC", 49.5, -123.0)
TORONTO = client("CA", "ON", 43.5, -79.5)
MONTREAL = client("CA", "QC", 45.5, -73.5)
WINNIPEG = client("CA", "MB", 50.0, -97.0)
HALIFAX = client("CA", "NS", 44.5, -63.5)
SYDNEY = client("AU", "NSW", -34.0, 151.0)
MELBOURNE = client("AU", "VIC", -38.0, 145.0)
BRISBANE = client("AU", "QLD", -27.5, 153.0)
PERTH = client("AU", "WA", -32.0, 116.0)
HOBART = client("AU", "TAS", -43.0, 147.5)
MEXICO_CITY = client("MX", "CMX", 19.5, -99.0)
LONDON = client("GB", "ENG", 51.5, 0.0)
JOHANNESBURG = client("ZA", "GP", -26.0, 28.0)
UNKNOWN = client()


def make(name):
    cls = REGISTRY[name]
    return cls(cls.defaults(), BUILD)


def answers(**meta):
    return tuple(Answer(n, REGIONS[n], (b"\xc0\x00\x02\x01",), (),
                        MappingProxyType({"up": True, **meta.get(n.replace("-", "_"), {})}))
                 for n in GEO)


def run(name, loc, **meta):
    origin = (loc.lat, loc.lon) if loc.lat is not None else (38.95, -77.45)
    ctx = Context(Client("192.0.2.1", 4, 24, True), loc, random.Random(1), origin, True)
    ans = answers(**meta)
    out = REGISTRY[name].apply(make(name), ans, ctx)
    return [a.name for a in out], ctx.notes


# -- georegions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cc,sub,lon,expected", [
    ("US", "CA", -121.5, "US-WEST"), ("US", "OR", None, "US-WEST"), ("US", "CO", None, "US-WEST"),
    ("US", "AK", None, "US-WEST"), ("US", "HI", None, "US-WEST"), ("US", "TX", None, "US-CENTRAL"),
    ("US", "IL", None, "US-CENTRAL"), ("US", "MN", None, "US-CENTRAL"), ("US", "NY", None, "US-EAST"),
    ("US", "VA", None, "US-EAST"), ("US", "FL", None, "US-EAST"), ("US", "DC", None, "US-EAST"),
    ("US", "PR", None, "US-EAST"), ("US", None, -98.6, "US-CENTRAL"), ("US", None, -74.0, "US-EAST"),
    ("CA", "BC", None, "US-WEST"), ("CA", "AB", None, "US-WEST"), ("CA", "MB", None, "US-CENTRAL"),
    ("CA", "SK", None, "US-CENTRAL"), ("CA", "ON", None, "US-EAST"), ("CA", "QC", None, "US-EAST"),
    ("CA", "NL", None, "US-EAST"), ("MX", "CMX", -99.0, "US-CENTRAL"), ("MX", "BCN", -116.0, "US-WEST"),
    ("CU", None, -79.0, "US-EAST"), ("GB", "ENG", 0.0, "EUROPE"), ("DE", None, 10.0, "EUROPE"),
    ("JP", "13", 139.7, "ASIAPAC"), ("IN", None, 79.0, "ASIAPAC"), ("AU", "NSW", 151.0, "ASIAPAC"),
    ("NZ", None, 174.9, "ASIAPAC"), ("BR", "SP", -46.6, "SOUTH-AMERICA"), ("AR", None, -63.6, "SOUTH-AMERICA"),
    ("ZA", "GP", 28.0, "AFRICA"), ("EG", None, 30.8, "AFRICA"), ("AQ", None, 0.0, None), (None, None, None, None),
])
def test_georegion_table(cc, sub, lon, expected):
    cont = COUNTRIES[cc].continent if cc else None
    assert georegion_of(cc, sub, cont, lon) == expected


def test_georegion_tables_cover_states_and_provinces():
    assert len(US_STATES) >= 51 and {"CA", "NY", "TX", "DC", "AK", "HI"} <= US_STATES
    assert CA_PROVINCES == {"AB", "BC", "MB", "NB", "NL", "NS", "NT", "NU", "ON", "PE", "QC", "SK", "YT"}
    assert set(GEOREGION_CENTRES) == set(GEOREGIONS)
    assert georegion(SACRAMENTO) == "US-WEST" and georegion(NEW_YORK) == "US-EAST"


# -- geotarget_country: subdivision, then country, then distance --------------------------------

COUNTRY_TABLE = [
    ("sacramento", SACRAMENTO, {}, ["us-west-2", "us-east-1", "ca-west-1"]),
    ("mountain-view", MOUNTAIN_VIEW, {}, ["us-west-2", "us-east-1", "ca-west-1"]),
    ("new-york", NEW_YORK, {}, ["us-east-1", "us-west-2", "ca-central-1"]),
    ("ashburn-same-state", ASHBURN, {}, ["us-east-1", "us-west-2", "ca-central-1"]),
    ("dallas", DALLAS, {}, ["us-east-1", "us-west-2"]),
    ("us-no-state", US_NO_STATE, {}, ["us-east-1", "us-west-2"]),
    ("vancouver", VANCOUVER, {}, ["ca-west-1", "ca-central-1", "us-west-2"]),
    ("toronto", TORONTO, {}, ["ca-central-1", "ca-west-1", "us-east-1"]),
    ("montreal-same-province", MONTREAL, {}, ["ca-central-1", "ca-west-1", "us-east-1"]),
    ("winnipeg", WINNIPEG, {}, ["ca-west-1", "ca-central-1"]),
    ("halifax", HALIFAX, {}, ["ca-central-1", "ca-west-1", "us-east-1"]),
    ("sydney-same-state", SYDNEY, {}, ["ap-southeast-2", "ap-southeast-4"]),
    ("melbourne-same-state", MELBOURNE, {}, ["ap-southeast-4", "ap-southeast-2"]),
    ("brisbane", BRISBANE, {}, ["ap-southeast-2", "ap-southeast-4"]),
    ("perth", PERTH, {}, ["ap-southeast-4", "ap-southeast-2"]),
    ("hobart", HOBART, {}, ["ap-southeast-4", "ap-southeast-2"]),
    ("mexico-no-region-in-country", MEXICO_CITY, {}, ["us-east-1", "us-west-2", "ca-central-1"]),
    ("london", LONDON, {}, ["eu-west-2", "ca-central-1", "us-east-1"]),
    ("unknown-default-region", UNKNOWN, {}, ["us-east-1", "ca-central-1"]),
    # us_state / ca_province metadata: the answer stands for those states, first for them
    ("us-state-meta-first", PITTSBURGH, {"us_west_2": {"us_state": ["PA", "OH"]}},
     ["us-west-2", "us-east-1", "ca-central-1"]),
    ("us-state-meta-prefix-form", PITTSBURGH, {"us_west_2": {"us_state": "US-PA"}},
     ["us-west-2", "us-east-1"]),
    ("us-state-meta-other-state-same-country", NEW_YORK, {"us_west_2": {"us_state": ["PA"]}},
     ["us-east-1", "us-west-2"]),
    ("ca-province-meta-first", TORONTO, {"ca_west_1": {"ca_province": ["ON"]}},
     ["ca-west-1", "ca-central-1", "us-east-1"]),
    ("ca-province-meta-implies-country", VANCOUVER, {"us_west_2": {"ca_province": ["BC"]}},
     ["us-west-2", "ca-west-1", "ca-central-1"]),
    ("country-meta-counts-as-same-country", MEXICO_CITY, {"us_west_2": {"country": ["MX", "US"]}},
     ["us-west-2", "us-east-1"]),
]


@pytest.mark.parametrize("loc,meta,first", [r[1:] for r in COUNTRY_TABLE], ids=[r[0] for r in COUNTRY_TABLE])
def test_geotarget_country_order(loc, meta, first):
    order, _ = run("geotarget_country", loc, **meta)
    assert order[:len(first)] == first
    assert sorted(order) == sorted(GEO)  # never removes


def test_geotarget_country_explains_the_tiers():
    _, notes = run("geotarget_country", MONTREAL)
    notes = dict(notes)
    assert "same subdivision" in notes["ca-central-1"]
    assert "same country" in notes["ca-west-1"]
    assert "same" not in notes["us-east-1"] and notes["us-east-1"].endswith("km")


# -- geotarget_regional ---------------------------------------------------------------------------

REGIONAL_TABLE = [
    ("sacramento-us-west", SACRAMENTO, {}, ["us-west-2", "ca-west-1", "us-east-1", "ca-central-1"]),
    ("new-york-us-east", NEW_YORK, {}, ["us-east-1", "ca-central-1", "ca-west-1", "us-west-2"]),
    ("toronto-us-east", TORONTO, {}, ["ca-central-1", "us-east-1"]),
    ("vancouver-us-west", VANCOUVER, {}, ["us-west-2", "ca-west-1"]),
    # US-CENTRAL has no answer: the closest georegion (US-EAST) first, then US-WEST
    ("dallas-closest-georegion", DALLAS, {}, ["us-east-1", "ca-central-1", "us-west-2", "ca-west-1"]),
    ("winnipeg-closest-georegion", WINNIPEG, {}, ["ca-central-1", "us-east-1", "ca-west-1", "us-west-2"]),
    ("metadata-overrides-own-location", DALLAS, {"us_west_2": {"georegion": ["US-WEST", "US-CENTRAL"]}},
     ["us-west-2", "us-east-1", "ca-central-1"]),
    ("london-europe", LONDON, {}, ["eu-west-2"]),
    ("johannesburg-no-africa-answer", JOHANNESBURG, {}, ["eu-west-2"]),
    ("sydney-asiapac", SYDNEY, {}, ["ap-southeast-2", "ap-southeast-4"]),
    ("perth-asiapac", PERTH, {}, ["ap-southeast-4", "ap-southeast-2"]),
    ("mexico-city-us-central-by-longitude", MEXICO_CITY, {}, ["us-east-1", "ca-central-1"]),
    ("unknown-default-region", UNKNOWN, {}, ["us-east-1"]),
]


@pytest.mark.parametrize("loc,meta,first", [r[1:] for r in REGIONAL_TABLE], ids=[r[0] for r in REGIONAL_TABLE])
def test_geotarget_regional_order(loc, meta, first):
    order, _ = run("geotarget_regional", loc, **meta)
    assert order[:len(first)] == first
    assert sorted(order) == sorted(GEO)


def test_geotarget_regional_explains():
    _, notes = run("geotarget_regional", DALLAS)
    notes = dict(notes)
    assert notes["us-east-1"].startswith("US-EAST, ") and "km from US-CENTRAL" in notes["us-east-1"]
    _, notes = run("geotarget_regional", SACRAMENTO)
    assert dict(notes)["us-west-2"].startswith("same georegion US-WEST")


# -- geofence_country with us_state / ca_province ---------------------------------------------------

FENCES = {"us_west_2": {"us_state": ["CA", "OR", "WA"]}, "us_east_1": {"us_state": ["NY", "VA"], "country": ["US"]},
          "ca_west_1": {"ca_province": ["BC", "AB"]}, "ca_central_1": {"ca_province": ["CA-QC", "CA-ON"]},
          "eu_west_2": {"country": ["GB", "IE"]}}
UNFENCED = ["sa-east-1", "ap-southeast-2", "ap-southeast-4"]

FENCE_TABLE = [
    ("sacramento", SACRAMENTO, False, ["us-west-2"] + UNFENCED),
    ("new-york", NEW_YORK, False, ["us-east-1"] + UNFENCED),
    ("dallas-state-not-listed", DALLAS, False, UNFENCED),
    ("us-no-state-country-list", US_NO_STATE, False, ["us-east-1"] + UNFENCED),
    ("vancouver", VANCOUVER, False, ["ca-west-1"] + UNFENCED),
    ("toronto-prefixed-codes", TORONTO, False, ["ca-central-1"] + UNFENCED),
    ("winnipeg-province-not-listed", WINNIPEG, False, UNFENCED),
    ("london-country", LONDON, False, ["eu-west-2"] + UNFENCED),
    ("sydney-no-fence-matches", SYDNEY, True, UNFENCED),
    ("sacramento-remove-no-location", SACRAMENTO, True, ["us-west-2"]),
    ("unknown-fences-nothing", UNKNOWN, True, list(GEO)),
]


@pytest.mark.parametrize("loc,remove,kept", [r[1:] for r in FENCE_TABLE], ids=[r[0] for r in FENCE_TABLE])
def test_geofence_country_states(loc, remove, kept):
    cls = REGISTRY["geofence_country"]
    f = cls({**cls.defaults(), "remove_no_location": remove}, BUILD)
    origin = (loc.lat, loc.lon) if loc.lat is not None else None
    ctx = Context(Client("192.0.2.1", 4, 24, True), loc, random.Random(1), origin, True)
    out = [a.name for a in f.apply(answers(**FENCES), ctx)]
    assert sorted(out) == sorted(kept)


# -- configuration: the new metadata keys are validated ------------------------------------------

@pytest.mark.parametrize("meta,message", [
    ("{us_state: [CA, ZZ]}", "unknown US state code 'ZZ'"),
    ("{ca_province: QB}", "unknown Canadian province code 'QB'"),
    ("{us_state: 7}", "must be a US state code or a list of them"),
], ids=["bad-state", "bad-province", "not-codes"])
def test_state_metadata_validated(tmp_path, meta, message):
    (tmp_path / "a.yaml").write_text(f"""
default_region: r1
regions:
  r1: {{country: US, meta: {{up: true}}, services: {{web: {{v4: [192.0.2.1], meta: {meta}}}}}}}
records:
  w.example.com: {{service: web, chain: [geotarget_country]}}
""")
    with pytest.raises(ConfigError) as ei:
        load_chains(tmp_path, ["example.com."])
    assert message in str(ei.value) and "a.yaml:" in str(ei.value)


def test_state_metadata_accepted(tmp_path):
    (tmp_path / "a.yaml").write_text("""
default_region: r1
regions:
  r1: {country: US, meta: {up: true, us_state: [CA, US-OR]}, services: {web: {v4: [192.0.2.1]}}}
  r2: {country: CA, meta: {up: true, ca_province: BC}, services: {web: {v4: [192.0.2.2]}}}
records:
  w.example.com: {service: web, chain: [geofence_country, geotarget_regional, select_first_n]}
""")
    ch = load_chains(tmp_path, ["example.com."])
    assert [s.name for s in ch.records["w.example.com."].steps] == ["geofence_country", "geotarget_regional",
                                                                    "select_first_n"]
