"""The decision core: (query, client, state, inventory status, rng) -> Decision. Pure.

No sockets, logging, metrics, clock or randomness except what is passed in. Authoritative
semantics (RFC 1034 §4.3.2, RFC 1035, RFC 2308, RFC 4592, RFC 8482):

* names outside every served zone, classes other than IN, and zone transfers -> REFUSED;
  except CHAOS TXT ``id.server``/``hostname.bind`` when ``--server-id`` is set (dns/identity.py);
* an RRset of the asked type -> the answer, AA set;
* a dynamic record (filter chain) for A/AAAA -> the addresses its chain selects, with the ECS
  scope it reports;
* CNAME -> followed inside the zone (at most ``MAX_CHASE`` links, loops stop), the final rcode is
  the target's (RFC 6604); out-of-zone targets end the chain;
* name exists without that type, or is an empty non-terminal -> NODATA with the SOA;
* name does not exist -> wildcard synthesis (a name that exists blocks the wildcard, RFC 4592),
  else NXDOMAIN with the SOA; negative TTL = min(SOA TTL, SOA MINIMUM) (RFC 2308 §5);
* at or below a zone cut -> referral (NS in authority, glue in additional, AA clear), except DS
  at the cut, which the parent answers itself from its own zone file (RFC 4035 §3.1.4.1), also
  when the child zone is served here too;
* ANY -> a minimal answer: one synthesised HINFO "RFC8482" (RFC 8482 §4.2).
"""

from __future__ import annotations

from filterdns.dns import identity
from filterdns.model import A, AAAA, ANY, AXFR, CNAME, DS, IXFR, NOERROR, NS, NXDOMAIN, REFUSED

IN = 1
CH = 3
TXT = 16
#: CHAOS names answered with the server identity (dns/identity.py); any other is REFUSED
_CHAOS_NAMES = frozenset({b"\x02id\x06server\x00", b"\x08hostname\x04bind\x00"})
HINFO = 13
MAX_CHASE = 8
_RFC8482 = b"\x07RFC8482\x00"
_ADDR_TYPES = (A, AAAA)


class Decision:
    """What to answer: rcode, AA, the three sections (records as tuples), the ECS scope.

    A record is ``(owner, type, class, ttl, rdata)``; owner ``None`` means the query name.
    ``cacheable`` is true when the answer depends only on (name, type, class) and the config
    (no dynamic record was consulted), so the rendered bytes can be reused until a reload.
    """

    __slots__ = ("rcode", "aa", "answer", "authority", "additional", "scope", "record",
                 "resolution", "cacheable", "glue_required")

    def __init__(self, rcode: int, aa: bool, answer=(), authority=(), additional=(),
                 scope: int = 0, record=None, resolution=None, glue_required: bool = False):
        self.rcode = rcode
        self.aa = aa
        self.answer = answer
        self.authority = authority
        self.additional = additional
        self.scope = scope
        self.record = record
        self.resolution = resolution
        self.cacheable = record is None
        self.glue_required = glue_required

    def __repr__(self) -> str:
        return (f"Decision(rcode={self.rcode}, aa={self.aa}, an={len(self.answer)}, "
                f"ns={len(self.authority)}, ar={len(self.additional)}, scope={self.scope})")


REFUSED_DECISION = Decision(REFUSED, False)


def _chaos(qtype: int) -> Decision:
    """``id.server`` / ``hostname.bind`` CH: the identity as TXT (ANY too), else NODATA."""
    if qtype in (TXT, ANY):
        return Decision(NOERROR, True, [(None, TXT, CH, 0, identity.TXT_RDATA)])
    return Decision(NOERROR, True)


def _rrset_records(owner, rrset, out: list) -> None:
    t = rrset.rtype
    ttl = rrset.ttl
    for rd in rrset.rdatas:
        out.append((owner, t, IN, ttl, rd))


def _addresses_for(zone, targets, out: list) -> None:
    """A/AAAA of in-zone target names, for the additional section."""
    nodes = zone.nodes
    seen = set()
    for name in targets:
        if name.lower in seen:
            continue
        seen.add(name.lower)
        node = nodes.get(name.lower)
        if node is None:
            continue
        for t in _ADDR_TYPES:
            rr = node.rrsets.get(t)
            if rr is not None:
                _rrset_records(name, rr, out)


def _find_cut(zone, name: bytes) -> bytes | None:
    """The highest delegation point at or above ``name`` (below the apex), or None."""
    cuts = zone.cuts
    found = None
    i = 0
    olen = len(zone.origin.lower)
    while len(name) - i > olen:
        if name[i:] in cuts:
            found = name[i:]  # keep walking up: the highest cut wins
        i += name[i] + 1
    return found


def _in_zone(zone, name: bytes) -> bool:
    o = zone.origin.lower
    if not name.endswith(o):
        return False
    if len(name) == len(o):
        return True
    # label boundary: walk labels
    i = 0
    while len(name) - i > len(o):
        i += name[i] + 1
    return len(name) - i == len(o)


def _wildcard(zone, name: bytes):
    """The wildcard node that synthesises ``name`` (RFC 4592 closest encloser), or None."""
    names = zone.names
    i = name[0] + 1  # start with the parent: `name` itself does not exist
    olen = len(zone.origin.lower)
    while len(name) - i >= olen:
        encloser = name[i:]
        if encloser in names:
            return zone.nodes.get(b"\x01*" + encloser)
        i += name[i] + 1
    return None


