"""One query in, one response out: wire.parse_query -> core.decide -> wire.render.

The transports call ``Responder.respond`` with the packet bytes, the source address and the
size limit; it never raises. Malformed packets get FORMERR (or are dropped) and are counted; an
exception while answering gets SERVFAIL, is logged once with its traceback and counted.

One policy path: ``core`` decides every answer and ``wire`` writes every byte; this module
only orchestrates caches and metrics. Its caches hold what that path returns, keyed by what
it depends on, never a second implementation of it:

* ``plans``: (name, type, class) -> ``core.plan``'s result for this config generation: the
  rendered answer when the config alone decides it (static records, NXDOMAIN, referrals ...),
  else the ``core.Route`` to a dynamic record;
* for a Route, ``core.route`` runs the record's chain for this client (the routing layer
  memoises it per geo location and region-state snapshot, and the ECS scope per database
  network: not per client subnet), and ``bodies`` holds the rendered answer per
  (Route, addresses the chain chose), rendered from ``core.route_decision``;
* ``signed``: rendered signed answers (DNSSEC), fresh for ``SIGNED_FRESH`` seconds.

Per query only the header, the question and the OPT record (with the ECS scope) are
assembled. Every cache is a bounded ``filterdns.cache.Cache``; a new generation empties them.
``tests/test_fastpath.py`` checks the cached answers byte for byte against ``cache=False``
(``core.decide`` and ``wire.render_decision`` for every query) over many client subnets.
"""

from __future__ import annotations

import logging
import random
import struct
import time

from filterdns.cache import Cache
from filterdns.dns import dnssec, wire
from filterdns.dns.core import Route, decide, plan, route, route_decision
from filterdns.model import FORMERR, NOTIMP, SERVFAIL, Client

log = logging.getLogger("filterdns.query")

_perf = time.perf_counter
#: entries per generation of each answer cache (filterdns.cache: at most 3x this are held)
CACHE_MAX = 20000
#: a rendered signed answer is reused this long (its signatures are valid for days)
SIGNED_FRESH = 3600
_SOURCES = Cache(65536)  # packet source address -> its Client


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
    c = _SOURCES.new.get(src[0]) if src else None
    return c if c is not None else source_client(src)


def source_client(src) -> Client:
    """The packet's source address as a routing location (IPv4-mapped IPv6 as IPv4)."""
    host = src[0] if src else "0.0.0.0"
    c = _SOURCES.new.get(host)
    if c is None:
        c = _SOURCES.get(host)
    if c is None:
        if ":" in host:
            if host.startswith("::ffff:") and "." in host:
                c = Client(host[7:], 4, 32, False)
            else:
                c = Client(host, 6, 128, False)
        else:
            c = Client(host, 4, 32, False)
        _SOURCES.put(host, c)
    return c


def _rendered(q: wire.Query, d) -> tuple:
    """A decision rendered for reuse: (rcode, aa, an, ns, ar, body, body without the optional
    additional records or None); ``answer`` assembles it as ``wire.render_decision`` would."""
    body = wire.render_body(q, d.answer, d.authority, d.additional)
    short = None
    if d.additional and not d.glue_required:
        short = wire.render_body(q, d.answer, d.authority, ())
    return (d.rcode, d.aa, len(d.answer), len(d.authority), len(d.additional), body, short)


