"""Dynamic records and chain evaluation.

A ``DynamicRecord`` is built once by the chains loader (``filterdns.config.chains``) with its
filter instances, the regions that have its service and their pre-packed addresses. Per query,
``resolve`` only looks things up:

1. the client's location (only if some enabled filter reads the client),
2. the candidate answers: one per region with the record's service that is not drained by an
   operator, metadata merged with the runtime status and the ``up`` value set from the
   region's effective state (``filterdns.routing.region_state``, the one place that decides
   it), cached per ``Status`` snapshot, so a drain or feed value takes effect on the next
   query and nothing is rebuilt in between,
3. each enabled filter in order,
4. the fallback if the chain left nothing while there were candidates,
5. every address of every selected region for the family asked.

The candidates of a query are the regions with endpoints of the family asked (A: IPv4,
AAAA: IPv6; NS1 keeps A and AAAA apart), so a region without an IPv6 endpoint is no AAAA
candidate and an AAAA query is NODATA only when no region has an IPv6 endpoint.

Metadata precedence (NS1): answer over region over record. Per level, runtime values (data
feeds; a health drain for ``up``) override the config. So, lowest first: record ``meta``,
region ``meta``, runtime region feed, service ``meta``, runtime service feed. An operator drain
is not metadata: the drained region is no candidate at all (fail-open and the fallback never
bring it back).

ECS scope: 0 when no enabled filter reads the client, or when the answer is the same for
every client (a ``per_answer`` filter, e.g. ``shed_load`` above the high watermark, drops every
candidate: the fallback answers everywhere). Otherwise the widest prefix over which
the answer is the same: the shortest aligned prefix around the client's database network
whose every address gets the same deterministic decision (the answers left before the first
random filter) for this record and this region state (``DynamicRecord._widest``,
``GeoDB.widest``); never above the client's prefix (the ECS source prefix; the core caps
there too); the walk that finds it is spread over the first queries from a network, a
bounded part each (``WALK_LOOKS``, ``WALK_RUNS``). A record whose answer depends on the
client's own address bits (``sticky``: its mask; ``netfence_prefix``: the whole source prefix) is not widened: its scope is the matched
network raised to what those filters need.

Fallback (``fallback:`` on the record), used when the chain leaves no answer while the record
has candidates: ``all`` (default): the candidates as they were before the chain, i.e. every
region with the service; ``default_region``: the default region's answer if it is a
candidate (else as ``all``); ``none``: no answer (NODATA).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from filterdns.routing.filters.base import EMPTY, Answer, Context, Filter
from filterdns.routing.geo import UNKNOWN, WIDEN_BUDGET, GeoDB, Location
from filterdns.routing.inventory import EMPTY as _NOTHING, Region, Status
from filterdns.routing.region_state import RegionState, region_state, service_states
from filterdns.cache import Cache
from filterdns.model import A, AAAA, Client

FALLBACKS = ("all", "default_region", "none")
_ANY_CLIENT = Client("0.0.0.0", 4, 0, True)
_MEMO_MAX = 50_000  # memoised chain prefixes (and widest scopes) per record and status snapshot
#: the ECS scope walk's budget per query (``DynamicRecord._widest``): database networks looked
#: at, and chain runs for locations not seen yet (the costly part, about 20-100 us each)
WALK_LOOKS = 64
WALK_RUNS = 2
_NO_DRAW = random.Random(0)  # a filter checked with random_for() false never draws from it


@dataclass(frozen=True, slots=True)
class Step:
    """One filter of a chain as configured (position is 1-based, as in error messages)."""

    position: int
    filter: Filter
    disabled: bool = False

    @property
    def name(self) -> str:
        return self.filter.name


@dataclass(frozen=True, slots=True)
class TraceStep:
    """What one filter did to one query (for ``filterdns explain``)."""

    position: int
    filter: str  # filter name, or "fallback"
    options: str
    disabled: bool
    before: tuple[str, ...]
    after: tuple[str, ...]
    notes: tuple[tuple[str, str], ...]  # (answer or "*", reason)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of one chain run."""

    addresses: tuple[bytes, ...]
    scope: int
    regions: tuple[str, ...]
    removed: tuple[tuple[str, int], ...]
    trace: tuple | None = None
    location: Location | None = None
    fallback: bool = False
    #: every query for this record from the client's geo database network (with the same ECS
    #: source prefix) gets this very answer until the status changes: no filter drew on the
    #: RNG, the scope walk has settled and no filter reads the client's own address bits.
    #: Callers may reuse what they rendered from it for that network (``serve/_mmsg`` Replay)
    fixed: bool = False
    #: a filter drew on the RNG, and that is all the answer depends on beyond what ``fixed``
    #: names: every query from the network gets an independent draw of one distribution, fixed
    #: until the status changes. Callers may keep several draws and pick one of them at random,
    #: each draw replaced by a fresh one now and then (the Replay's pools)
    pooled: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    """A region's endpoint group for one record, as configured (packed once at load)."""

    region: Region
    v4: tuple[bytes, ...]
    v6: tuple[bytes, ...]
    meta: Mapping[str, Any]  # service-level config meta


