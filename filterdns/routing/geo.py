"""Client address or subnet → country, continent, coordinates and the matched network prefix.

Reads a MaxMind-format database with ``maxminddb`` (its C extension: about 1 µs a lookup).
The default is the bundled routing database ``filterdns/data/dbip-routing.mmdb``: DB-IP Lite
City compacted by ``filterdns geo build --level subdivision`` (records ``country_code``,
``continent_code``, ``subdivision_code``, ``latitude``/``longitude``: one point per state or
province, on a 0.5° grid; CC BY 4.0, see DBIP-LICENSE). When that file is absent (a trimmed
package), the embedded DB-IP Lite Country database ``filterdns/data/dbip-country.mmdb`` is
the fallback (ip-location-db format, records ``{"country_code": "GB"}``).
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
import socket
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import maxminddb

from filterdns.cache import Cache
from filterdns.errors import ConfigError, Problem
from filterdns.model import Client

UNKNOWN_CODES = frozenset({"ZZ", "EU", "AP", "A1", "A2", "O1", "XX", "--", ""})

_DATA = Path(__file__).resolve().parent.parent / "data"
COUNTRY_DB = _DATA / "dbip-country.mmdb"
ROUTING_DB = _DATA / "dbip-routing.mmdb"
#: the bundled routing database (city data at subdivision level), else the country file
DEFAULT_DB = ROUTING_DB if ROUTING_DB.is_file() else COUNTRY_DB
COUNTRIES_CSV = _DATA / "countries.csv"

#: addresses whose location is kept (per generation of the bounded cache, filterdns.cache)
_CACHE_MAX = 65536
#: networks ``GeoDB.widest`` may look at for one block (bounds the first query's cost)
WIDEN_BUDGET = 512


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

    ``prefix_len`` is the matched network length in the client's own family and ``network``
    that network's first address as an integer (``(network, prefix_len)`` names the database
    network; ``key`` names the location, which many networks share).
    ``asn`` is set only when the database carries ``autonomous_system_number``.
    """

    country: str | None
    subdivision: str | None
    continent: str | None
    lat: float | None
    lon: float | None
    prefix_len: int
    asn: int | None = None
    network: int = 0
    #: the address family of ``network`` (4 or 6; 0 when made by hand)
    family: int = 0
    #: what location-based filters depend on (a cache key); excludes the prefix and network
    key: tuple = field(init=False, repr=False, compare=False)
    #: the database network: (family, network, prefix_len) (a cache key)
    net: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.country, self.subdivision, self.continent, self.lat,
                                         self.lon, self.asn))
        object.__setattr__(self, "net", (self.family, self.network, self.prefix_len))

    @property
    def known(self) -> bool:
        return self.country is not None or self.lat is not None


UNKNOWN = Location(None, None, None, None, None, 0)


def _code(v: Any) -> str | None:
    if isinstance(v, str):
        v = v.strip().upper()
        if v and v not in UNKNOWN_CODES:
            return v
    return None


def location_from_record(rec: Mapping[str, Any] | None, prefix_len: int, network: int = 0,
                         family: int = 0) -> Location:
    """Turn one database record (any format) into a ``Location``; fill gaps from COUNTRIES."""
    if not rec:
        return Location(None, None, None, None, None, prefix_len, None, network, family)
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
    elif isinstance(rec.get("subdivision_code"), str):  # the compact routing format
        sub = _code(rec["subdivision_code"])
    # ip-location-db city names states by name (``state1``), not code: `filterdns geo build`
    # resolves the names; read raw, such a file gives no subdivision
    row = COUNTRIES.get(country) if country else None
    if row is not None:
        continent = continent if continent in CONTINENTS else row.continent
        if lat is None:
            lat, lon = row.lat, row.lon
    elif continent not in CONTINENTS:
        continent = None
    if country is None:
        sub = None
    return Location(country, sub, continent, lat, lon, prefix_len, asn if isinstance(asn, int) else None,
                    network, family)


