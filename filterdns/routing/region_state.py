"""THE answer to "is this region serving this service, and why".

One function, ``service_states``, computes the effective state of every region of one service
from the four inputs that decide it, and everything that shows or acts on region state calls it
(or the cached result per config ``State`` and runtime ``Status`` snapshot, ``snapshot``): the
chain (``DynamicRecord.answers``: which candidates exist and the ``up`` value the ``up`` filter
reads), ``status`` and ``GET /regions`` (``Controller.regions``), the ``filterdns_region_*``
metrics, ``explain --live`` and the drain safety rule (``check_drain``).

Inputs, in the order they are applied:

1. **Operator drains are hard**: a region (or one service of it) drained by an operator is not
   a candidate at all. No filter sees it, ``up``'s fail-open and the record's ``fallback`` never
   bring it back. If every region of a service is operator-drained, the record answers NODATA.
2. **The effective ``up`` value**, NS1 precedence (answer over region over record, runtime over
   config at each level): service feed, service ``meta``, region feed, region ``meta``, record
   ``meta``. A **health drain** (cause ``health``) is a runtime answer-level ``up: false``: it is
   soft, so fail-open applies to it like to any other down region.
3. **A failing health check that is not drained** (the safety rule refused the drain, e.g.
   ``--max-drain-share``) leaves the region in DNS: state ``held``, "failing, held in DNS by the
   safety rule". The health verdict alone never takes a region out; the drain automation does,
   as soon as the safety rule allows.
4. **Fail-open** (the ``up`` filter, NS1): when no candidate of a service is up, the ``up`` filter
   keeps them all, so every non-excluded region is serving, state ``fail_open``. This is computed
   over all the service's candidates, i.e. for an ``up`` filter at the head of the chain (as in
   every bundled chain); an ``up`` placed after a fence filter fails open over what is left
   there, which ``explain`` shows.

Whether ``up`` matters at all depends on the records: a record whose chain has no enabled
``up`` filter ignores the ``up`` value (state ``no_up_filter`` when it is false, still serving).
A service's view (status, metrics, safety rule) is that of its records; records of one service
that see it differently (a record-level ``up``, or one chain without ``up``) are listed under
``records`` in ``GET /regions``.

Expiry (``drain --for``, feed values pushed with ``ttl``) is not judged here: the controller
removes what has expired at its time and publishes a new ``Status``, so this function and its
caches depend on snapshots only, never on the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from filterdns.routing.inventory import EMPTY, Drain, Region, Status

#: every state, in the order ``status`` lists them; labels of ``filterdns_region_state``
REASONS = ("up", "held", "fail_open", "no_up_filter", "operator_drain", "health_drain",
           "feed_down", "meta_down", "no_up_meta")
#: what each state means for DNS (one line, for people)
MEANING = MappingProxyType({
    "up": "serving",
    "held": "failing, held in DNS by the safety rule",
    "fail_open": "down, served anyway: every region of the service is down (fail-open)",
    "no_up_filter": "up is false, served anyway: no chain of the service reads up",
    "operator_drain": "out of DNS: drained by an operator",
    "health_drain": "out of DNS: health check failing",
    "feed_down": "out of DNS: a data feed says up=false",
    "meta_down": "out of DNS: the config says up: false",
    "no_up_meta": "out of DNS: no up value at any level (the up filter counts unset as down)",
})
#: short names of the states that keep a region out, for one-line summaries
_OUT = MappingProxyType({
    "operator_drain": "drained by an operator", "health_drain": "health-drained",
    "feed_down": "feed up=false", "meta_down": "up: false in config", "no_up_meta": "no up value",
})


@dataclass(frozen=True, slots=True)
class RegionState:
    """The effective state of one (region, service), as DNS acts on it."""

    region: str
    service: str
    #: DNS sends clients here (for a chain with ``up`` at its head)
    serving: bool
    #: one of ``REASONS``
    reason: str
    #: one line saying why, for people ("drained by operator:alice 2026-...: LB swap")
    why: str
    #: the ``up`` value filters read (None: set at no level)
    up: bool | None
    #: where ``up`` came from ("service feed", "region meta", "health drain", ... or "")
    up_from: str
    #: hard exclusion (operator drain): not a candidate at all
    excluded: bool
    #: health verdict: True, False, None (no check or no verdict yet)
    health: bool | None
    #: the drain that applies (the service's own, else the region's), if any
    drain: Drain | None

    @property
    def held(self) -> bool:
        return self.reason == "held"

    @property
    def ok(self) -> bool:
        """Serving and believed up (not only by fail-open): what the safety rule counts."""
        return self.serving and self.reason != "fail_open"

    def to_json(self) -> dict:
        return {"serving": self.serving, "reason": self.reason, "why": self.why, "up": self.up,
                "up_from": self.up_from, "held": self.held, "excluded": self.excluded}


def _drain_text(d: Drain) -> str:
    who = d.actor or d.cause
    text = f"drained by {who}" + (f": {d.reason}" if d.reason else "")
    if d.until is not None:
        text += f" (until {_iso(d.until)})"
    return text


def _iso(t: float) -> str:
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def effective_up(region: Region, service: str, status: Status,
                 record_meta: Mapping[str, Any] = EMPTY) -> tuple[bool | None, str]:
    """The ``up`` value filters read, and where it came from (NS1 precedence, runtime first)."""
    name = region.name
    svc = region.services.get(service)
    d = status.drains.get((name, service))
    if d is not None and d.cause == "health":
        return False, "health drain"
    for value, src in (
        (status.feeds.get((name, service), EMPTY).get("up"), "service feed"),
        ((svc.meta if svc is not None else EMPTY).get("up"), "service meta"),
        (status.feeds.get((name, None), EMPTY).get("up"), "region feed"),
        (region.meta.get("up"), "region meta"),
        (record_meta.get("up"), "record meta"),
    ):
        if value is not None:
            return bool(value), src
    return None, ""


def region_state(region: Region, service: str, status: Status, record_meta: Mapping[str, Any] = EMPTY,
                 uses_up: bool = True) -> RegionState:
    """One region's state before fail-open (``service_states`` applies that over the service)."""
    name = region.name
    drain = status.drained(name, service)
    health = status.health.get((name, service))
    up, src = effective_up(region, service, status, record_meta)
    if drain is not None and drain.cause != "health":
        scope = "" if drain.service is not None else " (the whole region)"
        return RegionState(name, service, False, "operator_drain", _drain_text(drain) + scope, up, src,
                           True, health, drain)
    # a health drain of the region as a whole (not made by the automation, but possible by hand)
    if drain is not None and drain.cause == "health" and drain.service is None:
        up, src = False, "health drain"
    if up is True:
        if health is False and src != "health drain":
            return RegionState(name, service, True, "held",
                               "failing, held in DNS by the safety rule (the health drain was refused)",
                               up, src, False, health, drain)
        return RegionState(name, service, True, "up", f"up: true from {src}", up, src, False, health, drain)
    if src == "health drain":
        reason, why = "health_drain", "health check failing: " + (_drain_text(drain) if drain else "drained")
    elif src.endswith("feed"):
        reason, why = "feed_down", f"up=false from the {src}"
    elif src:
        reason, why = "meta_down", f"up: false in the {src}"
    else:
        reason, why = "no_up_meta", "no up value at record, region or service level (unset counts as down)"
    if not uses_up:
        return RegionState(name, service, True, "no_up_filter",
                           f"{why}; served anyway: no enabled up filter in the chain", up, src, False,
                           health, drain)
    return RegionState(name, service, False, reason, why, up, src, False, health, drain)