def merge_meta(record_meta: Mapping[str, Any], c: Candidate, status: Status, service: str,
               state: RegionState | None = None) -> Mapping[str, Any]:
    """Metadata of one answer with NS1 precedence (see module docstring). ``up`` is the
    region's effective ``up`` (``state``, else computed for this region alone)."""
    name = c.region.name
    m = dict(record_meta)
    m.update(c.region.meta)
    m.update(status.feeds.get((name, None), _NOTHING))
    m.update(c.meta)
    m.update(status.feeds.get((name, service), _NOTHING))
    if state is None:
        state = region_state(c.region, service, status, record_meta)
    if state.up is None:
        m.pop("up", None)
    else:
        m["up"] = state.up
    return MappingProxyType(m)


@dataclass(frozen=True, eq=False)
class DynamicRecord:
    """A name answered by running its service's regions through a filter chain."""

    name: str
    zone: str
    service: str
    types: frozenset[int]
    ttl: int
    ecs: bool
    chain_name: str
    reads_client: bool
    steps: tuple[Step, ...]
    candidates: tuple[Candidate, ...]
    fallback: str = "all"
    meta: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    default_region: str | None = None
    default_origin: tuple[float, float] | None = None
    file: str = ""
    line: int = 0
    #: [status, candidate answers, those with IPv4 endpoints, those with IPv6 endpoints]
    _cell: list = field(default_factory=lambda: [None, (), (), ()], repr=False, compare=False)

    def states(self, status: Status) -> tuple[RegionState, ...]:
        """Every candidate region's effective state for this record (``region_state``)."""
        return service_states((c.region for c in self.candidates), self.service, status, self.meta,
                              self.uses_up)

    def answers(self, status: Status, qtype: int | None = None) -> tuple[Answer, ...]:
        """The candidate answers under ``status``: operator-drained regions left out, metadata
        merged, ``up`` from the region state (cached per snapshot). With ``qtype`` (A or AAAA)
        only the regions that have endpoints of that family: NS1 keeps A and AAAA apart, so a
        region without an IPv6 endpoint is no candidate for AAAA (and the AAAA answer is
        NODATA only when no region has one)."""
        cell = self._cell
        if cell[0] is not status:
            out = tuple(
                Answer(c.region.name, c.region, c.v4, c.v6, merge_meta(self.meta, c, status, self.service, st), st)
                for c, st in zip(self.candidates, self.states(status), strict=True)
                if not st.excluded
            )
            cell[1], cell[2], cell[3] = out, tuple(a for a in out if a.v4), tuple(a for a in out if a.v6)
            cell[0] = status
        if qtype is None:
            return cell[1]
        return cell[3] if qtype == AAAA else cell[2]

    def scope_for(self, client: Client, location: Location, geo: GeoDB | None = None,
                  status: Status | None = None, rng: random.Random | None = None, qtype: int = A) -> int:
        """The ECS scope prefix length of an answer to ``client`` (see module docstring).

        With ``geo`` and ``status`` the geo part is the widest aligned prefix around the client
        whose every address gets the same deterministic decision (``_widest``); without them,
        the matched database network.
        """
        if not self.reads_client:
            return 0
        if status is not None and self._memo_for(status, qtype).everywhere:
            return 0  # every candidate is shed whatever the location: the fallback, everywhere
        if geo is not None and status is not None and self._widen:
            scope = self._widest(client, location, geo, status, rng, qtype)[0]
        else:
            scope = location.prefix_len
        for f in self._prefix_filters:
            need = f.prefix_needed(client)
            if need > scope:
                scope = need
        return min(scope, client.prefix)

    def _widest(self, client: Client, loc: Location, geo: GeoDB, status: Status, rng,
                qtype: int = A) -> tuple[int, bool]:
        """The widest prefix length around ``loc``'s network over which this record's
        deterministic decision (``_memo_entry``'s last item) is the same, for ``status``, and
        whether the walk is finished: ``(length, settled)``.

        No query pays for the whole walk: each visits at most ``WALK_LOOKS`` search-tree nodes
        of the geo database and runs the chain for at most ``WALK_RUNS`` locations it has not
        seen, then answers the block verified so far (uniform, so a correct scope, only
        narrower) and leaves the rest to the next queries from that network. A walk settles
        after ``geo.WIDEN_BUDGET`` nodes in all.

        Cached per status snapshot twice: per database network (``nets``: one lookup for the
        next query from it; a walk not finished is kept as (length, nodes visited)) and per
        search-tree subtree (``nodes``: its one decision, or mixed), so walks from neighbouring
        networks share what they found and a walk that resumes starts where it stopped (``GeoDB.widest``). Like gdnsd's merge of supernets at load time, but
        done for the networks clients come from, with the region state of the moment.
        """
        memo = self._memo_for(status, qtype)
        # the client's own chain outcome first, on every path (resolve has it already), so a
        # walk's budget meets the same memo whichever path asks: same queries, same scopes
        mine = self._entry(memo, loc.key, client, loc, status, rng)[6]
        nets = memo.nets
        nkey = loc.net
        got = nets.get(nkey)
        if got.__class__ is int:
            return got, True
        entries = memo.entries
        runs = [0]

        def decision(record: int):
            other = geo.place_at(record)
            e = entries.get(other.key)
            if e is None:
                if runs[0] >= WALK_RUNS:
                    return None
                runs[0] += 1
                e = self._entry(memo, other.key, client, other, status, rng)
            return e[6]

        looked = got[1] if got is not None else 0  # (length verified, nodes visited so far)
        nodes = memo.nodes
        if nodes is None:
            nodes = memo.nodes = geo.node_memo()
        length, spent = geo.widest(client.family, loc, mine, decision, nodes,
                                   min(WALK_LOOKS, WIDEN_BUDGET - looked))
        if spent is None or looked + spent >= WIDEN_BUDGET:  # final, or its whole budget spent
            return nets.put(nkey, length), True
        nets.put(nkey, (length, looked + spent))
        return length, False

    def _memo_for(self, status: Status, qtype: int = A) -> "_Memo":
        """The memo of this status snapshot for the family of ``qtype`` (a new one per snapshot)."""
        memo = self._memo6 if qtype == AAAA else self._memo4
        if memo.status is not status:
            memo = _Memo(status, self.answers(status, qtype), self)
            if qtype == AAAA:
                object.__setattr__(self, "_memo6", memo)
            else:
                object.__setattr__(self, "_memo4", memo)
        return memo

    def _entry(self, memo: "_Memo", key, client: Client, loc: Location, status: Status, rng) -> tuple:
        hit = memo.entries.get(key)
        if hit is None:
            hit = memo.entries.put(key, self._memo_entry(memo.start, client, loc, rng))
        return hit

    def __post_init__(self) -> None:
        enabled = tuple(s for s in self.steps if not s.disabled)
        object.__setattr__(self, "_enabled", enabled)
        #: whether the chain reads ``up`` (an enabled ``up`` filter): region_state needs it
        object.__setattr__(self, "uses_up", any(s.filter.name == "up" for s in enabled))
        object.__setattr__(self, "_prefix_filters", tuple(s.filter for s in enabled if s.filter.needs_prefix))
        filters = tuple(s.filter for s in enabled)
        object.__setattr__(self, "_filters", filters)
        # filters that read more of the client than its location make the address part of the key
        object.__setattr__(self, "_key_has_address", any(f.needs_prefix for f in filters))
        object.__setattr__(self, "_memo4", _Memo(None, (), None))
        object.__setattr__(self, "_memo6", _Memo(None, (), None))
        # the ECS scope is widened over neighbouring networks when the answer depends on the
        # location alone (not on the client's address bits: sticky, netfence_prefix)
        object.__setattr__(self, "_widen", self.reads_client and not self._key_has_address)

    def resolve(
        self,
        qtype: int,
        client: Client,
        geo: GeoDB,
        status: Status,
        rng: random.Random,
        trace: bool = False,
    ) -> Resolution:
        """Run the chain for one query (the record was bound to its State's regions when built).

        Without ``trace`` the deterministic part of the chain (the filters before the first one
        that would draw on the RNG for this input, see ``Filter.random_for``) is memoised per
        (family, location key, status snapshot): a drain, feed value or health change is a new
        ``Status`` and a new memo. Only the filters from the first random one on run per query;
        a chain with none is answered from the memo outright, and the same ``Resolution``
        object comes back for every client it applies to (callers may key what they render
        from it by its addresses). ``_resolve_full`` is the reference the memoised path is
        tested against.
        """
        if trace:
            return self._resolve_full(qtype, client, geo, status, rng, True)
        memo = self._memo6 if qtype == AAAA else self._memo4
        if memo.status is not status:
            memo = self._memo_for(status, qtype)
        if self.reads_client:
            loc = geo.locate(client)
            # the answer of a chain without a tail is fixed per database network: one lookup
            # for every later query from it (unless the source prefix caps its scope)
            nk = loc.net if self._widen and loc.family else None
        else:
            loc, nk = UNKNOWN, 0
        if nk is not None:
            fast = memo.fast
            res = fast.new.get(nk)
            if res is None:
                res = fast.get(nk)
            if res is not None and res.scope <= client.prefix:
                return res
        key = (loc.key, client.address) if self._key_has_address else loc.key
        entry = memo.entries.get(key)
        if entry is None:
            entry = self._entry(memo, key, client, loc, status, rng)
        start, cur, removed, origin, tail, done, _ = entry
        if not self.reads_client or memo.everywhere:
            scope = uncapped = 0
        elif self._widen:
            scope = uncapped = memo.nets.get(loc.net)
            if scope.__class__ is not int:
                scope, settled = self._widest(client, loc, geo, status, rng, qtype)
                uncapped = scope if settled else -1  # not settled: not kept in ``fast``
            if scope > client.prefix:
                scope = client.prefix
        else:
            scope = uncapped = self.scope_for(client, loc)
        # fixed: the scope is final (the walk settled) and no filter reads the client's own
        # address bits: for every query from this database network with this source prefix
        # until the status changes, the same answer (no tail) or a draw of the same one (tail)
        fixed = not self.reads_client or memo.everywhere or (nk is not None and uncapped != -1)
        if not tail:
            dkey = scope if fixed else ~scope
            res = done.get(dkey)
            if res is None:
                res = done[dkey] = self._finish(qtype, start, cur, removed, scope, fixed)
            if nk is not None and scope == uncapped:
                memo.fast.put(nk, res)
            return res
        cur, more = self._tail(memo, tail, cur, removed, key, Context(client, loc, rng, origin, False))
        return self._finish(qtype, start, cur, more, scope, False, fixed)

    @staticmethod
    def _tail(memo: "_Memo", tail: tuple, cur: tuple, removed: tuple, key, ctx: Context) -> tuple:
        """The filters from the first one that draws on the RNG on: ``(answers, removed)``."""
        more = list(removed)
        f = tail[0]  # draws for this input (that is where the memoised part ended)
        out = f.apply(cur, ctx)
        if len(out) < len(cur):
            more.append((f.name, len(cur) - len(out)))
        cur = out
        n = len(tail)
        j = 1
        tails = memo.tails
        while j < n:
            # the filters from j on that do not draw for their input, memoised per input and
            # client key. The input is keyed by identity: filters only drop and reorder the
            # answers they are given, so each is one of this memo's candidates (``start``),
            # alive as long as the memo, and an id cannot be reused while the key is held
            tkey = (j, key, tuple(map(id, cur)))
            hit = tails.get(tkey)
            if hit is None:
                k, c, rem = j, cur, []
                while k < n and not tail[k].random_for(c):
                    o = tail[k].apply(c, ctx)
                    if len(o) < len(c):
                        rem.append((tail[k].name, len(c) - len(o)))
                    c = o
                    k += 1
                hit = tails.put(tkey, (c, tuple(rem), k))
            cur, rem, j = hit
            if rem:
                more.extend(rem)
            if j < n:
                f = tail[j]
                out = f.apply(cur, ctx)
                if len(out) < len(cur):
                    more.append((f.name, len(cur) - len(out)))
                cur = out
                j += 1
        return cur, tuple(more)

    def route_at(self, loc: Location, status: Status, rng: random.Random,
                 client: Client | None = None, qtype: int = A) -> tuple[tuple[str, ...], tuple[str, ...], bool, bool]:
        """Where this record sends a client at ``loc`` under ``status``, without the ECS scope:
        ``(regions answered, regions left before the first filter that draws on the RNG, whether
        one did, whether the fallback answered)``. The same steps as ``resolve`` (the
        deterministic part, the random tail, the fallback), uncached, so a caller that asks for
        many locations (the country map) leaves the query path's memo alone. Filters that read
        the client's own address see ``client`` (default ``0.0.0.0/0`` with ECS); the candidates
        are those of ``qtype``'s family (default A)."""
        client = client if client is not None else _ANY_CLIENT
        start, cur, _, origin, tail, _, _ = self._memo_entry(self.answers(status, qtype), client, loc, rng)
        pool = tuple(a.name for a in cur)
        if tail:
            ctx = Context(client, loc, rng, origin, False)
            for f in tail:
                cur = f.apply(cur, ctx)
        fell_back = not cur and bool(start)
        if fell_back:
            cur = self._fallback(start)
        return tuple(a.name for a in cur), pool, bool(tail), fell_back

    def _memo_entry(self, start, client: Client, loc: Location, rng: random.Random) -> tuple:
        """Run the filters that do not draw on the RNG for this input; keep the rest as the tail."""
        origin = (loc.lat, loc.lon) if loc.lat is not None else self.default_origin
        ctx = Context(client, loc, rng, origin, False)
        cur = start
        removed: list[tuple[str, int]] = []
        filters = self._filters
        i = 0
        while i < len(filters):
            f = filters[i]
            if f.random_for(cur):
                break
            out = f.apply(cur, ctx)
            if len(out) < len(cur):
                removed.append((f.name, len(cur) - len(out)))
            cur = out
            i += 1
        tail = filters[i:]
        # what the answer depends on: the answers left before the first random filter, the
        # filters still to run, and the location itself if one of those reads it
        decision = (tuple(a.name for a in cur), len(tail),
                    loc.key if any(f.reads_client for f in tail) else None)
        return (start, cur, tuple(removed), origin, tail, {}, decision)

    def _everywhere_empty(self, start: tuple[Answer, ...]) -> bool:
        """True when the chain leaves no answer whatever the client: some enabled filter that
        drops answers by their own metadata alone (``Filter.per_answer``, not reading the
        client, no draw for these answers) drops every candidate. Filters only remove and
        reorder, so that filter sees a subset of ``start`` for every client and leaves nothing:
        the fallback answers, the same everywhere (ECS scope 0)."""
        if not start:
            return False
        ctx = Context(None, UNKNOWN, _NO_DRAW, None, False)  # type: ignore[arg-type]
        for f in self._filters:
            if f.per_answer and not f.reads_client and not f.random_for(start) and not f.apply(start, ctx):
                return True
        return False

    def _finish(self, qtype: int, start, cur, removed, scope, fixed: bool = False,
                pooled: bool = False) -> Resolution:
        used_fallback = False
        if not cur and start:
            used_fallback = True
            cur = self._fallback(start)
        if qtype == AAAA:
            addrs = tuple(x for a in cur for x in a.v6)
        else:
            addrs = tuple(x for a in cur for x in a.v4)
        return Resolution(addrs, scope, tuple(a.name for a in cur), removed, None, None, used_fallback,
                          fixed, pooled)

    def _resolve_full(self, qtype: int, client: Client, geo: GeoDB, status: Status,
                      rng: random.Random, trace: bool) -> Resolution:
        """Every filter, every time (explain, and the reference for the memoised path)."""
        loc = geo.locate(client) if self.reads_client else UNKNOWN
        start = self.answers(status, qtype)
        origin = (loc.lat, loc.lon) if loc.lat is not None else self.default_origin
        ctx = Context(client, loc, rng, origin, trace)
        cur = start
        removed: list[tuple[str, int]] = []
        steps: list[TraceStep] | None = [] if trace else None
        for step in (self.steps if trace else self._enabled):  # type: ignore[attr-defined]
            f = step.filter
            if step.disabled:
                steps.append(TraceStep(step.position, f.name, _opts(f), True, _n(cur), _n(cur), ()))
                continue
            out = f.apply(cur, ctx)
            if len(out) < len(cur):
                removed.append((f.name, len(cur) - len(out)))
            if trace:
                steps.append(TraceStep(step.position, f.name, _opts(f), False, _n(cur), _n(out),
                                       tuple(ctx.notes)))
                ctx.notes.clear()
            cur = out
        used_fallback = False
        if not cur and start:
            used_fallback = True
            before = cur
            cur = self._fallback(start)
            if trace:
                steps.append(TraceStep(len(self.steps) + 1, "fallback", self.fallback, False, _n(before),
                                       _n(cur), (("*", f"chain left no answer: fallback {self.fallback}"),)))
        if qtype == AAAA:
            addrs = tuple(x for a in cur for x in a.v6)
        else:
            addrs = tuple(x for a in cur for x in a.v4)
        return Resolution(
            addrs,
            self.scope_for(client, loc, geo, status, rng, qtype),
            tuple(a.name for a in cur),
            tuple(removed),
            tuple(steps) if trace else None,
            loc if trace else None,
            used_fallback,
        )

    def _fallback(self, start: tuple[Answer, ...]) -> tuple[Answer, ...]:
        if self.fallback == "none":
            return ()
        if self.fallback == "default_region":
            for a in start:
                if a.name == self.default_region:
                    return (a,)
        return start


