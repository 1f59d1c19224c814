"""One query in, one response out: wire.parse_query -> core.decide -> wire.render.

The transports call ``Responder.respond`` with the packet bytes, the source address and the
size limit; it never raises. Malformed packets get FORMERR (or are dropped) and are counted; an
exception while answering gets SERVFAIL, is logged once with its traceback and counted.

Answers that depend only on (name, type, class) and the config - everything but dynamic
records - are rendered once per config generation and reused (``cache``): per query only the
header, the question and the OPT record are assembled.
"""

from __future__ import annotations

import logging
import random
import struct
import time

from filterdns.dns import dnssec, wire
from filterdns.dns.core import decide
from filterdns.model import FORMERR, NOTIMP, SERVFAIL, Client

log = logging.getLogger("filterdns.query")

_perf = time.perf_counter
CACHE_MAX = 20000
ROUTES_MAX = 100_000
#: a rendered signed answer is reused this long (its signatures are valid for days)
SIGNED_FRESH = 3600
_RRFIX = struct.Struct("!HHIH")


class NullMetrics:
    """Stands in where no metrics are wanted (unit tests)."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def client_of(q: wire.Query, src) -> Client:
    """The routing location: ECS (source prefix > 0) or the packet's source address."""
    e = q.ecs
    if e is not None and e.source:
        c = e.client
        if c is None:  # ECS objects are shared per subnet (wire caches them): make it once
            c = e.client = Client(e.address, 4 if e.family == 1 else 6, e.source, True)
        return c
    return source_client(src)


def source_client(src) -> Client:
    """The packet's source address as a routing location (IPv4-mapped IPv6 as IPv4)."""
    host = src[0] if src else "0.0.0.0"
    if ":" in host:
        if host.startswith("::ffff:") and "." in host:
            return Client(host[7:], 4, 32, False)
        return Client(host, 6, 128, False)
    return Client(host, 4, 32, False)