def service_states(regions: Iterable[Region], service: str, status: Status,
                   record_meta: Mapping[str, Any] = EMPTY, uses_up: bool = True) -> tuple[RegionState, ...]:
    """THE effective state of every given region (those with ``service``), fail-open applied."""
    states = tuple(region_state(r, service, status, record_meta, uses_up)
                   for r in regions if service in r.services)
    if uses_up and states and not any(s.serving for s in states):
        states = tuple(s if s.excluded else replace(
            s, serving=True, reason="fail_open",
            why=f"fail-open: no region of {service} is up, so the up filter keeps them all ({s.why})")
            for s in states)
    return states


# -- a whole snapshot: per service and per record, cached ---------------------------------------

def record_view(rec: Any) -> tuple[Any, bool]:
    """What of a record bears on region state: its record-level ``up`` and whether it reads up."""
    return rec.meta.get("up"), bool(getattr(rec, "uses_up", True))


@dataclass(frozen=True)
class Snapshot:
    """Region states for one (config State, runtime Status) pair."""

    #: (region, service) -> state in the service's view (see ``service_view``)
    services: Mapping[tuple[str, str], RegionState]
    #: record name -> region -> state, for records whose view differs from their service's
    differing: Mapping[str, Mapping[str, RegionState]]
    #: service -> (record-level up, uses up) of the view used for the service
    views: Mapping[str, tuple[Any, bool]]
    #: service -> the record views of its records (every distinct one)
    record_views: Mapping[str, Mapping[str, tuple[Any, bool]]]

    def get(self, region: str, service: str) -> RegionState | None:
        return self.services.get((region, service))

    def of_service(self, service: str) -> list[RegionState]:
        return [s for (_, svc), s in self.services.items() if svc == service]


