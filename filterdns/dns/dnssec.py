"""DNSSEC online signing (RFC 4033-4035, 6840, 6605 ECDSA P-256, 9824 compact denial).

Opt-in per zone: a zone is signed when its key directory ``<keys>/<zone>/`` holds keys
(``<keys>`` is ``$FILTERDNS_KEYS``, else ``<zones dir>/keys``), or when the chains config says
so (``zones: {example.com: {dnssec: ...}}``, ``filterdns.config.zoneconf``: ``true`` requires
keys, ``false`` never signs, a mapping names the key directory, validity and DNSKEY TTL). Keys are BIND-format file pairs
``K<zone>.+013+<tag>.key`` / ``.private`` - what ``dnssec-keygen -a ECDSAP256SHA256`` writes and
what ``filterdns dnssec keygen`` writes, so existing keys are imported by copying them there.
Timing fields of the ``.private`` file (``Publish``, ``Activate``, ``Inactive``, ``Delete``,
``YYYYMMDDHHMMSS`` UTC) say whether a key is in the DNSKEY RRset and whether it signs; they are
read when the config is (re)loaded. A key without any timing field is published and active.

Signing rules: the DNSKEY RRset is signed by every active key with the SEP flag (257: KSK or
combined key); every other RRset by the active ZSKs (256), or by the active SEP keys when the
zone has no active ZSK (a combined signing key, CSK).

Answers: only queries with DO=1 get signatures (RFC 4035 §3.1); answers without DO are the
unsigned path, unchanged. Authoritative: AD is never set, CD is echoed (RFC 6840 §5.7-5.9).

* positive RRsets (static and routed) get an RRSIG each; a wildcard expansion is signed at the
  query name (online signer: the name is answered as if it existed);
* NODATA: SOA + RRSIG, and an NSEC at the name whose next name is ``\\000.<name>`` and whose
  bitmap lists the types that exist there (never the queried one), RRSIG and NSEC;
* NXDOMAIN is answered as NODATA (RCODE NOERROR) with an NSEC at the query name, bitmap RRSIG,
  NSEC and NXNAME (RFC 9824 compact denial: nothing to walk, nothing precomputed);
* referrals: the child's DS RRset from the parent's zone file with its RRSIG (a secure
  delegation), else an NSEC at the cut (NS, RRSIG, NSEC; no DS) that proves it insecure; NS and
  glue are never signed. A query for DS at the cut is answered by the parent, signed (the DS
  RRset, or NODATA with that NSEC).

Signatures are cached per (owner, type, TTL, rdata set) in a bounded LRU per signer, i.e. per
config generation and key set: a routed answer chosen before costs no new signature. Validity:
inception one hour back (clock skew), expiration ``VALIDITY`` ahead minus up to 10 % jitter,
and a cached signature is re-made after ``VALIDITY / 4``, long before it expires.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from filterdns.errors import Problem
from filterdns.model import CNAME, NS, NXDOMAIN, NOERROR, SOA

DS = 43
RRSIG = 46
NSEC = 47
DNSKEY = 48
NXNAME = 128
ALG = 13  # ECDSA P-256 with SHA-256 (RFC 6605)
ALG_NAME = "ECDSAP256SHA256"
VALIDITY = 7 * 86400
SKEW = 3600
CACHE_MAX = 50_000
DNSKEY_TTL = 3600
_RRFIX = struct.Struct("!HHIH")
_SIGFIX = struct.Struct("!HBBIIIH")


# ----------------------------------------------------------------------------- keys


def key_tag(rdata: bytes) -> int:
    """RFC 4034 Appendix B."""
    ac = 0
    for i, b in enumerate(rdata):
        ac += b if i & 1 else b << 8
    ac += (ac >> 16) & 0xFFFF
    return ac & 0xFFFF


def _zone_text(zone: str) -> str:
    return zone.strip().rstrip(".").lower() + "."


def _wire(zone: str) -> bytes:
    z = _zone_text(zone).rstrip(".")
    if not z:
        return b"\x00"
    return b"".join(bytes([len(p)]) + p.encode("ascii") for p in z.split(".")) + b"\x00"


@dataclass(frozen=True, slots=True)
class ZoneKey:
    """One key of a zone, as loaded (picklable: the private scalar, not a crypto object)."""

    tag: int
    flags: int
    rdata: bytes  # DNSKEY rdata
    private: int  # P-256 private scalar
    published: bool
    active: bool
    file: str

    @property
    def sep(self) -> bool:
        return bool(self.flags & 1)


def _stamp(text: str) -> float:
    import calendar

    return calendar.timegm(time.strptime(text.strip()[:14], "%Y%m%d%H%M%S"))


def read_key(path_key: str) -> ZoneKey:
    """A BIND key pair (the ``.key`` path; the ``.private`` sits beside it). ValueError says
    what is wrong."""
    pub = Path(path_key).read_text()
    fields = None
    for line in pub.splitlines():
        line = line.split(";", 1)[0].split()
        if "DNSKEY" in line:
            i = line.index("DNSKEY")
            fields = line[i + 1:]
            break
    if not fields or len(fields) < 4:
        raise ValueError("no DNSKEY record in the .key file")
    flags, proto, alg = int(fields[0]), int(fields[1]), int(fields[2])
    if alg != ALG:
        raise ValueError(f"algorithm {alg} is not supported (only {ALG}, {ALG_NAME})")
    if proto != 3:
        raise ValueError(f"DNSKEY protocol {proto}, must be 3")
    pubkey = base64.b64decode("".join(fields[3:]))
    if len(pubkey) != 64:
        raise ValueError(f"ECDSA P-256 public key of {len(pubkey)} octets, must be 64")
    rdata = struct.pack("!HBB", flags, proto, alg) + pubkey
    priv_path = path_key[:-4] + ".private"
    meta = {}
    for line in Path(priv_path).read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            meta[k.strip()] = v.strip()
    if "PrivateKey" not in meta:
        raise ValueError(f"{priv_path}: no PrivateKey field")
    scalar = base64.b64decode(meta["PrivateKey"])
    if len(scalar) != 32:
        raise ValueError(f"{priv_path}: private key of {len(scalar)} octets, must be 32")
    private = int.from_bytes(scalar, "big")
    from cryptography.hazmat.primitives.asymmetric import ec

    nums = ec.derive_private_key(private, ec.SECP256R1()).public_key().public_numbers()
    if nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big") != pubkey:
        raise ValueError(f"{priv_path}: private key does not match the public key in the .key file")
    now = time.time()
    timing = {k: _stamp(meta[k]) for k in ("Publish", "Activate", "Inactive", "Delete") if k in meta}
    if not timing:
        published = active = True
    else:
        gone = "Delete" in timing and timing["Delete"] <= now
        published = not gone and timing.get("Publish", timing.get("Activate", now + 1)) <= now
        active = (not gone and "Activate" in timing and timing["Activate"] <= now
                  and not ("Inactive" in timing and timing["Inactive"] <= now))
        published = published or active
    return ZoneKey(key_tag(rdata), flags, rdata, private, published, active, path_key)


def keys_dir_for(zones_dir) -> str:
    return os.environ.get("FILTERDNS_KEYS") or os.path.join(str(zones_dir), "keys")


def zone_keys(keys_dir, zone: str, conf=None) -> list[ZoneKey]:
    """Every key of ``zone`` in its directory (raises ValueError naming the bad file)."""
    return _keys_in(zone_key_dir(keys_dir, zone, conf))


def _keys_in(d: Path) -> list[ZoneKey]:
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("K*.key")):
        try:
            out.append(read_key(str(p)))
        except (ValueError, OSError) as e:
            raise ValueError(f"{p}: {e}") from None
    return out


@dataclass(frozen=True, slots=True)
class ZoneSigning:
    """How one zone is signed: its keys (as loaded) and the options of its ``dnssec:`` config."""

    keys: tuple[ZoneKey, ...]
    validity: int = VALIDITY
    dnskey_ttl: int = DNSKEY_TTL
    directory: str = ""


def zone_key_dir(keys_dir, zone: str, conf=None) -> Path:
    """The key directory of ``zone``: ``dnssec.keys`` of its config, else ``<keys>/<zone>``."""
    if conf is not None and getattr(conf, "keys", None):
        return Path(conf.keys)
    return Path(keys_dir) / _zone_text(zone).rstrip(".")


def load_keys(keys_dir, origins, problems: list[Problem], zones_conf=None) -> dict[bytes, ZoneSigning]:
    """How every signed zone is signed (lowercase wire origin -> ZoneSigning): the zones whose
    key directory holds keys, unless their config says ``dnssec: false``; a zone whose config
    asks for signing must have an active KSK/CSK (the problem is at its ``dnssec`` key)."""
    out = {}
    for origin in origins:
        conf = (zones_conf or {}).get(_zone_text(origin))
        if conf is not None and not conf.sign:
            continue
        d = zone_key_dir(keys_dir, origin, conf)
        where = conf.where if conf is not None else ""
        try:
            keys = _keys_in(d)
        except ValueError as e:
            problems.append(_problem(where, str(d), f"DNSSEC keys of {origin}: {e}"))
            continue
        if not keys and conf is None:
            continue
        if not any(k.active and k.sep for k in keys):
            have = "has DNSSEC keys but" if keys else f"is to be signed (dnssec) but {d} has"
            problems.append(_problem(where, str(d),
                                     f"zone {origin} {have} no active KSK/CSK (flags 257): "
                                     f"run `filterdns dnssec keygen {origin.rstrip('.')}` or `activate`"))
            continue
        if conf is not None:
            out[_wire(origin)] = ZoneSigning(tuple(keys), conf.validity, conf.dnskey_ttl, str(d))
        else:
            out[_wire(origin)] = ZoneSigning(tuple(keys), directory=str(d))
    return out


def _problem(where: str, fallback: str, message: str) -> Problem:
    """At ``file:line:col`` of the zone's ``dnssec`` key when there is one, else at the directory."""
    if where:
        file, line, col = where.rsplit(":", 2)
        return Problem(file, int(line), int(col), message)
    return Problem(fallback, None, None, message)


