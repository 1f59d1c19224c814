"""Static zone data: RFC 1035 master files loaded with dnspython, pre-rendered for the wire.

One file per zone under the zones directory, named ``<zone>.zone`` (``example.com.zone``).
Loading happens once per (re)load; per query the core only does dict look-ups here:

* ``ZoneStore.find(qname_lower)`` - the closest enclosing zone (longest suffix), or None;
  ``ZoneStore.answering(qname_lower, qtype)`` - the zone that answers (the parent for DS at a
  served child's apex).
* ``Zone.nodes`` - owner (lowercase wire) -> ``Node`` with its RRsets by type.
* ``Zone.names`` - every name that exists, empty non-terminals included (NODATA, not NXDOMAIN).
* ``Zone.cuts`` - delegation points (NS below the apex), for referrals.

Record data is rendered to bytes at load time; names inside NS, CNAME, PTR, MX and SOA rdata are
kept as ``wire.Name`` parts so the renderer can compress them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.zonefile
import dns.rdataclass
import dns.rdatatype
import dns.zone

from filterdns.errors import ConfigError, Problem, list_config_dir
from filterdns.model import CNAME, DS, MX, NS, PTR, SOA, SRV
from filterdns.dns import zonefile
from filterdns.dns.wire import Name, name_to_text

_COMPRESSIBLE = {NS, CNAME, PTR}


@dataclass(slots=True)
class RRset:
    rtype: int
    ttl: int
    rdatas: tuple  # each bytes, or a tuple of bytes / Name parts
    targets: tuple[Name, ...] = ()  # names whose addresses belong in the additional section


@dataclass(slots=True)
class Node:
    name: Name
    rrsets: dict[int, RRset] = field(default_factory=dict)


@dataclass(slots=True)
class Zone:
    origin: Name
    file: str
    nodes: dict[bytes, Node]
    names: frozenset[bytes]
    cuts: frozenset[bytes]
    soa: RRset
    neg_ttl: int
    has_wildcards: bool
    serial: int

    def soa_record(self):
        """The SOA for the authority section of a negative answer (TTL = negative TTL)."""
        return (self.origin, SOA, 1, self.neg_ttl, self.soa.rdatas[0])


def _rdata_parts(rd) -> bytes | tuple:
    t = rd.rdtype
    if t in _COMPRESSIBLE:
        return (Name(rd.target.to_wire()),)
    if t == MX:
        return (struct.pack("!H", rd.preference), Name(rd.exchange.to_wire()))
    if t == SOA:
        return (Name(rd.mname.to_wire()), Name(rd.rname.to_wire()),
                struct.pack("!IIIII", rd.serial, rd.refresh, rd.retry, rd.expire, rd.minimum))
    return rd.to_wire()


def _targets(rdataset) -> tuple[Name, ...]:
    t = rdataset.rdtype
    if t == NS or t == SRV:
        return tuple(Name(rd.target.to_wire()) for rd in rdataset)
    if t == MX:
        return tuple(Name(rd.exchange.to_wire()) for rd in rdataset)
    return ()


def _line_text(path: str, lineno: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for no, line in enumerate(f, 1):
                if no == lineno:
                    line = " ".join(line.split())
                    return line if len(line) <= 100 else line[:97] + "..."
    except OSError:
        pass
    return ""


def _real_line(path: str, origin_text: str, reported: int) -> int:
    """dnspython reports an error in record data one line late (after it has read the end of
    the line); other errors on their own line. If the file up to the line before the reported
    one already fails, the error is on that line."""
    if reported <= 1:
        return reported
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = "".join(line for _, line in zip(range(reported - 1), f, strict=False))
        dns.zone.from_text(head, origin=origin_text, relativize=False, check_origin=False)
    except dns.exception.DNSException:
        return reported - 1
    except OSError:
        return reported
    return reported


def _scan(path: str, origin_text: str) -> zonefile.Scan | None:
    """The file's records with their lines (None if it cannot be read as text)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return zonefile.scan(f.read(), origin_text)
    except (OSError, dns.exception.DNSException, ValueError):
        return None


