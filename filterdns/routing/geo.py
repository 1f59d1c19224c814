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
import mmap
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
#: search-tree nodes ``GeoDB.widest`` may visit for one network in all (bounds its cost)
WIDEN_BUDGET = 512
#: what ``GeoDB.widest`` hands back for a subtree whose networks get different decisions
MIXED = object()


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


class _Tree:
    """The database's binary search tree, read from the file itself (the MaxMind DB format:
    ``node_count`` nodes of two records each, 24, 28 or 32 bits a record, then 16 zero octets
    and the data section). ``GeoDB.widest`` walks it to enumerate the networks around a client
    without decoding a record per network: a record below ``node_count`` is a node, equal to it
    an empty network (no data), above it a pointer into the data section, and identical
    records share one pointer (the writer deduplicates them), so a pointer names a location."""

    __slots__ = ("buf", "node_count", "tree_size", "ipv4_start", "ip_version", "node_octets", "children",
                 "_decoder", "_file")

    def __init__(self, path: str, node_count: int, record_size: int, ip_version: int):
        from maxminddb.decoder import Decoder

        self._file = open(path, "rb")  # noqa: SIM115 - held open for the mmap's life
        try:
            self.buf = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            self._file.close()
            raise
        self.node_count = node_count
        self.ip_version = ip_version
        self.node_octets = size = record_size // 4  # octets per node
        self.tree_size = tree_size = node_count * size
        if tree_size + 16 > len(self.buf):
            self.close()
            raise ValueError("search tree runs past the end of the file")
        self._decoder = Decoder(self.buf, tree_size + 16)
        buf, frm = self.buf, int.from_bytes
        if record_size == 24:
            def children(node: int) -> tuple[int, int]:
                v = frm(buf[node * 6:node * 6 + 6], "big")
                return v >> 24, v & 0xFFFFFF
        elif record_size == 28:
            def children(node: int) -> tuple[int, int]:
                v = frm(buf[node * 7:node * 7 + 7], "big")
                return (v >> 32) | ((v >> 28 & 0xF) << 24), v & 0xFFFFFFF
        elif record_size == 32:
            def children(node: int) -> tuple[int, int]:
                v = frm(buf[node * 8:node * 8 + 8], "big")
                return v >> 32, v & 0xFFFFFFFF
        else:
            self.close()
            raise ValueError(f"record size {record_size}")
        self.children = children
        start = 0
        if ip_version == 6:  # IPv4 lives at ::/96 (the reader's own start node for IPv4)
            for _ in range(96):
                if start >= node_count:
                    break
                start = children(start)[0]
        self.ipv4_start = start

    def record(self, pointer: int) -> Any:
        """The data a pointer (a record above ``node_count``) points at."""
        return self._decoder.decode(pointer - self.node_count + self.tree_size)[0]

    def close(self) -> None:
        try:
            self.buf.close()
        finally:
            self._file.close()


class NodeMemo:
    """What ``GeoDB.widest`` found about the search tree, for one decision function (one
    record, address family and region-state snapshot): per node, its subtree's one decision
    or ``MIXED``; per record (data pointer), its decision.

    The node part is an array of one-octet decision numbers indexed by node number, in an
    anonymous memory map: one octet a node of address space (7.5 MB for the bundled
    database), of which the kernel commits only the pages walks touch. Writers number nodes
    depth first, so a subtree is one run of numbers and a walk touches a few pages. No
    hashing, no eviction: a walk done once stays done for this snapshot (a new snapshot, a new
    memo). Bounded by the database: at most ``node_count`` octets, and 253 distinct decisions
    (a chain whose decision names the location itself has more: past 253, new decisions are
    not memoised, and such a chain's blocks end at the first neighbour elsewhere anyway)."""

    __slots__ = ("ids", "decisions", "index", "leaves", "_map")

    def __init__(self, node_count: int):
        self._map = mmap.mmap(-1, max(1, node_count))
        self.ids = memoryview(self._map)  # node -> 0 unknown, 1 MIXED, 2+ decision
        self.decisions: list = [None, MIXED]  # decision number -> decision
        self.index: dict = {}  # decision -> its number
        self.leaves = Cache(_CACHE_MAX)  # data pointer (or the empty record) -> its decision

    def get(self, node: int) -> Any:
        return self.decisions[self.ids[node]]

    def put(self, node: int, d: Any) -> None:
        if d is MIXED:
            self.ids[node] = 1
            return
        i = self.index.get(d)
        if i is None:
            if len(self.decisions) >= 255:
                return
            i = self.index[d] = len(self.decisions)
            self.decisions.append(d)
        self.ids[node] = i


