"""DNS wire format: parse a query, render an answer (RFC 1035, 6891 EDNS0, 7871 ECS).

This module owns packet bytes; nothing else on the query path touches them. It is written for
the hot path: ``struct`` and slicing, no dnspython/dnslib objects (those cost 150-450 µs per
message here; this parser takes a few µs).

Parsing (``parse_query``) accepts any packet and either returns a ``Query`` or raises:

* ``Drop``   - nothing may be sent back (short header, QR=1); counted by the caller.
* ``FormErr`` - the header was readable; the caller answers ``formerr_response(err)``.

Rendering (``Answer`` + ``render``) joins pre-rendered byte fragments: record bodies are built
at load time, names are compressed against the question (a pointer to offset 12 for the query
name), and only the header, the question and the OPT record are made per query. Responses larger
than the limit are truncated to header + question + OPT with TC=1 (RFC 2181 §9, RFC 6891 §7).
"""

from __future__ import annotations

import socket
import struct
from filterdns.cache import Cache
from filterdns.dns import identity
from filterdns.model import BADVERS, FORMERR, NOTIMP, OPT

_ntop = socket.inet_ntop
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_HDR = struct.Struct("!6H")
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_RRFIX = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPTFIX = struct.Struct("!BHHIH")  # root name, type, class=payload, ttl, rdlength

#: the UDP payload size we advertise and cap answers at (DNS flag day 2020)
OUR_PAYLOAD = 1232
MIN_PAYLOAD = 512

#: response header bits
QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
_COPY_BITS = RD | CD  # copied from the query; everything else is ours
EDNS_ECS = 8
DO_BIT = 0x8000


class Drop(Exception):
    """The packet must not be answered (unreadable header, or a response)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FormErr(Exception):
    """A malformed query whose header was readable: answer FORMERR (or NOTIMP, see rcode)."""

    def __init__(self, reason: str, qid: int, flags: int, question: bytes = b"",
                 edns: bool = False, rcode: int = FORMERR, do: bool = False, extra: bytes = b""):
        super().__init__(reason)
        self.extra = extra  # one record to append last (the TSIG of a NOTAUTH/BADKEY)
        self.reason = reason
        self.qid = qid
        self.flags = flags
        self.question = question  # raw question bytes to echo, or b""
        self.edns = edns  # the query had a well-formed OPT: answer with ours
        self.rcode = rcode
        self.do = do


class ECS:
    """A validated EDNS Client Subnet option (RFC 7871 §6)."""

    __slots__ = ("family", "source", "scope", "address", "raw_addr", "client", "_opt")

    def __init__(self, family: int, source: int, scope: int, address: str, raw_addr: bytes):
        self.family = family  # 1 = IPv4, 2 = IPv6
        self.source = source
        self.scope = scope
        self.address = address  # textual, full length (zero padded)
        self.raw_addr = raw_addr  # as sent: ceil(source / 8) bytes
        self.client = None  # the model.Client for this subnet, made once by the responder
        self._opt = None  # (scope, do, our OPT record): the last one made (answers repeat it)

    def echo(self, scope: int) -> bytes:
        """The option as it goes back: family, source and address as sent, our scope."""
        s = min(scope, 32 if self.family == 1 else 128)
        body = struct.pack("!HBB", self.family, self.source, s) + self.raw_addr
        return struct.pack("!HH", EDNS_ECS, len(body)) + body

    def opt(self, scope: int, do: bool) -> bytes:
        """Our whole OPT record carrying this option back with ``scope``; the last one is kept
        (a subnet's answers carry one scope until its scope walk widens it)."""
        o = self._opt
        if o is None or o[0] != scope or o[1] != do:
            o = self._opt = (scope, do, opt_record(do=do, options=self.echo(scope)))
        return o[2]

    def __repr__(self) -> str:
        return f"ECS({self.address}/{self.source}, scope {self.scope})"


class Query:
    """One parsed query: header fields, the question, EDNS and ECS."""

    __slots__ = ("id", "flags", "opcode", "qname", "qname_lower", "qtype", "qclass",
                 "question", "edns", "payload", "do", "ecs", "nsid")

    def __init__(self):
        self.edns = False  # an OPT record was present
        self.payload = MIN_PAYLOAD  # the largest UDP response the client takes
        self.do = False
        self.ecs: ECS | None = None
        self.nsid = False  # the query asked for our NSID (RFC 5001)

    def __repr__(self) -> str:
        return (f"Query(id={self.id}, {name_to_text(self.qname)} {self.qtype} {self.qclass}, "
                f"edns={self.edns}, payload={self.payload}, ecs={self.ecs!r})")


def name_to_text(wire: bytes) -> str:
    """Uncompressed wire name to presentation text (for logs and keys of config)."""
    out = []
    i = 0
    while wire[i]:
        n = wire[i]
        label = wire[i + 1:i + 1 + n]
        out.append("".join(
            chr(c) if 0x21 <= c <= 0x7E and c not in b'.\\"();' else
            ("\\" + chr(c) if c in b'.\\"();' else f"\\{c:03d}") for c in label))
        i += n + 1
    return ".".join(out) + "."


def text_to_wire(name: str) -> bytes:
    """Presentation name (absolute or not, no escapes) to uncompressed wire bytes."""
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    return b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.split(".")) + b"\x00"