class GeoDB:
    """A geo database reader with a bounded per-address cache. Build with ``GeoDB.open``."""

    __slots__ = ("path", "_reader", "_cache")

    def __init__(self, reader: Any, path: str):
        self.path = path
        self._reader = reader
        self._cache = Cache(_CACHE_MAX)  # address text -> Location

    @classmethod
    def open(cls, path: str | None = None) -> "GeoDB":
        """Open ``path`` (None: the bundled database, ``DEFAULT_DB``).

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
        a = client.address  # IPv4 and IPv6 text never collide
        cache = self._cache
        loc = cache.new.get(a)
        if loc is None:
            loc = cache.get(a)
            if loc is None:
                loc = cache.put(a, self.lookup(a))
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
            packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        except (ValueError, OSError):
            return UNKNOWN
        bits = len(packed) * 8
        network = int.from_bytes(packed, "big") >> (bits - plen) << (bits - plen) if plen else 0
        if mapped:
            plen += 96
            network |= 0xFFFF << 32
        return location_from_record(rec, plen, network, 6 if bits == 128 or mapped else 4)

    def widest(self, family: int, loc: Location, same: Callable[[Location], bool],
               budget: int = WIDEN_BUDGET, start: int | None = None, resume: int | None = None,
               stopped: list | None = None) -> int:
        """The shortest prefix length L <= ``loc.prefix_len`` such that every address of the
        aligned /L block around ``loc``'s network has a location for which ``same`` is true.
        ``same`` may also answer None: "not now" (the caller's budget ran out); the walk then
        stops, returns the block verified so far and appends to ``stopped`` the address it
        stopped at. ``start`` (a length already known to be such a block) and ``resume`` (that
        address) resume such a walk where it stopped.

        Walks up from the matched network one bit at a time; at each step the sibling block's
        networks are enumerated with point lookups (each answer says how far its network
        reaches), and the walk stops at the first location that is not ``same`` (gaps in the
        database are the unknown location). At most ``budget`` networks are looked at: past that
        the block found so far is returned, which may be narrower than the widest, never wider.
        IPv4-mapped IPv6 clients are not widened.
        """
        bits = 32 if family == 4 else 128
        length = loc.prefix_len
        if family == 6 and loc.network >> 32 == 0xFFFF:
            return length
        lo = loc.network
        if start is not None and start < length:
            length = start
            lo = lo >> (bits - length) << (bits - length) if length else 0
        get = self._reader.get_with_prefix_len
        text = _v4_text if family == 4 else _v6_text
        seen: dict = {}
        while length > 0:
            size = 1 << (bits - length)
            sib = lo - size if lo & size else lo + size
            a, end = sib, sib + size
            if resume is not None:
                if sib <= resume < end:
                    a = resume
                resume = None
            while a < end:
                if budget <= 0:
                    return length
                budget -= 1
                try:
                    rec, plen = get(text(a))
                except ValueError:
                    return length
                if plen < length:
                    return length
                # neighbours repeat a few records: one Location per distinct record (the
                # predicate reads the location, not the network)
                rk = tuple(rec.items()) if rec else None
                try:
                    loc_n = seen.get(rk)
                except TypeError:  # nested records (GeoLite2): not hashable, not cached
                    loc_n, rk = None, False
                if loc_n is None:
                    loc_n = location_from_record(rec, plen, a, family)
                    if rk is not False:
                        seen[rk] = loc_n
                ok = same(loc_n)
                if not ok:
                    if ok is None and stopped is not None:
                        stopped.append(a)
                    return length
                a += 1 << (bits - plen)
            length -= 1
            if sib < lo:
                lo = sib
        return length


def _v4_text(n: int) -> str:
    return socket.inet_ntop(socket.AF_INET, n.to_bytes(4, "big"))


def _v6_text(n: int) -> str:
    return socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))


# -- distances ---------------------------------------------------------------------------------
_R_KM = 6371.0088


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _R_KM * math.asin(min(1.0, math.sqrt(a)))