class Route:
    """The part of a decision fixed by the query and the config when it reaches a dynamic
    record: the record, the answer records before it (a CNAME chain, owner ``None`` = the
    query name), the owner of its addresses and the zone (for the SOA of a NODATA).

    ``plan`` returns it; ``route_decision`` finishes it for one client. Per config generation
    the same (name, type, class) always gets the same Route, so callers may cache it, and with
    it what they render from a route's decision keyed by the ``Resolution``'s addresses.
    """

    __slots__ = ("record", "answer", "owner", "zone", "qtype", "uses_resolver")

    def __init__(self, record, answer, owner, zone, qtype):
        self.record = record
        self.answer = tuple(answer)
        self.owner = owner
        self.zone = zone
        self.qtype = qtype
        #: whether ``route`` reads its ``resolver`` argument (records with ``ecs: false``);
        #: callers may pass None otherwise
        self.uses_resolver = not record.ecs

    def __repr__(self) -> str:
        return f"Route({self.record.name}, qtype={self.qtype}, cname={len(self.answer)})"


def decide(q, client, state, status, rng, trace: bool = False, resolver=None) -> Decision:
    """Decide the answer for one parsed query (see the module docstring).

    ``client`` is where the query comes from for routing (the ECS subnet, else the resolver);
    ``resolver`` is the packet's source, used instead by records configured with ``ecs: false``
    (their answers then carry ECS scope 0: valid for every client of that resolver).
    This is ``plan`` followed, for a dynamic record, by ``route`` and ``route_decision``:
    the one policy path; the responder's caches store what these return.
    """
    p = plan(q, state)
    if p.__class__ is Decision:
        return p
    res, scope = route(p, client, resolver, state.geo, status, rng, trace)
    return route_decision(p, res, scope)


def route(r: Route, client, resolver, geo, status, rng, trace: bool = False):
    """Run the route's record for one client: ``(Resolution, ECS scope)``.

    A record with ``ecs: false`` routes on the resolver (``resolver``, when the query had ECS)
    and answers scope 0. The scope is the chain's only when the location came from ECS with a
    source prefix above 0: a /0 source (RFC 7871 §7.1.2: the client's address must not be
    used) and queries routed on the resolver's address get scope 0.
    """
    rec = r.record
    who = client if rec.ecs or resolver is None else resolver
    res = rec.resolve(r.qtype, who, geo, status, rng, trace)
    return res, (res.scope if rec.ecs and who.ecs else 0)


def route_decision(r: Route, res, scope: int) -> Decision:
    """The Decision of a route for one chain outcome: its addresses, or NODATA with the SOA
    when the selected regions have none of the asked family."""
    answer = list(r.answer)
    if res.addresses:
        owner, qtype, ttl = r.owner, r.qtype, r.record.ttl
        for addr in res.addresses:
            answer.append((owner, qtype, IN, ttl, addr))
        return Decision(NOERROR, True, answer, scope=scope, record=r.record, resolution=res)
    return Decision(NOERROR, True, answer, [r.zone.soa_record()], scope=scope, record=r.record,
                    resolution=res)


def plan(q, state):  # noqa: C901 - one walk of RFC 1034 §4.3.2, kept in one place
    """What the query gets as far as the query and the config decide it: a ``Decision``, or
    a ``Route`` when the answer comes from a dynamic record's chain (see ``route``)."""
    qtype = q.qtype
    if q.qclass != IN or qtype == AXFR or qtype == IXFR:
        if q.qclass == CH and identity.TXT_RDATA and q.qname_lower in _CHAOS_NAMES:
            return _chaos(qtype)
        return REFUSED_DECISION
    zone = state.zones.answering(q.qname_lower, qtype)
    if zone is None:
        return REFUSED_DECISION

    dynamic = state.dynamic
    answer: list = []
    name = q.qname_lower
    owner = None  # the query name, rendered as a pointer to the question
    for _ in range(MAX_CHASE + 1):
        if zone.cuts:
            cut = _find_cut(zone, name)
            if cut is not None and not (cut == name and qtype == DS):
                cnode = zone.nodes[cut]
                ns = cnode.rrsets[NS]
                authority: list = []
                _rrset_records(cnode.name, ns, authority)
                additional: list = []
                _addresses_for(zone, ns.targets, additional)
                return Decision(NOERROR, bool(answer), answer, authority, additional,
                                glue_required=bool(additional))
        node = zone.nodes.get(name)
        dyn = dynamic.get(name) if dynamic else None
        exists = node is not None or dyn is not None
        if not exists and name not in zone.names and zone.has_wildcards:
            node = _wildcard(zone, name)
            exists = node is not None
        if not exists:
            if name in zone.names:
                break  # empty non-terminal: NODATA
            return Decision(NXDOMAIN, True, answer, [zone.soa_record()])
        if qtype == ANY:
            answer.append((owner, HINFO, IN, zone.neg_ttl, _RFC8482))
            return Decision(NOERROR, True, answer)
        rrsets = node.rrsets if node is not None else {}
        rr = rrsets.get(qtype)
        if rr is not None:
            _rrset_records(owner, rr, answer)
            additional = []
            if rr.targets:
                _addresses_for(zone, rr.targets, additional)
            return Decision(NOERROR, True, answer, (), additional)
        if dyn is not None and qtype in dyn.types:
            return Route(dyn, answer, owner, zone, qtype)
        cname = rrsets.get(CNAME)
        if cname is not None and qtype != CNAME:
            _rrset_records(owner, cname, answer)
            target = cname.rdatas[0][0]
            if not _in_zone(zone, target.lower) or target.lower == name:
                return Decision(NOERROR, True, answer)
            name = target.lower
            owner = target
            continue
        break  # NODATA
    else:
        # too many CNAME links (or a loop): answer what we have
        return Decision(NOERROR, True, answer)
    return Decision(NOERROR, True, answer, [zone.soa_record()])
