"""Geo: the embedded database, both record formats, the country table, distances."""

from __future__ import annotations

import time

import maxminddb
import pytest

from filterdns.errors import ConfigError
from filterdns.routing.geo import (COUNTRIES, CONTINENTS, COUNTRY_DB, DEFAULT_DB, GeoDB, Location, great_circle_km,
                           location_from_record)
from filterdns.model import Client

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def geo():
    # the country file: these expectations are its networks and centroids
    return GeoDB.open(str(COUNTRY_DB))


def c4(addr, prefix=32, ecs=False):
    return Client(addr, 4, prefix, ecs)


@pytest.mark.parametrize("client,country,continent,prefix", [
    (c4("81.2.69.160"), "GB", "EU", 18),
    (c4("81.2.69.0", 24, True), "GB", "EU", 18),
    (c4("133.1.1.0", 24, True), "JP", "AS", 9),
    (c4("8.8.8.8"), "US", "NA", 17),
    (c4("1.1.1.1"), "AU", "OC", 24),
    (Client("2a00:1450:4009::1", 6, 128, False), "GB", "EU", 48),
    (Client("::ffff:81.2.69.160", 6, 128, False), "GB", "EU", 18 + 96),
    (c4("10.1.2.3"), None, None, 8),
    (c4("192.0.2.1"), None, None, 24),
], ids=["gb", "gb-ecs", "jp-ecs", "us", "au", "gb-v6", "v4-mapped", "private", "documentation"])
def test_locate_embedded(geo, client, country, continent, prefix):
    loc = geo.locate(client)
    assert (loc.country, loc.continent, loc.prefix_len) == (country, continent, prefix)
    if country:
        # a country-only database gives the country's centroid
        assert (loc.lat, loc.lon) == (COUNTRIES[country].lat, COUNTRIES[country].lon)
        assert loc.known
    else:
        assert loc.lat is None and not loc.known


def test_locate_is_cached_and_fast(geo):
    cl = c4("81.2.69.161")
    assert geo.locate(cl) is geo.locate(cl)
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        geo.locate(cl)
    assert (time.perf_counter() - t) / n < 20e-6


@pytest.mark.parametrize("record,expected", [
    ({"country_code": "GB"}, ("GB", None, "EU", 54.0, -2.5)),
    ({"country_code": "ZZ"}, (None, None, None, None, None)),
    ({"country": {"iso_code": "DE"}, "continent": {"code": "EU"},
      "location": {"latitude": 50.11, "longitude": 8.68}, "subdivisions": [{"iso_code": "HE"}]},
     ("DE", "HE", "EU", 50.11, 8.68)),
    ({"registered_country": {"iso_code": "FR"}}, ("FR", None, "EU", 46.23, 2.21)),
    ({"country": {"iso_code": "EU"}, "registered_country": {"iso_code": "IE"}}, ("IE", None, "EU", 53.41, -8.24)),
    ({"continent": {"code": "AP"}, "country": {"iso_code": "AP"}}, (None, None, None, None, None)),
    ({"country": {"iso_code": "US"}, "location": {"latitude": 40.7, "longitude": -74.0}},
     ("US", None, "NA", 40.7, -74.0)),
    ({"country_code": "JP", "autonomous_system_number": 2497}, ("JP", None, "AS", 36.2, 138.25)),
    (None, (None, None, None, None, None)),
], ids=["dbip-lite", "zz-unknown", "geolite2-city", "registered-country", "eu-code-then-registered",
        "ap-unknown", "own-coordinates", "with-asn", "no-record"])
def test_location_from_record(record, expected):
    loc = location_from_record(record, 20)
    assert (loc.country, loc.subdivision, loc.continent, loc.lat, loc.lon) == expected
    assert loc.prefix_len == 20


def test_asn_read_when_present():
    assert location_from_record({"country_code": "JP", "autonomous_system_number": 2497}, 16).asn == 2497


@pytest.mark.parametrize("code,continent,lat,lon", [
    ("GB", "EU", 54.0, -2.5), ("IE", "EU", 53.4, -8.2), ("DE", "EU", 51.2, 10.5), ("FR", "EU", 46.2, 2.2),
    ("US", "NA", 39.8, -98.6), ("CA", "NA", 56.1, -106.3), ("BR", "SA", -14.2, -51.9),
    ("AR", "SA", -38.4, -63.6), ("JP", "AS", 36.2, 138.3), ("IN", "AS", 20.6, 79.0),
    ("SG", "AS", 1.35, 103.8), ("AU", "OC", -25.3, 133.8), ("NZ", "OC", -40.9, 174.9),
    ("ZA", "AF", -30.6, 22.9), ("EG", "AF", 26.8, 30.8), ("MX", "NA", 23.6, -102.6),
])
def test_country_table(code, continent, lat, lon):
    c = COUNTRIES[code]
    assert c.continent == continent
    assert abs(c.lat - lat) <= 1.0 and abs(c.lon - lon) <= 1.0


def test_country_table_complete_and_sane():
    assert len(COUNTRIES) >= 245
    for c in COUNTRIES.values():
        assert len(c.code) == 2 and c.code.isupper()
        assert c.continent in CONTINENTS
        assert -90 <= c.lat <= 90 and -180 <= c.lon <= 180


def test_every_country_in_the_database_is_in_the_table(geo):
    import conftest
    import maxminddb

    if conftest.QUICK:
        pytest.skip("the scan of every network of the database runs in the full suite only")
    seen = set()
    with maxminddb.open_database(str(COUNTRY_DB)) as r:
        for _, rec in r:
            seen.add(rec.get("country_code"))
    missing = {c for c in seen if c and c not in COUNTRIES and c not in ("ZZ", "EU", "AP")}
    assert not missing


@pytest.mark.parametrize("a,b,km", [
    ((51.51, -0.13), (40.71, -74.01), 5570),   # London - New York
    ((35.68, 139.69), (-33.87, 151.21), 7820),  # Tokyo - Sydney
    ((0, 0), (0, 180), 20015),
    ((10, 10), (10, 10), 0),
])
def test_great_circle(a, b, km):
    assert great_circle_km(*a, *b) == pytest.approx(km, abs=25)


def test_open_missing_file(tmp_path):
    with pytest.raises(ConfigError) as ei:
        GeoDB.open(str(tmp_path / "nope.mmdb"))
    assert str(tmp_path / "nope.mmdb") in str(ei.value) and "not found" in str(ei.value)


def test_open_not_a_database(tmp_path):
    p = tmp_path / "bad.mmdb"
    p.write_bytes(b"not a maxmind database" * 10)
    with pytest.raises(ConfigError) as ei:
        GeoDB.open(str(p))
    assert str(p) in str(ei.value)


def test_location_key_excludes_prefix():
    a = Location("GB", None, "EU", 54.0, -2.5, 18)
    b = Location("GB", None, "EU", 54.0, -2.5, 24)
    assert a.key == b.key and a != b


def test_default_is_the_routing_database_when_bundled():
    from filterdns.routing.geo import ROUTING_DB

    assert DEFAULT_DB == (ROUTING_DB if ROUTING_DB.is_file() else COUNTRY_DB)
    assert GeoDB.open().path == str(DEFAULT_DB)
    # the package ships it: a fresh clone routes by state and province
    assert ROUTING_DB.is_file() and COUNTRY_DB.is_file()
    with maxminddb.open_database(str(ROUTING_DB)) as r:
        assert r.metadata().database_type == "filterdns-routing-City"
        assert r.get("63.245.208.1")["subdivision_code"] == "CA"