class _Memo:
    """What one record memoises for one status snapshot and one address family: the chain
    prefix per location key (``entries``), the widest scope per database network (``nets``),
    the outcome per database network when it is fixed (``fast``),
    each search-tree subtree's one decision (``nodes``), the candidates (``start``) and
    whether the chain leaves nothing whatever the client (``everywhere``: scope 0). Bounded
    (``filterdns.cache.Cache``); a new snapshot gets a new memo."""

    __slots__ = ("status", "start", "entries", "nets", "nodes", "everywhere", "fast", "tails")

    def __init__(self, status, start, record):
        self.status = status
        self.start = start
        self.entries = Cache(_MEMO_MAX)
        self.nets = Cache(_MEMO_MAX)
        #: database network (``Location.net``) -> its fixed Resolution (scope not capped)
        self.fast = Cache(_MEMO_MAX)
        #: what the ECS scope walks found (``GeoDB.node_memo``), made by the first walk
        self.nodes = None
        #: (tail position, client key, the answers left by identity) -> what the filters from
        #: there give until the next one that draws: (answers, removed, where it stopped)
        self.tails = Cache(_MEMO_MAX)
        self.everywhere = record is not None and record.reads_client and record._everywhere_empty(start)


def _n(answers: tuple[Answer, ...]) -> tuple[str, ...]:
    return tuple(a.name for a in answers)


def _opts(f: Filter) -> str:
    return ", ".join(f"{k}={v}" for k, v in f.options.items())