def _syntax_problem(path: str, origin_text: str, msg: str, sc: zonefile.Scan | None) -> Problem:
    """dnspython's "path:line: reason" in our words: the record's own line and what is wrong
    with its data ("192.0.2.256 is not an IPv4 address"), else its reason and the line."""
    prefix = f"{path}:"
    if not msg.startswith(prefix):
        return Problem(path, None, None, msg)
    line, _, reason = msg[len(prefix):].partition(":")
    if not line.isdigit():
        return Problem(path, None, None, msg)
    reported = int(line)
    if sc is not None:
        # an error in record data is reported after the end of its line: try the line before too
        for cand in (reported - 1, reported):
            e = zonefile.entry_at(sc.entries, cand)
            if e is not None and (why := zonefile.explain_rdata(e)):
                return Problem(path, e.line, None, why)
    lineno = _real_line(path, origin_text, reported)
    reason = reason.strip()
    text = _line_text(path, lineno)
    if text:
        reason += f" in: {text}"
    return Problem(path, lineno, None, reason)


def _cname_problems(path: str, sc: zonefile.Scan | None, fallback: str) -> list[Problem]:
    """A CNAME beside other data at one name (RFC 1034 3.6.2), at the CNAME's line."""
    out = []
    if sc is not None:
        by_owner: dict = {}
        for e in sc.entries:
            if e.owner_text is not None and e.rdtype is not None:
                by_owner.setdefault(e.key, []).append(e)
        for entries in by_owner.values():
            cnames = [e for e in entries if e.rdtype == CNAME]
            others = [e for e in entries if e.rdtype not in (CNAME, dns.rdatatype.RRSIG, dns.rdatatype.NSEC)]
            if cnames and others:
                listed = ", ".join(f"{e.type_text} at line {e.line}" for e in others)
                out.append(Problem(path, cnames[0].line, None,
                                   f"{cnames[0].owner}: a CNAME cannot coexist with other data at the same name "
                                   f"({listed}); keep the CNAME or the other records"))
    return out or [Problem(path, None, None, fallback)]


def load_zone(path: str, origin_text: str, problems: list[Problem]) -> Zone | None:
    """Load one master file; append problems (with file:line) and return None on error."""
    sc = _scan(path, origin_text)
    outside = []
    if sc is not None:
        outside = [Problem(path, line, None, msg) for line, msg in sc.problems]
        outside += [Problem(path, line, None, msg)
                    for line, msg in zonefile.outside(sc, dns.name.from_text(origin_text))]
        problems.extend(outside)
    try:
        z = dns.zone.from_file(path, origin=origin_text, relativize=False, check_origin=True)
    except dns.exception.SyntaxError as e:
        problems.append(_syntax_problem(path, origin_text, str(e), sc))
        return None
    except dns.zone.NoSOA:
        if not outside:  # a wrong $ORIGIN already says why the apex has no SOA
            soas = [e for e in (sc.entries if sc else ()) if e.rdtype == SOA]
            if soas:
                problems.append(Problem(path, soas[0].line, None,
                                        f"the SOA record is owned by {soas[0].owner}, not by the zone's "
                                        f"apex {origin_text} (named by the file name)"))
            else:
                problems.append(Problem(path, None, None, f"zone {origin_text} has no SOA record at its apex"))
        return None
    except dns.zone.NoNS:
        problems.append(Problem(path, None, None, f"zone {origin_text} has no NS records at its apex"))
        return None
    except dns.zonefile.CNAMEAndOtherData as e:
        problems.extend(_cname_problems(path, sc, f"a CNAME cannot coexist with other data ({e})"))
        return None
    except (dns.exception.DNSException, OSError, UnicodeError) as e:
        problems.append(Problem(path, None, None, f"cannot load zone {origin_text}: {e}"))
        return None
    if outside:
        return None

    origin = Name(z.origin.to_wire())
    nodes: dict[bytes, Node] = {}
    names: set[bytes] = set()
    cuts: set[bytes] = set()
    has_wild = False
    bad = False
    for dname, dnode in z.nodes.items():
        name = Name(dname.to_wire())
        node = Node(name)
        for rds in dnode.rdatasets:
            if rds.rdclass != dns.rdataclass.IN:
                continue
            node.rrsets[rds.rdtype] = RRset(rds.rdtype, rds.ttl,
                                            tuple(_rdata_parts(rd) for rd in rds), _targets(rds))
        if CNAME in node.rrsets and len(node.rrsets) > 1:
            problems.extend(_cname_problems(path, sc, f"{dname}: a CNAME cannot coexist with other data"))
            bad = True
        if name.lower == origin.lower and CNAME in node.rrsets:
            lines = zonefile.lines_of(sc.entries, dname, CNAME) if sc else []
            problems.append(Problem(path, lines[0] if lines else None, None,
                                    f"{dname}: a CNAME at the zone apex (the apex has SOA and NS)"))
            bad = True
        nodes[name.lower] = node
        if name.lower[:2] == b"\x01*":
            has_wild = True
        if NS in node.rrsets and name.lower != origin.lower:
            cuts.add(name.lower)
        # the name and every ancestor up to the origin exist (empty non-terminals)
        low = name.lower
        i = 0
        while len(low) - i >= len(origin.lower):
            names.add(low[i:])
            if len(low) - i == len(origin.lower):
                break
            i += low[i] + 1
    if bad:
        return None
    soa = nodes[origin.lower].rrsets[SOA]
    soa_rd = z.find_rdataset(z.origin, dns.rdatatype.SOA)[0]
    neg_ttl = min(soa.ttl, soa_rd.minimum)
    return Zone(origin, path, nodes, frozenset(names), frozenset(cuts), soa, neg_ttl, has_wild,
                soa_rd.serial)


