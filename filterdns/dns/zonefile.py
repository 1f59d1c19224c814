"""Where each record of a master file is, and what is wrong with it, in our own words.

dnspython loads the zone (``filterdns.dns.zones``); this module reads the same file as text
(RFC 1035 section 5.1: ``$ORIGIN``, ``$TTL``, blank owners, parentheses, quotes, comments) so
that every problem names ``file:line`` and says what is wrong:

* ``scan(text, origin)`` - the records (line, owner, type, rdata tokens) and ``$ORIGIN``
  directives, without validating record data;
* ``explain_rdata(entry, origin)`` - why a record's data does not parse ("192.0.2.256 is not an
  IPv4 address"), instead of dnspython's "Text input is malformed.";
* ``outside(entries, directives, origin)`` - ``$ORIGIN`` lines and owner names outside the
  zone (dnspython drops those records silently);
* ``lines_of(entries, name, rdtype)`` - the lines holding a name's records of one type.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype


@dataclass(frozen=True, slots=True)
class Entry:
    """One record as written: its first line, owner, type and data tokens."""

    line: int
    owner_text: str | None  # the owner as written ("@", "www", "a.example.com."), inherited when blank
    owner_origin: dns.name.Name  # the $ORIGIN that owner_text is relative to
    owner_written: str | None  # the owner token on this line, or None when inherited (blank owner)
    type_text: str
    rdtype: int | None
    rdata: tuple[str, ...]
    origin: dns.name.Name  # the $ORIGIN in force for the record data

    @property
    def owner(self) -> dns.name.Name | None:
        if self.owner_text is None:
            return None
        if self.owner_text == "@":
            return self.owner_origin
        try:
            return dns.name.from_text(self.owner_text, self.owner_origin)
        except dns.exception.DNSException:
            return None

    @property
    def key(self) -> str | None:
        """The owner as lowercase absolute text, by string operations (grouping, comparing)."""
        t = self.owner_text
        if t is None:
            return None
        if t == "@":
            return self.owner_origin.to_text().lower()
        if t.endswith(".") and not t.endswith("\\."):
            return t.lower()
        o = self.owner_origin.to_text()
        return f"{t}.{o}".lower() if o != "." else f"{t}.".lower()


@dataclass(frozen=True, slots=True)
class Directive:
    line: int
    name: str  # $ORIGIN, $TTL, $INCLUDE, $GENERATE
    args: tuple[str, ...]


@dataclass(slots=True)
class Scan:
    entries: list[Entry] = field(default_factory=list)
    directives: list[Directive] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, message)


#: what each common type's data looks like, for "expected: ..." hints
FORMATS = {
    "A": "an IPv4 address", "AAAA": "an IPv6 address", "NS": "a host name", "CNAME": "a target name",
    "PTR": "a target name", "MX": "PREFERENCE (0-65535) HOST", "SRV": "PRIORITY WEIGHT PORT TARGET",
    "TXT": '"text" ["more text" ...]', "CAA": 'FLAGS TAG "VALUE"',
    "SOA": "MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM",
}

_SPECIAL = re.compile(r'[;()"\\]')


def _logical_lines(text: str):
    """(first line number, owner column blank?, tokens) per logical line; parentheses join
    physical lines, ``;`` starts a comment outside quotes."""
    paren = 0
    tokens: list[str] = []
    start, lead = 0, False
    for no, line in enumerate(text.splitlines(), 1):
        if paren == 0:
            start, lead, tokens = no, line[:1] in (" ", "\t"), []
            if _SPECIAL.search(line) is None:  # the common line: plain words
                words = line.split()
                if words:
                    yield start, lead, words
                continue
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if c in " \t\r":
                i += 1
            elif c == ";":
                break
            elif c == "(":
                paren += 1
                i += 1
            elif c == ")":
                paren = max(0, paren - 1)
                i += 1
            elif c == '"':
                j = i + 1
                while j < n and line[j] != '"':
                    j += 2 if line[j] == "\\" else 1
                tokens.append(line[i:j + 1])
                i = j + 1
            else:
                j = i
                while j < n and line[j] not in ' \t\r;()"':
                    j += 2 if line[j] == "\\" else 1
                tokens.append(line[i:j])
                i = j
        if paren == 0 and tokens:
            yield start, lead, tokens
            tokens = []
    if tokens:
        yield start, lead, tokens


_TTL = re.compile(r"^(\d+[smhdwSMHDW]?)+$")
_CLASSES = {"IN", "CH", "CHAOS", "HS", "HESIOD", "NONE", "ANY"}
_TYPES: dict[str, int | None] = {}


def _rdtype(up: str) -> int | None:
    try:
        return _TYPES[up]
    except KeyError:
        pass
    try:
        t = dns.rdatatype.from_text(up)
    except dns.exception.DNSException:
        t = None
    if len(_TYPES) < 4096:
        _TYPES[up] = t
    return t


def _is_class(tok: str) -> bool:
    up = tok.upper()
    return up in _CLASSES or (up.startswith("CLASS") and up[5:].isdigit())


def scan(text: str, origin_text: str) -> Scan:
    """Read a master file's records and directives (no validation of record data)."""
    out = Scan()
    origin = dns.name.from_text(origin_text)
    owner: tuple[str | None, dns.name.Name] = (None, origin)
    entries = out.entries
    for line, lead, toks in _logical_lines(text):
        if not lead and toks[0].startswith("$"):
            d = Directive(line, toks[0].upper(), tuple(toks[1:]))
            out.directives.append(d)
            if d.name == "$ORIGIN" and d.args:
                try:
                    origin = dns.name.from_text(d.args[0], origin)
                except dns.exception.DNSException as e:
                    out.problems.append((line, f"$ORIGIN {d.args[0]}: not a domain name ({e})"))
            continue
        written = None
        i = 0
        if not lead:
            written = toks[0]
            owner = (written, origin)
            i = 1
        for _ in range(2):  # [TTL] [CLASS] in either order
            if i < len(toks) and (_TTL.match(toks[i]) or _is_class(toks[i])):
                i += 1
        if i >= len(toks):
            continue
        type_text = toks[i].upper()
        entries.append(Entry(line, owner[0], owner[1], written, type_text, _rdtype(type_text),
                             tuple(toks[i + 1:]), origin))
    return out