class GeoDB:
    """A geo database reader with bounded caches. Build with ``GeoDB.open``.

    Three caches, each a ``filterdns.cache.Cache``: address -> ``Location`` (one dict lookup
    for a client seen before), database network -> ``Location`` (a new address in a known
    network costs the ``maxminddb`` lookup alone: about 2 us) and record -> the location's
    fields (a new network of a known place is not parsed again)."""

    __slots__ = ("path", "_reader", "_cache", "_nets", "_places", "_tree", "_points")

    def __init__(self, reader: Any, path: str):
        self.path = path
        self._reader = reader
        self._cache = Cache(_CACHE_MAX)  # address text -> Location
        self._nets = Cache(_CACHE_MAX)  # (family, network, prefix_len) -> Location
        self._places = Cache(_CACHE_MAX)  # the record's items -> Location at /0 (its fields)
        self._points = Cache(_CACHE_MAX)  # data pointer -> Location (GeoDB.widest)
        self._tree: _Tree | None = None
        try:
            m = reader.metadata()
            self._tree = _Tree(path, m.node_count, m.record_size, m.ip_version)
        except (OSError, ValueError, AttributeError, ImportError):
            self._tree = None  # no walk over neighbours: scopes stay the matched network

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

    def replay_tree(self) -> dict | None:
        """The search tree as ``serve/_mmsg``'s Replay reads it (``Replay.reset`` arguments), so
        its keys name a client's database network as ``locate`` does; None without a tree."""
        t = self._tree
        if t is None:
            return None
        return {"tree": t.buf, "node_count": t.node_count, "node_octets": t.node_octets,
                "ip_version": t.ip_version, "ipv4_start": t.ipv4_start}

    def close(self) -> None:
        self._reader.close()
        if self._tree is not None:
            self._tree.close()

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
        """Lookup of one address (IPv4 or IPv6 text): one ``Location`` per database network."""
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
        family = 6 if bits == 128 or mapped else 4
        nkey = (family, network, plen)
        nets = self._nets
        loc = nets.get(nkey)
        if loc is None:
            loc = nets.put(nkey, self._at(self._place(rec), plen, network, family))
        return loc

    def _place(self, rec: Any) -> Location:
        """The location a record names (at prefix 0, network 0): parsed once per record."""
        if not rec:
            return UNKNOWN
        try:
            rk = tuple(rec.items())
            place = self._places.get(rk)
        except TypeError:  # nested records (GeoLite2): not hashable as they are
            rk, place = None, None
        if place is None:
            place = location_from_record(rec, 0)
            if rk is not None:
                self._places.put(rk, place)
        return place

    @staticmethod
    def _at(place: Location, plen: int, network: int, family: int) -> Location:
        return Location(place.country, place.subdivision, place.continent, place.lat, place.lon, plen,
                        place.asn, network, family)

    def place_at(self, pointer: int) -> Location:
        """The location of a search-tree record (``GeoDB.widest``): a data pointer, or the
        empty record (``node_count``: no data, the unknown location)."""
        tree = self._tree
        if pointer <= tree.node_count:
            return UNKNOWN
        loc = self._points.get(pointer)
        if loc is None:
            try:
                rec = tree.record(pointer)
            except Exception:  # noqa: BLE001 - a corrupt record is an unknown location
                rec = None
            loc = self._points.put(pointer, self._place(rec))
        return loc

    def node_memo(self) -> NodeMemo | None:
        """A fresh memo for ``widest`` (one per decision function), or None: no search tree
        could be read, so no walk."""
        return NodeMemo(self._tree.node_count) if self._tree is not None else None

    def widest(self, family: int, loc: Location, mine: Any, decision: Callable[[int], Any],
               nodes: NodeMemo | None, budget: int) -> tuple[int, int | None]:
        """The shortest prefix length L <= ``loc.prefix_len`` such that every network of the
        aligned /L block around ``loc``'s network has the decision ``mine``, as far as
        ``budget`` search-tree nodes allow: ``(L, None)`` when that is final, ``(L, spent)``
        when the budget ran out first (the block is uniform, so a correct scope, only perhaps
        narrower; call again to go on).

        ``decision(record)`` gives the decision of a search-tree record (a data pointer, or the
        empty record: the unknown location; ``place_at`` turns it into a ``Location``), or
        None: "not now" (the caller's budget of chain runs ran out). ``nodes`` (the caller's
        ``node_memo()``, one per decision function) keeps what the walks found.

        Walks up from the matched network one bit at a time; at each step every network of the
        sibling subtree must have ``mine`` (found false by the first one that has not). Like gdnsd's merge of supernets at load time, but done
        lazily for the networks clients come from, and memoised per subtree, so neighbouring
        networks share the work. IPv4-mapped IPv6 clients are not widened.
        """
        tree = self._tree
        length = loc.prefix_len
        if tree is None or nodes is None or length == 0 or not loc.family:
            return length, None
        if family == 6 and (tree.ip_version == 4 or loc.network >> 32 == 0xFFFF):
            return length, None
        bits = 32 if family == 4 else 128
        children = tree.children
        count = tree.node_count
        net = loc.network
        node = tree.ipv4_start if family == 4 else 0
        path = []
        for i in range(length):  # the nodes from the family's root down to the matched network
            if node >= count:
                return length, None  # not the tree the lookup saw (cannot happen): do not widen
            path.append(node)
            node = children(node)[net >> (bits - 1 - i) & 1]
        left = [budget]
        ids, decisions, leaves = nodes.ids, nodes.decisions, nodes.leaves
        put = nodes.put

        def all_mine(n: int) -> bool | None:
            """Every network under ``n`` has ``mine`` (True), one has not (False, found by the
            shortest descent: a sibling with another answer costs a few reads, not a walk
            over it), or the budget ran out (None)."""
            if n >= count:  # a network: its record's decision
                d = leaves.get(n)
                if d is None:
                    d = decision(n)
                    if d is None:
                        return None
                    leaves.put(n, d)
                return d == mine
            i = ids[n]
            if i:
                return i != 1 and decisions[i] == mine
            if left[0] <= 0:
                return None
            left[0] -= 1
            a, b = children(n)
            r = all_mine(a)
            if r is True:
                r = all_mine(b)
                if r is not None:  # all mine, or mine on the left and not on the right
                    put(n, mine if r else MIXED)
            return r

        while length > 0:
            bit = net >> (bits - length) & 1
            r = all_mine(children(path[length - 1])[1 - bit])
            if r is None:
                return length, budget - left[0]
            if not r:
                return length, None
            length -= 1
            put(path[length], mine)  # both halves uniform: the parent is (for neighbours)
        return 0, None


# -- distances ---------------------------------------------------------------------------------
_R_KM = 6371.0088


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _R_KM * math.asin(min(1.0, math.sqrt(a)))