def service_view(records: Iterable[Any], service: str) -> tuple[tuple[Any, bool], dict[str, tuple[Any, bool]]]:
    """The view a service is shown in: that of its records (the most common one when they differ;
    ``(None, False)`` when no record uses the service: then ``up`` is read by no one)."""
    views = {r.name: record_view(r) for r in records if r.service == service}
    if not views:
        return (None, False), views
    counts: dict = {}
    for name in sorted(views):
        counts.setdefault(views[name], []).append(name)
    # the most common view; on a tie, that of the first record by name
    best = min(counts.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))[0]
    return best, views


def compute(state: Any, status: Status) -> Snapshot:
    """Every region's state for every service, in each service's view (uncached)."""
    regions: Mapping[str, Region] = getattr(state, "regions", None) or {}
    records = list((getattr(state, "records", None) or {}).values())
    services = sorted({s for r in regions.values() for s in r.services})
    out: dict = {}
    differing: dict = {}
    views: dict = {}
    rviews: dict = {}
    for svc in services:
        view, recs = service_view(records, svc)
        views[svc], rviews[svc] = view, MappingProxyType(recs)
        meta = MappingProxyType({"up": view[0]}) if view[0] is not None else EMPTY
        base = service_states(regions.values(), svc, status, meta, view[1])
        for st in base:
            out[(st.region, svc)] = st
        for rname, rv in recs.items():
            if rv == view:
                continue
            rmeta = MappingProxyType({"up": rv[0]}) if rv[0] is not None else EMPTY
            mine = {st.region: st for st in service_states(regions.values(), svc, status, rmeta, rv[1])}
            if any(mine[st.region] != st for st in base):
                differing[rname] = MappingProxyType(mine)
    return Snapshot(MappingProxyType(out), MappingProxyType(differing), MappingProxyType(views),
                    MappingProxyType(rviews))


_cache: list = [None, None, None]  # state, status, Snapshot


def snapshot(state: Any, status: Status) -> Snapshot:
    """``compute(state, status)``, cached for the last pair of snapshots (both immutable)."""
    c = _cache
    if c[0] is state and c[1] is status and c[2] is not None:
        return c[2]
    snap = compute(state, status)
    c[0], c[1], c[2] = state, status, snap
    return snap


# -- the drain safety rule ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DrainCheck:
    """What the safety rule says about one drain, and what DNS would do afterwards."""

    #: reasons to refuse (empty: allowed)
    problems: tuple[str, ...]
    #: service -> summary of DNS after the drain (see ``summarize``)
    after: Mapping[str, dict]

    @property
    def allowed(self) -> bool:
        return not self.problems