def entry_at(entries: list[Entry], line: int) -> Entry | None:
    """The record written on (or continued onto) ``line``."""
    best = None
    for e in entries:
        if e.line <= line:
            best = e
        else:
            break
    return best


def _where(e: Entry) -> str:
    return f"{e.owner} {e.type_text}" if e.owner is not None else e.type_text


def explain_rdata(e: Entry) -> str | None:
    """Why this record's data does not parse, or None if it does."""
    data = " ".join(e.rdata)
    if e.rdtype is None:
        return f"{e.owner or ''} {e.type_text}: {e.type_text!r} is not a record type (nor a TTL or class)".lstrip()
    if not e.rdata:
        return f"{_where(e)}: no record data (expected: {FORMATS.get(e.type_text, 'the data of a ' + e.type_text + ' record')})"
    if e.type_text == "A":
        try:
            ipaddress.IPv4Address(data)
        except ValueError:
            return f"{_where(e)} {data}: {data} is not an IPv4 address (four numbers 0-255, dotted)"
    elif e.type_text == "AAAA":
        try:
            ipaddress.IPv6Address(data)
        except ValueError:
            return f"{_where(e)} {data}: {data} is not an IPv6 address"
    try:
        dns.rdata.from_text(dns.rdataclass.IN, e.rdtype, data, origin=e.origin, relativize=False)
    except dns.exception.DNSException as exc:
        reason = str(exc).strip().rstrip(".")
        generic = not reason or reason in ("Text input is malformed", "The DNS operation timed out")
        expected = FORMATS.get(e.type_text)
        msg = f"{_where(e)} {data}: not valid {e.type_text} data"
        if expected:
            msg += f" (expected: {expected})"
        if not generic:
            msg += f": {reason}"
        return msg
    return None


def outside(sc: Scan, zone: dns.name.Name) -> list[tuple[int, str]]:
    """``$ORIGIN`` directives and owner names outside the zone: dnspython drops such records
    without a word, so a wrong ``$ORIGIN`` would otherwise surface as a missing SOA or
    silently missing names."""
    out = []
    bad_origins = set()
    origin = zone
    for d in sc.directives:
        if d.name == "$ORIGIN" and d.args:
            try:
                origin = dns.name.from_text(d.args[0], origin)
            except dns.exception.DNSException:
                continue
            if not origin.is_subdomain(zone):
                bad_origins.add(origin)
                out.append((d.line, f"$ORIGIN {origin} does not match the zone {zone} (named by the "
                                    f"file name): every name after it falls outside the zone; "
                                    f"use $ORIGIN {zone} or a name under it, or rename the file"))
    ztext = zone.to_text().lower()
    suffix = "." + ztext if ztext != "." else ""
    inside_origin: dict[dns.name.Name, bool] = {}
    for e in sc.entries:
        t = e.owner_written
        if t is None:
            continue  # inherited owner: reported (or not) where it was written
        if t == "@" or not t.endswith("."):  # relative to the $ORIGIN in force
            ok = inside_origin.get(e.owner_origin)
            if ok is None:
                ok = inside_origin[e.owner_origin] = e.owner_origin.is_subdomain(zone)
            if ok or e.owner_origin in bad_origins:
                continue  # inside, or already reported at its $ORIGIN
        else:
            low = t.lower()
            if low == ztext or low.endswith(suffix):
                continue
        owner = e.owner
        if owner is None:
            out.append((e.line, f"owner {t!r} is not a domain name"))
        elif not owner.is_subdomain(zone):
            out.append((e.line, f"{owner} is outside the zone {zone}; records must be at or below "
                                f"the zone's name"))
    return out


def lines_of(entries: list[Entry], name: dns.name.Name, rdtype: int) -> list[int]:
    key = name.to_text().lower()
    return [e.line for e in entries if e.rdtype == rdtype and e.key == key]