def _read_name(data: bytes, off: int, end: int) -> tuple[bytes, int]:
    """Read a possibly compressed name; return (uncompressed wire, offset after it).

    The rules are dnspython's (the strict parser the fuzz tests check against): every pointer
    points before the previous one (so before the name itself), at most 16 of them, and the
    target of a pointer may not run into the part already read.
    """
    parts = []
    total = 0
    after = -1
    hops = 0
    start = biggest = off
    limit = end
    while True:
        if off >= limit:
            raise ValueError("name runs past the end")
        n = data[off]
        if n == 0:
            parts.append(b"\x00")
            total += 1
            if total > 255:
                raise ValueError("name longer than 255 octets")
            return b"".join(parts), (off + 1 if after < 0 else after)
        if n >= 0xC0:
            if off + 1 >= limit:
                raise ValueError("truncated compression pointer")
            ptr = ((n & 0x3F) << 8) | data[off + 1]
            if after < 0:
                after = off + 2
            if ptr >= biggest:
                raise ValueError("compression pointer does not point backwards")
            hops += 1
            if hops > 16:
                raise ValueError("compression pointer chain longer than 16")
            biggest = ptr
            limit = start
            off = start = ptr
            continue
        if n & 0xC0:
            raise ValueError("bad label type")
        if off + 1 + n > limit:
            raise ValueError("label runs past the end")
        parts.append(data[off:off + 1 + n])
        total += n + 1
        if total > 255:
            raise ValueError("name longer than 255 octets")
        off += n + 1


def _skip_name(data: bytes, off: int, end: int) -> int:
    return _read_name(data, off, end)[1]


_ECS_CACHE = Cache(50_000)  # option bytes -> ECS (bounded: filterdns.cache)


def _parse_ecs(body: bytes) -> ECS:
    """Validated ECS option (cached by its bytes: resolvers repeat the same subnets)."""
    e = _ECS_CACHE.get(body)
    if e is None:
        e = _ECS_CACHE.put(body, _parse_ecs_uncached(body))
    return e