class Responder:
    def __init__(self, holder, inventory, metrics=None, rng: random.Random | None = None,
                 cache: bool = True):
        self.holder = holder
        self.inventory = inventory
        self.metrics = metrics or NullMetrics()
        self.rng = rng or random.Random()
        #: random answers may be replayed from pools of draws (``Resolution.pooled``); not with
        #: a seeded RNG, whose point is the same answers in the same order on every run
        self.pool_random = rng is None
        self.use_cache = cache
        #: (name, type, class) -> a core.Route, or a rendered answer (static: fixed per config)
        self.plans = Cache(CACHE_MAX)
        #: (Route, the chain's addresses) -> the rendered answer of that route's decision
        self.bodies = Cache(CACHE_MAX)
        #: (name, type, class, addresses or None) -> (fresh until, rendered signed answer)
        self.signed = Cache(CACHE_MAX)
        self.cache_gen = -1
        self.signers: dict = {}  # lowercase wire origin -> dnssec.Signer (signed zones)
        self._logged: set[str] = set()
        self.rrl = None  # an rrl.Rrl for UDP responses, or None
        self.tap = None  # a serve.tap.Tap (query log, dnstap), or None
        #: unexpected exceptions (parser or answer bugs) that respond() caught: SERVFAIL or drop
        self.errors = 0
        #: the UDP transport's ``_mmsg.Replay`` (``replay_for``); None before, False when off
        self.replay = None
        self._replay_epoch: tuple = ()
        self._armed = None  # the Replay while a batch is served through it (``replay_for``)
        #: set by ``answer``: 1 the answer is fixed for everything a Replay key names, 2 it is a
        #: draw of a distribution fixed for it (pooled), 0 neither
        self._fixed = 0

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
            self.errors += 1
            self._log_once("parse")
            m.malformed(transport, "other")
            return None
        try:
            msg, rcode, tc = self.answer(q, src, limit)
        except Exception:
            self.errors += 1
            self._fixed = 0
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
        elif self._fixed and self._armed is not None and not tc and not q.do and transport == "udp":
            # the reply may be replayed for the same key (serve/_mmsg.c): its later hits count
            # in this cell exactly as this query counted above
            self._armed.arm(m.replay_cell(), self._fixed == 2)
        return msg

    def replay_for(self, factory):
        """The Replay the UDP transport serves through for this batch, or None.

        Made by ``factory(latency bucket bounds)`` on first use and shared by every UDP socket of this responder.
        None (nothing replayed) while response rate limiting, the query log or dnstap is on,
        or the caches are off: each of those must see every query. Reset (every entry
        forgotten) when the config or the region state is no longer the one its entries were
        made under: a drain or reload is in effect from the first batch after it is applied."""
        if self.rrl is not None or self.tap is not None or not self.use_cache:
            self._armed = None
            return None
        rp = self.replay
        if rp is None:
            rp = self.replay = factory(self.metrics.latency_buckets()) or False
            if rp:
                self.metrics.replay_source(rp.stats)
        if rp is False:  # off in this process (FILTERDNS_NO_REPLAY, no native module)
            return None
        state, status = self.holder.state, self.inventory.status
        epoch = self._replay_epoch
        if not epoch or epoch[0] is not state or epoch[1] is not status:
            geo = getattr(state, "geo", None)
            tree = geo.replay_tree() if geo is not None else None
            if tree is not None:
                rp.reset(**tree)
            else:
                rp.reset()
            self._replay_epoch = (state, status)
        self._armed = rp
        return rp

    def respond_udp(self, data: bytes, src) -> bytes | None:
        """UDP: the size limit is the client's (RFC 6891), known only after parsing, so it is
        passed as a sentinel and resolved in ``answer``."""
        msg = self.respond(data, src, "udp", 0)
        if msg is not None and self.rrl is not None:  # response rate limiting (dns/rrl.py)
            return self.rrl.limit(msg, src)
        return msg

    def answer(self, q: wire.Query, src, limit: int) -> tuple[bytes, int, bool]:
        """The answer to one parsed query: ``core`` decides (``plan``, then ``route`` for a
        dynamic record), ``wire`` renders; what is cached is what those return (see the
        module docstring), so a cached answer is the uncached one, byte for byte."""
        state = self.holder.state
        self._fixed = 0
        if not limit:
            limit = wire.udp_limit(q)
        if self.cache_gen != state.generation:
            self._new_generation(state)
        if self.signers:
            signed = self._answer_signed(q, src, limit, state)
            if signed is not None:
                return signed
        if not self.use_cache:
            d = decide(q, client_of(q, src), state, self.inventory.status, self.rng,
                       resolver=source_client(src) if q.ecs is not None else None)
            self._count(d)
            msg, tc = wire.render_decision(q, d, limit)
            return msg, d.rcode, tc
        hit = self._plan(q, state)
        scope = 0
        if hit.__class__ is Route:
            res, scope = route(hit, client_of(q, src),
                               source_client(src) if hit.uses_resolver and q.ecs is not None else None,
                               state.geo, self.inventory.status, self.rng)
            self.metrics.answer(hit.record.name, res.regions, res.removed)
            fixed = 1 if res.fixed else 2 if res.pooled and self.pool_random else 0
            bkey = (hit, res.addresses)
            bodies = self.bodies
            body = bodies.new.get(bkey)
            if body is None:
                body = bodies.get(bkey)
                if body is None:
                    body = bodies.put(bkey, _rendered(q, route_decision(hit, res, scope)))
            if q.do and self.signers:
                signer = self.signers.get(hit.zone.origin.lower)
                if signer is not None:
                    if not res.addresses:  # NODATA: the signed path proves it (NSEC)
                        return self._answer_signed(q, src, limit, state, routed=False)
                    rcode, aa, an, ns, ar, body, short = body
                    an, body = signer.sign_body(q.qname_lower, q.qtype, hit.record.ttl, body, an, dnssec.now())
                    msg, tc = wire.render(q, rcode, aa, an, ns, ar, body, scope, limit)
                    return msg, rcode, tc
            hit = body
        else:
            fixed = 1  # fixed by the query and the config alone
        self._fixed = fixed
        rcode, aa, an, ns, ar, body, short = hit
        msg, tc = wire.render(q, rcode, aa, an, ns, ar, body, scope, limit)
        if tc and short is not None:
            msg, tc = wire.render(q, rcode, aa, an, ns, 0, short, scope, limit)
        return msg, rcode, tc

    def _count(self, d) -> None:
        """Metrics of a decision that consulted a dynamic record."""
        if d.record is not None:
            res = d.resolution
            self.metrics.answer(d.record.name, res.regions, res.removed)

    def _plan(self, q: wire.Query, state):
        """``core.plan`` for this query, cached per (name, type, class): a Route, or the
        rendered answer (``_rendered``)."""
        key = (q.qname_lower, q.qtype, q.qclass)
        plans = self.plans
        hit = plans.new.get(key)
        if hit is None:
            hit = plans.get(key)
            if hit is None:
                p = plan(q, state)
                hit = plans.put(key, p if p.__class__ is Route else _rendered(q, p))
        return hit

    def _routed(self, q: wire.Query, state) -> bool:
        """True when the cached route path answers this DO=1 query and signs the addresses
        (``Signer.sign_body``): a Route straight at the query name (no CNAME before it)."""
        if not self.use_cache:
            return False
        p = self._plan(q, state)
        return p.__class__ is Route and not p.answer

    def _answer_signed(self, q, src, limit: int, state, routed: bool = True) -> tuple[bytes, int, bool] | None:
        """A query to a signed zone with DO=1 (or for its DNSKEY): the one decision, signed.
        None when the name is in no signed zone or the query wants no signature, or (``routed``)
        when the route path answers and signs it."""
        if not q.do and q.qtype != dnssec.DNSKEY or routed and q.do and self._routed(q, state):
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
                    signed.put(key, hit)
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
        """A new config: forget every plan and rendered answer (they belong to the old one)."""
        self.plans.clear()
        self.bodies.clear()
        self.signed.clear()
        self.cache_gen = state.generation
        signers = {}
        for origin, signing in getattr(state, "dnssec", {}).items():
            zone = state.zones.zones.get(origin)
            if zone is not None:
                signers[origin] = dnssec.Signer(origin, signing, zone.neg_ttl,
                                                counts=self.metrics.dnssec_counts(wire.name_to_text(origin)))
        self.signers = signers

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