class ZoneStore:
    """All served zones, by lowercase wire origin."""

    __slots__ = ("zones",)

    def __init__(self, zones: dict[bytes, Zone]):
        self.zones = zones

    def find(self, qname_lower: bytes) -> Zone | None:
        zones = self.zones
        i = 0
        while True:
            z = zones.get(qname_lower[i:])
            if z is not None:
                return z
            n = qname_lower[i]
            if n == 0:
                return None
            i += n + 1

    def answering(self, qname_lower: bytes, qtype: int) -> Zone | None:
        """The zone that answers a query: the closest enclosing one, except for DS at the apex
        of a zone whose parent is served too and delegates it, which the parent answers (the DS RRset lives on
        the parent side of the cut, RFC 4035 §3.1.4.1)."""
        z = self.find(qname_lower)
        if qtype == DS and z is not None and len(qname_lower) == len(z.origin.lower) and qname_lower[0]:
            parent = self.find(qname_lower[qname_lower[0] + 1:])
            if parent is not None and qname_lower in parent.cuts:
                return parent
        return z

    def origins(self) -> list[str]:
        """Zone names as lowercase absolute text ("example.com.")."""
        return [name_to_text(origin) for origin in self.zones]


def load_zones(zones_dir: str | os.PathLike) -> tuple[ZoneStore, tuple[str, ...]]:
    """Load every ``*.zone`` file of a directory. Raises ConfigError listing every problem."""
    problems: list[Problem] = []
    d = Path(zones_dir)
    names = list_config_dir(d, "zones")  # missing, not a directory, unreadable: said as such
    zones: dict[bytes, Zone] = {}
    files = [str(d / n) for n in names if n.endswith(".zone") and not n.startswith(".")]
    if not files:
        problems.append(Problem(str(d), None, None, "no zone files (*.zone) in the zones directory"))
    for path in files:
        origin = os.path.basename(path)[:-len(".zone")].rstrip(".") + "."
        try:
            dns.name.from_text(origin)
        except dns.exception.DNSException as e:
            problems.append(Problem(path, None, None, f"file name is not a zone name: {e}"))
            continue
        z = load_zone(path, origin, problems)
        if z is not None:
            if z.origin.lower in zones:
                problems.append(Problem(path, None, None, f"zone {origin} is loaded twice"))
            zones[z.origin.lower] = z
    if problems:
        raise ConfigError(problems)
    return ZoneStore(zones), tuple(files)