def _parse_ecs_uncached(body: bytes) -> ECS:
    if len(body) < 4:
        raise ValueError("ECS option shorter than 4 octets")
    family, source, scope = struct.unpack_from("!HBB", body)
    raw = body[4:]
    if family == 1:
        maxlen = 32
    elif family == 2:
        maxlen = 128
    else:
        raise ValueError(f"ECS family {family} is not IPv4 (1) or IPv6 (2)")
    if source > maxlen:
        raise ValueError(f"ECS source prefix {source} beyond {maxlen}")
    if scope > maxlen:
        raise ValueError(f"ECS scope prefix {scope} beyond {maxlen}")
    if len(raw) != (source + 7) // 8:
        raise ValueError(f"ECS address is {len(raw)} octets, source prefix {source} needs {(source + 7) // 8}")
    if source % 8 and raw[-1] & (0xFF >> (source % 8)):
        raise ValueError("ECS address has bits set past the source prefix")
    full = raw + b"\x00" * (maxlen // 8 - len(raw))
    addr = _ntop(_AF_INET if family == 1 else _AF_INET6, full)
    return ECS(family, source, scope, addr, raw)


def parse_query(data: bytes) -> Query:  # noqa: C901 - one linear pass over the packet, kept inline for speed
    """Parse one query message. Raises ``Drop`` or ``FormErr``; see the module docstring."""
    end = len(data)
    if end < 12:
        raise Drop("short")
    qid, flags, qd, an, ns, ar = _HDR.unpack_from(data)
    if flags & QR:
        raise Drop("qr_set")
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        # NOTIFY, IQUERY, STATUS, UPDATE and unassigned: header only (RFC 1035 §4.1.1)
        raise FormErr(f"opcode {opcode}", qid, flags, rcode=NOTIMP)
    if qd != 1:
        raise FormErr(f"qdcount {qd}", qid, flags)
    # the usual question name: plain labels, no compression; scanned without copying
    off = 12
    while off < end:
        n = data[off]
        if n == 0 or n & 0xC0:
            break
        off += n + 1
    if off < end and data[off] == 0 and off - 12 < 255:
        off += 1
        qname = data[12:off]
    else:
        try:
            qname, off = _read_name(data, 12, end)
        except ValueError as e:
            raise FormErr(str(e), qid, flags) from None
    if off + 4 > end:
        raise FormErr("question runs past the end", qid, flags)
    qtype, qclass = _HH.unpack_from(data, off)
    off += 4
    q = Query()
    q.id = qid
    q.flags = flags
    q.opcode = 0
    q.qname = qname
    q.qname_lower = qname.lower()
    q.qtype = qtype
    q.qclass = qclass
    q.question = data[12:off] if off - 12 == len(qname) + 4 else qname + data[off - 4:off]
    if an == 0 and ns == 0 and ar == 0:
        if off != end:
            raise FormErr("trailing octets after the question", qid, flags, q.question)
        return q
    if an == 0 and ns == 0 and ar == 1 and _lean_opt(data, off, end, q):
        return q
    _parse_strict(data, off, end, an, ns, ar, q)
    return q


#: EDNS options the lean path validates itself (NSID: any bytes; ECS; COOKIE: lengths)
_LEAN_CHECKED = frozenset({3, EDNS_ECS, 10})
_STRICT_CODES: dict[int, bool] = {}


def _strict_option(code: int) -> bool:
    """Does the strict parser (dnspython) give this option code a validating class? Those
    options go to the strict path; any other code is opaque bytes to both parsers."""
    v = _STRICT_CODES.get(code)
    if v is None:
        import dns.edns

        v = _STRICT_CODES[code] = dns.edns.get_option_class(code) is not dns.edns.GenericOption
    return v


def _cookie_ok(olen: int) -> bool:
    """RFC 7873 §4: a client cookie (8 octets) and an optional server cookie (8-32 octets)."""
    return olen == 8 or 16 <= olen <= 40


def _lean_opt(data: bytes, off: int, end: int, q: Query) -> bool:
    """The common EDNS query: one OPT, root owner, ending the message, every option one we
    validate here. True when it is exactly that (``q`` then carries EDNS and ECS); False
    sends the packet to the strict path, which finds what is wrong (or right) with it.
    Raises FormErr(BADVERS) for a well-formed OPT of another version."""
    if off + 11 > end or data[off] != 0:
        return False
    rtype, rclass, ttl, rdlen = _RRFIX.unpack_from(data, off + 1)
    o = off + 11
    oend = o + rdlen
    if rtype != OPT or oend != end:
        return False
    ecs = None
    while o < oend:
        if o + 4 > oend:
            return False
        code, olen = _HH.unpack_from(data, o)
        o += 4
        if o + olen > oend:
            return False
        if code == EDNS_ECS:
            if ecs is not None:
                return False
            try:
                ecs = _parse_ecs(data[o:o + olen])
            except ValueError:
                return False
        elif code == 10:
            if not _cookie_ok(olen):
                return False
        elif code == 3:
            q.nsid = True
        elif code not in _LEAN_CHECKED and _strict_option(code):
            return False
        o += olen
    _set_edns(q, rclass, ttl, ecs)
    return True


def _set_edns(q: Query, payload: int, ttl: int, ecs) -> None:
    q.edns = True
    q.payload = payload if payload > MIN_PAYLOAD else MIN_PAYLOAD
    q.do = bool(ttl & DO_BIT)
    q.ecs = ecs
    version = (ttl >> 16) & 0xFF
    if version != 0:
        raise FormErr(f"EDNS version {version}", q.id, q.flags, q.question, edns=True,
                      rcode=BADVERS, do=q.do)


TSIG = 250
NOTAUTH = 9
BADKEY = 17


def _parse_strict(data: bytes, off: int, end: int, an: int, ns: int, ar: int, q: Query) -> None:
    """Everything the lean path did not accept: walk every record, then let the strict parser
    (dnspython, which also checks each record's data and each known option) judge the whole
    message. FORMERR for anything malformed (RFC 1035 §4.1, RFC 6891 §6.1.1): records that
    run past the end, trailing octets, an OPT outside the additional section, a second OPT,
    an OPT whose owner is not the root octet, invalid options. The FORMERR carries our OPT
    when the query had a usable one: exactly one OPT in the additional section, version 0.
    A TSIG-signed query gets NOTAUTH/BADKEY (RFC 8945 §5.2): this server holds no keys."""
    qid, flags, question = q.id, q.flags, q.question
    opts, tsig, problem = _walk_records(data, off, end, an, ns, ar)
    extra = [o for o in opts if o[0] == 2]
    usable = len(extra) == 1 and not (extra[0][3] >> 16) & 0xFF
    do = usable and bool(extra[0][3] & DO_BIT)

    def formerr(reason):
        return FormErr(reason, qid, flags, question, edns=usable, do=do)

    if problem is not None:
        raise formerr(problem)
    if len(extra) != len(opts):
        raise formerr("OPT record outside the additional section")
    if len(extra) > 1:
        raise FormErr("more than one OPT record", qid, flags, question)
    ecs = None
    if extra:
        _, root_owner, rclass, ttl, o, oend = extra[0]
        if not root_owner:
            raise formerr("OPT record not owned by the root (a single zero octet)")
        try:
            ecs = _check_options(data, o, oend, q)
        except ValueError as e:
            raise formerr(str(e)) from None
    import dns.message

    try:  # records' data and every known option, as the strict parser sees them
        dns.message.from_wire(data, keyring=False)
    except Exception as e:  # noqa: BLE001 - any rejection is a malformed query
        raise formerr(f"malformed record ({type(e).__name__}: {e})") from None
    if tsig is not None:
        raise _badkey(q, data, tsig, usable, do)
    if extra:
        _set_edns(q, rclass, ttl, ecs)


def _walk_records(data: bytes, off: int, end: int, an: int, ns: int, ar: int):
    """Walk every record after the question with the strict parser's name rules. Returns
    (OPT records as (section, owner is the root octet, class, ttl, rdata start, rdata end),
    the TSIG as (owner, rdata start, rdata end) when it is the last record, the first problem
    found or None)."""
    opts = []
    tsig = None
    total = an + ns + ar
    try:
        for i in range(total):
            section = 0 if i < an else (1 if i < an + ns else 2)
            start = off
            owner, off = _read_name(data, off, end)
            if off + 10 > end:
                raise ValueError("record runs past the end")
            rtype, rclass, ttl, rdlen = _RRFIX.unpack_from(data, off)
            off += 10
            if off + rdlen > end:
                raise ValueError("rdata runs past the end")
            if rtype == OPT:
                opts.append((section, off - 10 - start == 1, rclass, ttl, off, off + rdlen))
            elif rtype == TSIG and section == 2 and i == total - 1:
                tsig = (owner, off, off + rdlen)
            off += rdlen
        if off != end:
            raise ValueError("trailing octets after the last record")
    except ValueError as e:
        return opts, tsig, str(e)
    return opts, tsig, None


def _check_options(data: bytes, o: int, oend: int, q: Query | None = None):
    """The options of an OPT record: framing, one valid ECS at most, COOKIE lengths. Returns
    the ECS or None (and notes an NSID request in ``q``); ValueError says what is wrong."""
    ecs = None
    while o < oend:
        if o + 4 > oend:
            raise ValueError("truncated EDNS option")
        code, olen = _HH.unpack_from(data, o)
        o += 4
        if o + olen > oend:
            raise ValueError("EDNS option runs past the OPT record")
        if code == EDNS_ECS:
            if ecs is not None:
                raise ValueError("more than one ECS option")
            ecs = _parse_ecs(data[o:o + olen])
        elif code == 10 and not _cookie_ok(olen):
            raise ValueError(f"COOKIE option of {olen} octets")
        elif code == 3 and q is not None:
            q.nsid = True
        o += olen
    return ecs


def _badkey(q: Query, data: bytes, tsig, usable: bool, do: bool) -> "FormErr":
    """NOTAUTH with an unsigned TSIG record, error BADKEY (RFC 8945 §5.2.1, §5.3.2)."""
    owner, o, oend = tsig
    alg, o = _read_name(data, o, oend)
    time_fudge = data[o:o + 8]
    mac_len = _H.unpack_from(data, o + 8)[0]
    orig_id = data[o + 10 + mac_len:o + 12 + mac_len]
    rdata = alg + time_fudge + b"\x00\x00" + orig_id + _H.pack(BADKEY) + b"\x00\x00"
    rr = owner + _RRFIX.pack(TSIG, 255, 0, len(rdata)) + rdata
    return FormErr("TSIG-signed query: no keys configured", q.id, q.flags, q.question,
                   edns=usable, rcode=NOTAUTH, do=do, extra=rr)


# --------------------------------------------------------------------------- rendering


def opt_record(payload: int = OUR_PAYLOAD, ext_rcode: int = 0, do: bool = False,
               options: bytes = b"") -> bytes:
    """Our OPT pseudo-record: root owner, our payload size, version 0, DO copied."""
    ttl = (ext_rcode << 24) | (DO_BIT if do else 0)
    return _OPTFIX.pack(0, OPT, payload, ttl, len(options)) + options


_OPT_PLAIN = opt_record()
_OPT_DO = opt_record(do=True)


def formerr_response(err: FormErr) -> bytes:
    """FORMERR / NOTIMP / BADVERS answer for a query whose header could be read."""
    if err.rcode == NOTIMP:
        # header only, opcode echoed (RFC 1035: nothing else is copied)
        flags = QR | (err.flags & (0x7800 | RD)) | NOTIMP
        return _HDR.pack(err.qid, flags, 0, 0, 0, 0)
    rcode = err.rcode
    flags = QR | (err.flags & _COPY_BITS) | (rcode & 0xF)
    qd = 1 if err.question else 0
    ar = 1 if err.extra else 0
    if err.edns:
        opt = opt_record(ext_rcode=rcode >> 4, do=err.do)
        return _HDR.pack(err.qid, flags, qd, 0, 0, ar + 1) + err.question + opt + err.extra
    return _HDR.pack(err.qid, flags, qd, 0, 0, ar) + err.question + err.extra


def render(q: Query, rcode: int, aa: bool, an: int, ns: int, ar: int, body: bytes,
           scope: int, limit: int) -> tuple[bytes, bool]:
    """Assemble a response. ``body`` holds the rendered records (an + ns + ar of them).

    Returns (message, truncated). The OPT record (with the ECS echo) is appended when the
    query had EDNS; when the whole does not fit in ``limit`` octets the answer is replaced by
    header + question + OPT with TC set.
    """
    flags = QR | (q.flags & _COPY_BITS) | (AA if aa else 0) | rcode
    if q.edns:
        nsid = identity.NSID_OPTION if q.nsid else b""
        if q.ecs is None and not nsid:
            opt = _OPT_DO if q.do else _OPT_PLAIN
        else:
            if nsid:
                opt = opt_record(do=q.do, options=(q.ecs.echo(scope) if q.ecs is not None else b"") + nsid)
            else:
                opt = q.ecs.opt(scope, q.do)
        msg = b"".join((_HDR.pack(q.id, flags, 1, an, ns, ar + 1), q.question, body, opt))
        if nsid and len(msg) > limit:  # NSID is a courtesy: leave it out rather than truncate
            opt = opt[:-len(nsid)]
            opt = opt[:9] + _H.pack(len(opt) - 11) + opt[11:]
            msg = b"".join((_HDR.pack(q.id, flags, 1, an, ns, ar + 1), q.question, body, opt))
    else:
        opt = b""
        msg = b"".join((_HDR.pack(q.id, flags, 1, an, ns, ar), q.question, body))
    if len(msg) <= limit:
        return msg, False
    return _HDR.pack(q.id, flags | TC, 1, 0, 0, 1 if q.edns else 0) + q.question + opt, True


def udp_limit(q: Query) -> int:
    """The largest UDP response this client takes (512 without EDNS; capped at ours)."""
    if not q.edns:
        return MIN_PAYLOAD
    return q.payload if q.payload < OUR_PAYLOAD else OUR_PAYLOAD


TCP_LIMIT = 65535


# ----------------------------------------------------------------- record body building


class Name:
    """A domain name prepared for rendering: wire bytes (case as configured), lowercase
    bytes and the offset of each label, so suffix look-ups for compression are slices."""

    __slots__ = ("wire", "lower", "offsets")

    def __init__(self, wire: bytes):
        self.wire = wire
        self.lower = wire.lower()
        offs = []
        i = 0
        while wire[i]:
            offs.append(i)
            i += wire[i] + 1
        self.offsets = tuple(offs)

    def __eq__(self, other):
        return isinstance(other, Name) and other.lower == self.lower

    def __hash__(self):
        return hash(self.lower)

    def __repr__(self):
        return f"Name({name_to_text(self.wire)!r})"


class Renderer:
    """Writes records after a given question, compressing names (RFC 1035 §4.1.4).

    The compression table starts with the query name's suffixes at offset 12; the records'
    owner names and the names inside NS, CNAME, PTR, MX, and SOA rdata (the types RFC 3597
    allows) are compressed against it and against each other.
    """

    __slots__ = ("buf", "table", "base")

    def __init__(self, qname: bytes, qname_lower: bytes):
        self.buf = bytearray()
        self.base = 12 + len(qname) + 4  # where the body starts in the message
        table = {}
        i = 0
        while qname[i]:
            table[qname_lower[i:]] = 12 + i
            i += qname[i] + 1
        self.table = table

    def name(self, n: Name) -> None:
        buf = self.buf
        table = self.table
        lower = n.lower
        pos = self.base + len(buf)  # where this name starts in the message
        for i in n.offsets:
            suffix = lower[i:]
            ptr = table.get(suffix)
            if ptr is not None:
                buf += n.wire[:i]
                buf += bytes((0xC0 | (ptr >> 8), ptr & 0xFF))
                return
            if pos + i < 0x3FFF:
                table[suffix] = pos + i
        buf += n.wire

    def rr(self, owner: Name | None, rtype: int, rclass: int, ttl: int, rdata) -> None:
        """One record. ``owner`` None = the query name (a pointer to offset 12).
        ``rdata`` is bytes, or a tuple of bytes and ``Name`` parts (compressible names)."""
        buf = self.buf
        if owner is None:
            buf += b"\xc0\x0c"
        else:
            self.name(owner)
        if isinstance(rdata, bytes):
            buf += _RRFIX.pack(rtype, rclass, ttl, len(rdata))
            buf += rdata
            return
        buf += _RRFIX.pack(rtype, rclass, ttl, 0)
        at = len(buf)
        for part in rdata:
            if isinstance(part, Name):
                self.name(part)
            else:
                buf += part
        buf[at - 2:at] = _H.pack(len(buf) - at)

    def data(self) -> bytes:
        return bytes(self.buf)


def _put(r: Renderer, records) -> None:
    rr = r.rr
    for owner, rtype, rclass, ttl, rdata in records:
        rr(owner, rtype, rclass, ttl, rdata)


def render_body(q: Query, answer, authority, additional) -> bytes:
    """Render the three sections after this query's question (compressed)."""
    r = Renderer(q.qname, q.qname_lower)
    if answer:
        _put(r, answer)
    if authority:
        _put(r, authority)
    if additional:
        _put(r, additional)
    return bytes(r.buf)


def render_decision(q: Query, d, limit: int) -> tuple[bytes, bool]:
    """Render a core ``Decision`` for this query within ``limit`` octets.

    Additional records that are not required (addresses of NS/MX/SRV targets) are dropped when
    they do not fit; required glue that does not fit truncates (RFC 9471).
    """
    body = render_body(q, d.answer, d.authority, d.additional)
    an, ns, ar = len(d.answer), len(d.authority), len(d.additional)
    msg, tc = render(q, d.rcode, d.aa, an, ns, ar, body, d.scope, limit)
    if tc and ar and not d.glue_required:
        body = render_body(q, d.answer, d.authority, ())
        msg, tc = render(q, d.rcode, d.aa, an, ns, 0, body, d.scope, limit)
    return msg, tc