def _fmt_time(t: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def keygen(keys_dir, zone: str, flags: int = 257, active: bool = True, directory=None) -> ZoneKey:
    """Make an ECDSA P-256 key pair and write it in BIND format (.key world-readable,
    .private 0600) in ``directory``, else ``<keys_dir>/<zone>``. ``active`` False: published
    only (the first step of a pre-publish roll)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    zt = _zone_text(zone)
    d = Path(directory) if directory else Path(keys_dir) / zt.rstrip(".")
    d.mkdir(parents=True, exist_ok=True)
    priv = ec.generate_private_key(ec.SECP256R1())
    nums = priv.public_key().public_numbers()
    pub = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    rdata = struct.pack("!HBB", flags, 3, ALG) + pub
    tag = key_tag(rdata)
    base = d / f"K{zt}+{ALG:03d}+{tag:05d}"
    now = _fmt_time(time.time())
    kind = "key-signing" if flags & 1 else "zone-signing"
    Path(f"{base}.key").write_text(
        f"; This is a {kind} key, keyid {tag}, for {zt}\n"
        f"{zt} IN DNSKEY {flags} 3 {ALG} {base64.b64encode(pub).decode()}\n")
    fd = os.open(f"{base}.private", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("Private-key-format: v1.3\n"
                f"Algorithm: {ALG} ({ALG_NAME})\n"
                f"PrivateKey: {base64.b64encode(priv.private_numbers().private_value.to_bytes(32, 'big')).decode()}\n"
                f"Created: {now}\nPublish: {now}\n" + (f"Activate: {now}\n" if active else ""))
    return read_key(f"{base}.key")


def set_timing(key: ZoneKey, field: str, when: float | None) -> None:
    """Set (or with ``when`` None, remove) one timing field of a key's .private file."""
    p = Path(key.file[:-4] + ".private")
    lines = [ln for ln in p.read_text().splitlines() if not ln.startswith(field + ":")]
    if when is not None:
        lines.append(f"{field}: {_fmt_time(when)}")
    p.write_text("\n".join(lines) + "\n")


def ds_text(zone: str, key: ZoneKey, ttl: int | None = None) -> str:
    """The DS record (digest type 2, SHA-256) of a key, in presentation format."""
    digest = hashlib.sha256(_wire(zone) + key.rdata).hexdigest().upper()
    t = f"{ttl} " if ttl is not None else ""
    return f"{_zone_text(zone)} {t}IN DS {key.tag} {ALG} 2 {digest}"


def dnskey_text(zone: str, key: ZoneKey) -> str:
    return f"{_zone_text(zone)} IN DNSKEY {key.flags} 3 {ALG} {base64.b64encode(key.rdata[4:]).decode()}"


# --------------------------------------------------------------------------- signing


def _labels(owner_lower: bytes) -> int:
    n = 0
    i = 0
    while owner_lower[i]:
        if not (n == 0 and owner_lower[i:i + 2] == b"\x01*"):
            n += 1
        i += owner_lower[i] + 1
    return n


def canonical_rdata(rdata) -> bytes:
    """Record data in canonical form (RFC 4034 §6.2): names uncompressed and lowercase."""
    if isinstance(rdata, bytes):
        return rdata
    return b"".join(p if isinstance(p, bytes) else p.lower for p in rdata)


def type_bitmap(types) -> bytes:
    """NSEC type bit maps (RFC 4034 §4.1.2)."""
    windows: dict[int, bytearray] = {}
    for t in sorted(set(types)):
        w = windows.setdefault(t >> 8, bytearray(32))
        w[(t & 0xFF) >> 3] |= 0x80 >> (t & 7)
    out = bytearray()
    for w in sorted(windows):
        bits = windows[w].rstrip(b"\x00")
        out += bytes((w, len(bits))) + bits
    return bytes(out)


class Signer:
    """Signs RRsets of one zone with its active keys; caches signatures (bounded LRU) and the
    rendered signed answer records of routed answers (``sign_body``).

    ``counts`` is where it counts (``signatures`` made, signature cache ``hits`` and ``misses``
    per RRset) and notes when the DNSKEY RRSIG it serves expires (``dnskey_expires``): the
    metrics' dict for the zone (``Metrics.dnssec_counts``), else its own."""

    def __init__(self, origin_lower: bytes, signing, neg_ttl: int,
                 rng: random.Random | None = None, cache_max: int = CACHE_MAX, counts: dict | None = None):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        if not isinstance(signing, ZoneSigning):
            signing = ZoneSigning(tuple(signing))
        keys = signing.keys
        self.origin = origin_lower
        self.neg_ttl = neg_ttl
        self.validity = signing.validity
        self.dnskey_ttl = signing.dnskey_ttl
        self.rng = rng or random.Random()
        self._ecdsa = ec.ECDSA(hashes.SHA256())
        self._decode = decode_dss_signature
        ksk = [k for k in keys if k.active and k.sep]
        zsk = [k for k in keys if k.active and not k.sep] or ksk
        mk = lambda k: (k.tag, ec.derive_private_key(k.private, ec.SECP256R1()))  # noqa: E731
        self.ksk = [mk(k) for k in ksk]
        self.zsk = [mk(k) for k in zsk]
        self.dnskey = tuple(sorted(k.rdata for k in keys if k.published))
        self.cache: OrderedDict = OrderedDict()
        self.bodies: dict = {}
        self.cache_max = cache_max
        if counts is None or not isinstance(counts, dict):
            counts = {}
        for k in ("signatures", "hits", "misses", "dnskey_expires"):
            counts.setdefault(k, 0)
        self.counts = counts

    @property
    def hits(self) -> int:
        return self.counts["hits"]

    @property
    def misses(self) -> int:
        return self.counts["misses"]

    def _sign_one(self, priv, tag: int, owner: bytes, rtype: int, ttl: int, rdatas, now: float) -> bytes:
        inception = int(now) - SKEW
        expiration = int(now) + self.validity - self.rng.randrange(self.validity // 10 + 1)
        head = _SIGFIX.pack(rtype, ALG, _labels(owner), ttl, expiration & 0xFFFFFFFF,
                            inception & 0xFFFFFFFF, tag) + self.origin
        fix = _RRFIX.pack
        data = head + b"".join(owner + fix(rtype, 1, ttl, len(rd)) + rd for rd in rdatas)
        r, s = self._decode(priv.sign(data, self._ecdsa))
        return head + r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def sign(self, owner: bytes, rtype: int, ttl: int, rdatas, now: float) -> list[bytes]:
        """RRSIG rdatas for one RRset (owner lowercase wire; rdatas canonical bytes)."""
        rds = tuple(sorted(set(rdatas)))
        key = (owner, rtype, ttl, rds)
        c = self.counts
        hit = self.cache.get(key)
        if hit is not None and hit[0] > now:
            c["hits"] += 1
            self.cache.move_to_end(key)
            return hit[1]
        c["misses"] += 1
        keys = self.ksk if rtype == DNSKEY else self.zsk
        sigs = [self._sign_one(priv, tag, owner, rtype, ttl, rds, now) for tag, priv in keys]
        c["signatures"] += len(sigs)
        if rtype == DNSKEY and sigs:
            c["dnskey_expires"] = min(struct.unpack_from("!I", sg, 8)[0] for sg in sigs)
        self.cache[key] = (now + self.validity // 4, sigs)
        if len(self.cache) > self.cache_max:
            self.cache.popitem(last=False)
        return sigs

    def sign_body(self, owner: bytes, rtype: int, ttl: int, body: bytes, n: int,
                  now: float) -> tuple[int, bytes]:
        """The answer records ``body`` (``n`` records of one RRset at the query name, rendered
        with the owner as a pointer to the question and uncompressed data, as A/AAAA are) followed by their RRSIG records: (count,
        bytes). Kept per (owner, body) until the signatures are due to be re-made, so a routed
        answer chosen before costs neither a signature nor an encoding."""
        key = (owner, body)
        hit = self.bodies.get(key)
        if hit is not None and hit[0] > now:
            self.counts["hits"] += 1
            return hit[1], hit[2]
        rdatas = []
        i = 0
        while i < len(body):  # each record: pointer, type, class, TTL, length, data
            ln = body[i + 10] << 8 | body[i + 11]
            rdatas.append(body[i + 12:i + 12 + ln])
            i += 12 + ln
        sigs = self.sign(owner, rtype, ttl, rdatas, now)
        fix = _RRFIX.pack
        out = body + b"".join(b"\xc0\x0c" + fix(RRSIG, 1, ttl, len(sg)) + sg for sg in sigs)
        if len(self.bodies) >= self.cache_max:
            self.bodies.clear()
        self.bodies[key] = (now + self.validity // 4, n + len(sigs), out)
        return n + len(sigs), out


def _group(records, qname_lower: bytes):
    """Records in order, grouped into RRsets: [(owner key, owner, type, ttl, [records])]."""
    groups: list = []
    index: dict = {}
    for rec in records:
        owner, rtype = rec[0], rec[1]
        ol = qname_lower if owner is None else owner.lower
        k = (ol, rtype)
        g = index.get(k)
        if g is None:
            g = index[k] = [ol, owner, rtype, rec[3], []]
            groups.append(g)
        g[4].append(rec)
    return groups


def _signed(groups, signer: Signer, now: float, skip=()) -> list:
    out = []
    for ol, owner, rtype, ttl, recs in groups:
        out.extend(recs)
        if rtype in skip:
            continue
        for sig in signer.sign(ol, rtype, ttl, [canonical_rdata(r[4]) for r in recs], now):
            out.append((owner, RRSIG, 1, ttl, sig))
    return out


def _nsec(owner, owner_lower: bytes, types, ttl: int):
    nxt = b"\x01\x00" + owner_lower
    return (owner, NSEC, 1, ttl, nxt + type_bitmap(types))


def delegation_proof(zone, cut) -> list:
    """What a signed referral to ``cut`` adds to the NS RRset (RFC 4035 §3.1.4): the DS
    records of the child from the parent's zone file (a secure delegation), else an NSEC at
    the cut whose bitmap has NS, RRSIG and NSEC but not DS (an insecure one)."""
    node = zone.nodes.get(cut.lower)
    ds = node.rrsets.get(DS) if node is not None else None
    if ds is not None:
        return [(cut, DS, 1, ds.ttl, rd) for rd in ds.rdatas]
    return [_nsec(cut, cut.lower, (NS, RRSIG, NSEC), zone.neg_ttl)]


def _final_name(q, answer):
    """The name a CNAME chain in the answer ends at: (owner for rendering, lowercase wire)."""
    owner, lower = None, q.qname_lower
    for rec in answer:
        if rec[1] == CNAME:
            target = rec[4][0]
            owner, lower = target, target.lower
    return owner, lower


def _types_at(state, zone, name_lower: bytes) -> set[int]:
    from filterdns.dns.core import _wildcard

    types: set[int] = set()
    node = zone.nodes.get(name_lower)
    if node is None and name_lower not in zone.names and zone.has_wildcards:
        node = _wildcard(zone, name_lower)
    if node is not None:
        types.update(node.rrsets)
    dyn = state.dynamic.get(name_lower) if state.dynamic else None
    if dyn is not None:
        types.update(dyn.types)
    if name_lower == zone.origin.lower:
        types.add(DNSKEY)
    return types


def dnskey_decision(zone, signer: Signer, do: bool, now: float):
    """The DNSKEY RRset at the apex (signed by the KSKs when DO=1)."""
    from filterdns.dns.core import Decision

    answer = [(None, DNSKEY, 1, signer.dnskey_ttl, rd) for rd in signer.dnskey]
    if do:
        answer = _signed(_group(answer, zone.origin.lower), signer, now)
    return Decision(NOERROR, True, answer)


def sign_decision(q, d, state, zone, signer: Signer, now: float):
    """The core's Decision with signatures and denial proofs added (for DO=1 queries)."""
    from filterdns.dns.core import Decision

    if not d.aa and not d.answer and not d.authority:
        return d  # REFUSED and the like
    qn = q.qname_lower
    answer = _signed(_group(d.answer, qn), signer, now) if d.answer else []
    authority = list(d.authority)
    additional = d.additional
    rcode = d.rcode
    referral = any(r[1] == NS for r in authority)
    if referral:
        # NS and glue of a delegation are not signed (RFC 4035 §2.2); the parent's DS RRset is,
        # and without one an NSEC at the cut proves there is none: the child is insecure
        cut = next(r[0] for r in authority if r[1] == NS)
        authority.extend(delegation_proof(zone, cut))
        authority = _signed(_group(authority, qn), signer, now, skip=(NS,))
    else:
        if additional:
            additional = _signed(_group(additional, qn), signer, now)
        if any(r[1] == SOA for r in authority):  # negative answer: NODATA or NXDOMAIN
            owner, lower = _final_name(q, d.answer)
            if rcode == NXDOMAIN:
                rcode = NOERROR  # RFC 9824: compact denial answers NODATA
                types = (RRSIG, NSEC, NXNAME)
            else:
                have = _types_at(state, zone, lower)
                have.discard(q.qtype)
                types = have | {RRSIG, NSEC}
            if len(lower) + 2 <= 255:
                authority.append(_nsec(owner, lower, types, zone.neg_ttl))
            authority = _signed(_group(authority, qn), signer, now)
    out = Decision(rcode, d.aa, answer, authority, additional, scope=d.scope, record=d.record,
                   resolution=d.resolution, glue_required=d.glue_required)
    return out


def now() -> float:
    return time.time()