class Responder:
    def __init__(self, holder, inventory, metrics=None, rng: random.Random | None = None,
                 cache: bool = True):
        self.holder = holder
        self.inventory = inventory
        self.metrics = metrics or NullMetrics()
        self.rng = rng or random.Random()
        self.use_cache = cache
        self.cache: dict = {}  # (name, type, class) -> rendered static answer
        self.bodies: dict = {}  # (addresses, type, ttl) -> rendered dynamic answer records
        self.fast_dynamic: dict = {}  # lowercase wire name -> DynamicRecord
        # (name, type, client subnet or source) -> (status, count, body, scope, regions, removed)
        self.routes: dict = {}
        self.cache_gen = -1
        self.signed: dict = {}
        self.signers: dict = {}  # lowercase wire origin -> dnssec.Signer (signed zones)
        self.dyn_signers: dict = {}  # lowercase wire name of a fast dynamic record -> its zone's Signer
        self._logged: set[str] = set()
        self.rrl = None  # an rrl.Rrl for UDP responses, or None
        self.tap = None  # a serve.tap.Tap (query log, dnstap), or None

    # ------------------------------------------------------------------ the query path
    def respond(self, data: bytes, src, transport: str, limit: int) -> bytes | None:
        t0 = _perf()
        m = self.metrics
        try:
            q = wire.parse_query(data)
        except wire.Drop as e:
            m.malformed(transport, e.reason)
            return None
        except wire.FormErr as e:
            if e.rcode == NOTIMP:
                m.query(transport, 0, NOTIMP, False, _perf() - t0)
            else:
                if e.rcode == FORMERR:
                    m.malformed(transport, "formerr")
                    if "ECS" in e.reason:
                        m.ecs_formerr()
                m.query(transport, 0, e.rcode, False, _perf() - t0)
            return wire.formerr_response(e)
        except Exception:  # a parser bug must not kill the transport
            self._log_once("parse")
            m.malformed(transport, "other")
            return None
        try:
            msg, rcode, tc = self.answer(q, src, limit)
        except Exception:
            self._log_once("answer")
            m.servfail_exception()
            msg, tc = wire.render(q, SERVFAIL, False, 0, 0, 0, b"", 0, limit or wire.udp_limit(q))
            rcode = SERVFAIL
        if tc:
            m.truncated()
        if q.do:
            m.do_query(transport)
        m.query(transport, q.qtype, rcode, q.ecs is not None, _perf() - t0, q, src, len(data), len(msg))
        if self.tap is not None:  # query log and dnstap (serve/tap.py); None when both are off
            self.tap(q, src, transport, data, msg, rcode, t0)
        return msg

    def respond_udp(self, data: bytes, src) -> bytes | None:
        """UDP: the size limit is the client's (RFC 6891), known only after parsing, so it is
        passed as a sentinel and resolved in ``answer``."""
        msg = self.respond(data, src, "udp", 0)
        if msg is not None and self.rrl is not None:  # response rate limiting (dns/rrl.py)
            return self.rrl.limit(msg, src)
        return msg

    def answer(self, q: wire.Query, src, limit: int) -> tuple[bytes, int, bool]:
        state = self.holder.state
        if not limit:
            limit = wire.udp_limit(q)
        if self.cache_gen != state.generation:
            self._new_generation(state)
        if self.signers:
            signed = self._answer_signed(q, src, limit, state)
            if signed is not None:
                return signed
        if self.use_cache:
            # the common dynamic query: the record's own name, A or AAAA, class IN
            dyn = self.fast_dynamic.get(q.qname_lower)
            if dyn is not None and q.qclass == 1 and q.qtype in dyn.types:
                status = self.inventory.status
                e = q.ecs
                by_ecs = dyn.ecs and e is not None and e.source
                rkey = (q.qname_lower, q.qtype, e.key if by_ecs else src[0])
                hit = self.routes.get(rkey)
                if hit is not None and hit[0] is status:
                    _, n, body, scope, regions, removed = hit
                    self.metrics.answer(dyn.name, regions)
                    if removed:
                        self.metrics.filter_removed(removed)
                    n, body = self._sign_dynamic(q, dyn, n, body) if q.do else (n, body)
                    msg, tc = wire.render(q, 0, True, n, 0, 0, body, scope, limit)
                    return msg, 0, tc
                who = client_of(q, src) if dyn.ecs else source_client(src)
                res = dyn.resolve(q.qtype, who, state.geo, status, self.rng)
                addrs = res.addresses
                if addrs:
                    m = self.metrics
                    m.answer(dyn.name, res.regions)
                    if res.removed:
                        m.filter_removed(res.removed)
                    bkey = (addrs, q.qtype, dyn.ttl)
                    body = self.bodies.get(bkey)
                    if body is None:
                        tail = _RRFIX.pack(q.qtype, 1, dyn.ttl, len(addrs[0]))
                        body = b"".join(b"\xc0\x0c" + tail + a for a in addrs)
                        if len(self.bodies) >= CACHE_MAX:
                            self.bodies.clear()
                        self.bodies[bkey] = body
                    scope = res.scope if dyn.ecs else 0
                    if res.fixed:
                        # same client, same status -> same answer: skip the chain next time
                        if len(self.routes) >= ROUTES_MAX:
                            self.routes.clear()
                        self.routes[rkey] = (status, len(addrs), body, scope, res.regions, res.removed)
                    n = len(addrs)
                    n, body = self._sign_dynamic(q, dyn, n, body) if q.do else (n, body)
                    msg, tc = wire.render(q, 0, True, n, 0, 0, body, scope, limit)
                    return msg, 0, tc
            key = (q.qname_lower, q.qtype, q.qclass)
            hit = self.cache.get(key)
            if hit is not None:
                rcode, aa, an, ns, ar, body, short = hit
                msg, tc = wire.render(q, rcode, aa, an, ns, ar, body, 0, limit)
                if tc and short is not None:
                    msg, tc = wire.render(q, rcode, aa, an, ns, 0, short, 0, limit)
                return msg, rcode, tc
        d = decide(q, client_of(q, src), state, self.inventory.status, self.rng,
                   resolver=source_client(src) if q.ecs is not None else None)
        self._count(d)
        if self.use_cache and d.cacheable and len(self.cache) < CACHE_MAX:
            body = wire.render_body(q, d.answer, d.authority, d.additional)
            short = None
            if d.additional and not d.glue_required:
                short = wire.render_body(q, d.answer, d.authority, ())
            an, ns, ar = len(d.answer), len(d.authority), len(d.additional)
            self.cache[(q.qname_lower, q.qtype, q.qclass)] = (d.rcode, d.aa, an, ns, ar, body, short)
            msg, tc = wire.render(q, d.rcode, d.aa, an, ns, ar, body, 0, limit)
            if tc and short is not None:
                msg, tc = wire.render(q, d.rcode, d.aa, an, ns, 0, short, 0, limit)
            return msg, d.rcode, tc
        msg, tc = wire.render_decision(q, d, limit)
        return msg, d.rcode, tc

    def _count(self, d) -> None:
        """Metrics of a decision that consulted a dynamic record."""
        if d.record is not None:
            res = d.resolution
            self.metrics.answer(d.record.name, res.regions)
            if res.removed:
                self.metrics.filter_removed(res.removed)

    def _fast_signed(self, q) -> bool:
        """True when the fast dynamic path answers this DO=1 query (and signs it)."""
        dyn = self.fast_dynamic.get(q.qname_lower) if q.qname_lower in self.dyn_signers else None
        return dyn is not None and q.qclass == 1 and q.qtype in dyn.types

    def _sign_dynamic(self, q, dyn, n: int, body: bytes) -> tuple[int, bytes]:
        """A routed answer's records followed by their RRSIGs (dnssec.Signer.sign_body), when
        its zone is signed."""
        signer = self.dyn_signers.get(q.qname_lower)
        if signer is None:
            return n, body
        return signer.sign_body(q.qname_lower, q.qtype, dyn.ttl, body, n, dnssec.now())

    def _answer_signed(self, q, src, limit: int, state) -> tuple[bytes, int, bool] | None:
        """A query to a signed zone with DO=1 (or for its DNSKEY): the one decision, signed.
        None when the name is in no signed zone or the query wants no signature."""
        if not q.do and q.qtype != dnssec.DNSKEY or self._fast_signed(q):
            return None
        zone = state.zones.answering(q.qname_lower, q.qtype)
        signer = self.signers.get(zone.origin.lower) if zone is not None else None
        if signer is None:
            return None
        now = dnssec.now()
        if q.qtype == dnssec.DNSKEY and q.qname_lower == zone.origin.lower and q.qclass == 1:
            d = dnssec.dnskey_decision(zone, signer, q.do, now)
        else:
            signed = self.signed
            hit = signed.get((q.qname_lower, q.qtype, q.qclass, None))
            if hit is None or hit[0] < now:
                d = decide(q, client_of(q, src), state, self.inventory.status, self.rng,
                           resolver=source_client(src) if q.ecs is not None else None)
                self._count(d)
                if not q.do:
                    msg, tc = wire.render_decision(q, d, limit)
                    return msg, d.rcode, tc
                key = (q.qname_lower, q.qtype, q.qclass,
                       None if d.cacheable else (d.resolution.addresses if d.resolution else ()))
                hit = signed.get(key) if key[3] is not None else None
                if hit is None or hit[0] < now:
                    # the rendered signed answer, reused until well before its signatures expire
                    sd = dnssec.sign_decision(q, d, state, zone, signer, now)
                    an, ns, ar = len(sd.answer), len(sd.authority), len(sd.additional)
                    body = wire.render_body(q, sd.answer, sd.authority, sd.additional)
                    short = wire.render_body(q, sd.answer, sd.authority, ()) if ar and not sd.glue_required else None
                    hit = (now + SIGNED_FRESH, sd.rcode, sd.aa, an, ns, ar, body, short)
                    if len(signed) >= CACHE_MAX:
                        signed.clear()
                    signed[key] = hit
                scope = d.scope
            else:
                scope = 0
            _, rcode, aa, an, ns, ar, body, short = hit
            msg, tc = wire.render(q, rcode, aa, an, ns, ar, body, scope, limit)
            if tc and short is not None:
                msg, tc = wire.render(q, rcode, aa, an, ns, 0, short, scope, limit)
            return msg, rcode, tc
        msg, tc = wire.render_decision(q, d, limit)
        return msg, d.rcode, tc

    def _new_generation(self, state) -> None:
        """A new config: forget rendered answers; note which dynamic names take the short path
        (every one that is not at or below a zone cut, where the core answers a referral)."""
        from filterdns.dns.core import _find_cut

        self.cache = {}
        self.bodies = {}
        self.routes = {}
        self.signed = {}  # (name, type, class, addresses or None) -> rendered signed answer
        fast = {}
        for key, rec in state.dynamic.items():
            zone = state.zones.find(key)
            if zone is not None and (not zone.cuts or _find_cut(zone, key) is None):
                fast[key] = rec
        self.fast_dynamic = fast
        self.cache_gen = state.generation
        signers = {}
        for origin, signing in getattr(state, "dnssec", {}).items():
            zone = state.zones.zones.get(origin)
            if zone is not None:
                signers[origin] = dnssec.Signer(origin, signing, zone.neg_ttl,
                                                counts=self.metrics.dnssec_counts(wire.name_to_text(origin)))
        self.signers = signers
        # routed names of signed zones: their DO=1 answers are the fast path's, signed
        self.dyn_signers = {k: signers[state.zones.find(k).origin.lower] for k in fast
                            if state.zones.find(k).origin.lower in signers} if self.use_cache else {}

    def _log_once(self, where: str) -> None:
        """Log an unexpected exception with its traceback once per kind, then only count it."""
        import sys
        exc = sys.exc_info()[1]
        key = f"{where}:{type(exc).__name__}:{exc}"
        if key in self._logged:
            return
        if len(self._logged) < 1000:
            self._logged.add(key)
        log.exception("unexpected error while answering (%s); answering SERVFAIL", where)


def frame(msg: bytes) -> bytes:
    """TCP framing (RFC 1035 §4.2.2): two-octet length prefix."""
    return struct.pack("!H", len(msg)) + msg
