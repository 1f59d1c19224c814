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


def decide(q, client, state, status, rng, trace: bool = False, resolver=None) -> Decision:
    """Decide the answer for one parsed query (see the module docstring).

    ``client`` is where the query comes from for routing (the ECS subnet, else the resolver);
    ``resolver`` is the packet's source, used instead by records configured with ``ecs: false``
    (their answers then carry ECS scope 0: valid for every client of that resolver).
    """
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
    record = resolution = None
    scope = 0
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
            return Decision(NXDOMAIN, True, answer, [zone.soa_record()], scope=scope,
                            record=record, resolution=resolution)
        if qtype == ANY:
            answer.append((owner, HINFO, IN, zone.neg_ttl, _RFC8482))
            return Decision(NOERROR, True, answer, scope=scope, record=record, resolution=resolution)
        rrsets = node.rrsets if node is not None else {}
        rr = rrsets.get(qtype)
        if rr is not None:
            _rrset_records(owner, rr, answer)
            additional = []
            if rr.targets:
                _addresses_for(zone, rr.targets, additional)
            return Decision(NOERROR, True, answer, (), additional, scope=scope, record=record,
                            resolution=resolution)
        if dyn is not None and qtype in dyn.types:
            record = dyn
            who = client if dyn.ecs or resolver is None else resolver
            resolution = dyn.resolve(qtype, who, state.geo, status, rng, trace)
            scope = resolution.scope if dyn.ecs else 0
            if resolution.addresses:
                ttl = dyn.ttl
                for addr in resolution.addresses:
                    answer.append((owner, qtype, IN, ttl, addr))
                return Decision(NOERROR, True, answer, scope=scope, record=record,
                                resolution=resolution)
            break  # NODATA: the selected regions have no address of this family
        cname = rrsets.get(CNAME)
        if cname is not None and qtype != CNAME:
            _rrset_records(owner, cname, answer)
            target = cname.rdatas[0][0]
            if not _in_zone(zone, target.lower) or target.lower == name:
                return Decision(NOERROR, True, answer, scope=scope, record=record,
                                resolution=resolution)
            name = target.lower
            owner = target
            continue
        break  # NODATA
    else:
        # too many CNAME links (or a loop): answer what we have
        return Decision(NOERROR, True, answer, scope=scope, record=record, resolution=resolution)
    return Decision(NOERROR, True, answer, [zone.soa_record()], scope=scope, record=record,
                    resolution=resolution)

