"""Client address or subnet → country, continent, coordinates and the matched network prefix.

Reads a MaxMind-format database with ``maxminddb`` (its C extension: about 1 µs a lookup).
The default is the DB-IP Lite Country database bundled at ``filterdns/data/dbip-country.mmdb``
(ip-location-db format, records ``{"country_code": "GB"}``; CC BY 4.0, see DBIP-LICENSE).
An operator's GeoLite2 / DB-IP Country or City file works too: ``country.iso_code`` is read,
then ``registered_country.iso_code``; ``continent.code``, ``location.latitude/longitude`` and
``subdivisions[0].iso_code`` are used when the file has them. Whatever the file lacks is filled
from ``filterdns/data/countries.csv`` (country → continent, centroid).

Codes that name no country (``ZZ``, ``EU``, ``AP``, ``A1``, ``A2``, ``O1``) count as unknown.
IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are looked up as IPv4.

The matched prefix (``Location.prefix_len``) is the length of the database network that holds
the address, in the client's own family (0-32 for IPv4, 0-128 for IPv6). For an ECS client
the answer is valid for that whole network, which is what the ECS scope reports; the decision
core caps the scope at the query's source prefix. ``prefix_len`` is *not* capped here.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import maxminddb

from filterdns.errors import ConfigError, Problem
from filterdns.model import Client

UNKNOWN_CODES = frozenset({"ZZ", "EU", "AP", "A1", "A2", "O1", "XX", "--", ""})

_DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT_DB = _DATA / "dbip-country.mmdb"
COUNTRIES_CSV = _DATA / "countries.csv"

_CACHE_MAX = 65536


@dataclass(frozen=True, slots=True)
class Country:
    """One row of the country table."""

    code: str
    continent: str
    lat: float
    lon: float
    name: str


def _load_countries() -> Mapping[str, Country]:
    out: dict[str, Country] = {}
    with open(COUNTRIES_CSV, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        for r in rows:
            out[r["code"]] = Country(r["code"], r["continent"], float(r["lat"]), float(r["lon"]), r["name"])
    return MappingProxyType(out)


#: ISO 3166-1 alpha-2 → Country (continent code, centroid). Loaded once at import.
COUNTRIES: Mapping[str, Country] = _load_countries()

#: continent codes
CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client is, as far as the geo database can tell.

    ``prefix_len`` is the matched network length in the client's own family.
    ``asn`` is set only when the database carries ``autonomous_system_number``.
    """

    country: str | None
    subdivision: str | None
    continent: str | None
    lat: float | None
    lon: float | None
    prefix_len: int
    asn: int | None = None

    @property
    def known(self) -> bool:
        return self.country is not None or self.lat is not None

    @property
    def key(self) -> tuple:
        """What location-based filters depend on (a cache key); excludes the prefix."""
        return (self.country, self.subdivision, self.continent, self.lat, self.lon, self.asn)


UNKNOWN = Location(None, None, None, None, None, 0)


def _code(v: Any) -> str | None:
    if isinstance(v, str):
        v = v.strip().upper()
        if v and v not in UNKNOWN_CODES:
            return v
    return None


def location_from_record(rec: Mapping[str, Any] | None, prefix_len: int) -> Location:
    """Turn one database record (either format) into a ``Location``; fill gaps from COUNTRIES."""
    if not rec:
        return Location(None, None, None, None, None, prefix_len)
    country = _code(rec.get("country_code"))
    continent = _code(rec.get("continent_code") or rec.get("continent"))  # ip-location-db city
    lat = lon = None
    sub = None
    asn = rec.get("autonomous_system_number")
    c = rec.get("country")
    if isinstance(c, Mapping):
        country = country or _code(c.get("iso_code"))
    if country is None:
        rc = rec.get("registered_country")
        if isinstance(rc, Mapping):
            country = _code(rc.get("iso_code"))
    cont = rec.get("continent")
    if isinstance(cont, Mapping):
        continent = _code(cont.get("code"))
    loc = rec.get("location")
    if isinstance(loc, Mapping):
        la, lo = loc.get("latitude"), loc.get("longitude")
        if isinstance(la, (int, float)) and isinstance(lo, (int, float)):
            lat, lon = float(la), float(lo)
    elif isinstance(rec.get("latitude"), (int, float)) and isinstance(rec.get("longitude"), (int, float)):
        lat, lon = float(rec["latitude"]), float(rec["longitude"])
    subs = rec.get("subdivisions")
    if isinstance(subs, list) and subs and isinstance(subs[0], Mapping):
        sub = _code(subs[0].get("iso_code"))
    elif isinstance(rec.get("state1"), str):
        sub = None  # ip-location-db city names states by name, not code: not usable
    row = COUNTRIES.get(country) if country else None
    if row is not None:
        continent = continent if continent in CONTINENTS else row.continent
        if lat is None:
            lat, lon = row.lat, row.lon
    elif continent not in CONTINENTS:
        continent = None
    if country is None:
        sub = None
    return Location(country, sub, continent, lat, lon, prefix_len, asn if isinstance(asn, int) else None)


class GeoDB:
    """A geo database reader with a bounded per-address cache. Build with ``GeoDB.open``."""

    __slots__ = ("path", "_reader", "_cache")

    def __init__(self, reader: Any, path: str):
        self.path = path
        self._reader = reader
        self._cache: dict[tuple[str, int], Location] = {}

    @classmethod
    def open(cls, path: str | None = None) -> "GeoDB":
        """Open ``path`` (None: the embedded DB-IP Lite Country database).

        Raises ``ConfigError`` naming the path when the file is missing or not a MaxMind DB.
        """
        p = str(DEFAULT_DB if path is None else path)
        try:
            reader = maxminddb.open_database(p, maxminddb.MODE_AUTO)
        except FileNotFoundError:
            raise ConfigError([Problem(p, None, None, "geoip database not found")]) from None
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            raise ConfigError([Problem(p, None, None, f"not a usable MaxMind database: {e}")]) from None
        return cls(reader, p)

    def close(self) -> None:
        self._reader.close()

    def locate(self, client: Client) -> Location:
        """The location of ``client`` (its ECS address, or the resolver's address)."""
        key = (client.address, client.family)
        loc = self._cache.get(key)
        if loc is not None:
            return loc
        loc = self.lookup(client.address)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = loc
        return loc

    def lookup(self, address: str) -> Location:
        """Uncached lookup of one address (IPv4 or IPv6 text)."""
        mapped = False
        if ":" in address and "." in address:
            low = address.lower()
            if low.startswith("::ffff:"):
                address, mapped = address[7:], True
        try:
            rec, plen = self._reader.get_with_prefix_len(address)
        except ValueError:
            return UNKNOWN
        if mapped:
            plen += 96
        return location_from_record(rec, plen)


# -- distances ---------------------------------------------------------------------------------
_R_KM = 6371.0088


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _R_KM * math.asin(min(1.0, math.sqrt(a)))