def summarize(states: Iterable[RegionState]) -> dict:
    """Counts per state and one sentence saying what DNS does for the service."""
    states = list(states)
    total = len(states)
    by: dict[str, list[str]] = {}
    for s in states:
        by.setdefault(s.reason, []).append(s.region)
    ok = [s.region for s in states if s.ok]
    serving = [s.region for s in states if s.serving]
    out_parts = [f"{len(v)} {_OUT[k]} ({', '.join(sorted(v))})"
                 for k, v in sorted(by.items(), key=lambda kv: REASONS.index(kv[0])) if k in _OUT]
    if not serving:
        text = (f"no region serves it: all {total} region(s) drained by an operator; "
                f"DNS answers NODATA")
    elif not ok:
        text = (f"no region is up; DNS fails open to {len(serving)} region(s) believed down "
                f"({', '.join(sorted(serving))})")
        if by.get("operator_drain"):
            text += f"; {len(by['operator_drain'])} drained by an operator"
    else:
        text = f"{len(ok)} of {total} region(s) serving"
        if by.get("held"):
            text += f" ({len(by['held'])} failing, held in DNS by the safety rule: {', '.join(by['held'])})"
        if out_parts:
            text += "; out: " + ", ".join(out_parts)
    return {"regions": total, "serving": len(serving), "up": len(ok), "out": total - len(serving),
            "states": {k: sorted(v) for k, v in by.items()}, "dns": text}


def with_drain(status: Status, drain: Drain) -> Status:
    """``status`` as it would be with ``drain`` added (for the safety rule; not published)."""
    drains = dict(status.drains)
    drains[(drain.region, drain.service)] = drain
    return replace(status, drains=MappingProxyType(drains))


def check_drain(state: Any, status: Status, drain: Drain, max_share: float = 1.0) -> DrainCheck:
    """The safety rule, on effective state: a pure function of (config State, Status, drain).

    For every service the drain touches, and every distinct view of its records:

    * refused when the drain takes a region out that DNS serves now (fail-open included) and
      leaves the service with no region that is serving and believed up (health, feeds, ``up``
      metadata and other drains counted; fail-open does not count as up);
    * refused when it takes a region out and more than ``max_share`` of the service's regions
      would then be out of DNS or believed down.

    Callers decide what ``force`` overrides (operators may force; the health automation never).
    """
    regions: Mapping[str, Region] = getattr(state, "regions", None) or {}
    region = regions[drain.region]
    services = [drain.service] if drain.service is not None else sorted(region.services)
    records = list((getattr(state, "records", None) or {}).values())
    after_status = with_drain(status, drain)
    problems: list[str] = []
    after: dict[str, dict] = {}
    for svc in services:
        view, recs = service_view(records, svc)
        all_views = [view] + sorted({v for v in recs.values() if v != view}, key=repr)
        for i, (rup, uses) in enumerate(all_views):
            meta = MappingProxyType({"up": rup}) if rup is not None else EMPTY
            before = {s.region: s for s in service_states(regions.values(), svc, status, meta, uses)}
            now_after = {s.region: s for s in service_states(regions.values(), svc, after_status, meta, uses)}
            if i == 0:
                after[svc] = summarize(now_after.values())
            mine = before.get(drain.region)
            if mine is None or not mine.serving or not now_after[drain.region].excluded and \
                    now_after[drain.region].ok == mine.ok:
                continue  # this drain changes nothing DNS does with this region for this service
            who = "" if i == 0 else " (for " + ", ".join(sorted(n for n, v in recs.items() if v == (rup, uses))) + ")"
            up_left = [s for s in now_after.values() if s.ok]
            total = len(now_after)
            if not up_left:
                dns_after = summarize(now_after.values())["dns"]
                if mine.ok:
                    problems.append(f"{drain.region} is the last region of {svc} that is serving and "
                                    f"up{who}; afterwards {dns_after}")
                else:
                    problems.append(f"draining {drain.region} would leave no region of {svc} serving "
                                    f"and up{who}; afterwards {dns_after}")
            elif total - len(up_left) > max_share * total:
                problems.append(
                    f"draining {drain.region} would leave {total - len(up_left)} of {total} regions of "
                    f"{svc} out of DNS or down{who}, more than the allowed share {max_share:g}")
    return DrainCheck(tuple(dict.fromkeys(problems)), MappingProxyType(after))
