"""Regions (from config) and their runtime status (from operators, feeds and health checks).

Two halves, kept apart on purpose:

* ``Region`` / ``Service`` are *configuration*: built by the chains loader, immutable, part of
  ``State`` and replaced on reload.
* ``Status`` is *runtime*: drains, health verdicts and data-feed values. It lives in the
  ``Inventory`` holder, not in the config, so a reload never undoes a drain. Every change builds
  a new immutable ``Status`` with ``generation + 1`` and swaps one reference (copy-on-write), so
  a query in flight keeps the snapshot it started with, and caches keyed on the generation are
  invalidated by any change.

What the runtime status means for DNS (is a region serving, and why) is decided in one place,
``filterdns.routing.region_state``; this module only holds the values.

Expiry: a drain may carry ``until`` and feed values an expiry per key (``Status.feed_until``).
``Inventory.expire(now)`` drops what has expired in one swap; the controller calls it at each
expiry time, so every snapshot is exactly what DNS acts on (nothing here reads the clock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping

from filterdns.config.schema import FEED  # a leaf module: the one table of feedable keys

#: metadata keys a data feed may push (NS1 data feeds); value types
#: metadata keys a data feed may push (NS1 data feeds): the schema's ``FEED`` table
FEED_KEYS = FEED

EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Service:
    """One service (``wss``, ``api``, ...) of a region: its load-balancer endpoints."""

    name: str
    v4: tuple[str, ...] = ()
    v6: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=lambda: EMPTY)  # answer-level, from config


@dataclass(frozen=True, slots=True)
class Region:
    """One edge region (PoP) as configured."""

    name: str
    code: str = ""
    country: str | None = None
    subdivision: str | None = None
    continent: str | None = None
    lat: float | None = None
    lon: float | None = None
    services: Mapping[str, Service] = field(default_factory=lambda: EMPTY)
    meta: Mapping[str, Any] = field(default_factory=lambda: EMPTY)  # region-level, from config


@dataclass(frozen=True, slots=True)
class Drain:
    """A region (``service`` None) or one service of it taken out of DNS."""

    region: str
    service: str | None
    reason: str
    actor: str  # "operator:<name>" or "health"
    cause: str  # "operator" | "health"
    since: float  # unix time
    until: float | None = None  # unix time the drain expires, or None

    def to_json(self) -> dict:
        d = {
            "region": self.region,
            "service": self.service,
            "reason": self.reason,
            "actor": self.actor,
            "cause": self.cause,
            "since": self.since,
        }
        if self.until is not None:
            d["until"] = self.until
        return d


Key = tuple[str, "str | None"]  # (region, service or None for the whole region)


@dataclass(frozen=True, slots=True)
class Status:
    """Immutable runtime snapshot. Do not build by hand outside tests; use ``Inventory``."""

    generation: int = 0
    drains: Mapping[Key, Drain] = field(default_factory=lambda: EMPTY)
    # (region, service) -> healthy; absent: unknown (counts as up)
    health: Mapping[tuple[str, str], bool] = field(default_factory=lambda: EMPTY)
    feeds: Mapping[Key, Mapping[str, Any]] = field(default_factory=lambda: EMPTY)
    # (region, service or None, feed key) -> unix time the value expires
    feed_until: Mapping[tuple[str, "str | None", str], float] = field(default_factory=lambda: EMPTY)

    def drained(self, region: str, service: str) -> Drain | None:
        """The drain that applies to (region, service): its own, else the whole region's."""
        return self.drains.get((region, service)) or self.drains.get((region, None))

    def next_expiry(self) -> float | None:
        """The earliest ``until`` of any drain or feed value, or None."""
        times = [d.until for d in self.drains.values() if d.until is not None]
        times.extend(self.feed_until.values())
        return min(times) if times else None

    def to_json(self) -> dict:
        """What survives a restart: drains and feed values (health is re-measured)."""
        feeds = []
        for (r, s), v in self.feeds.items():
            entry: dict[str, Any] = {"region": r, "service": s, "values": dict(v)}
            until = {k: t for (fr, fs, k), t in self.feed_until.items() if (fr, fs) == (r, s)}
            if until:
                entry["until"] = until
            feeds.append(entry)
        return {"drains": [d.to_json() for d in self.drains.values()], "feeds": feeds}


def dump_status(status: Status) -> dict:
    """The whole snapshot (drains, feeds, health, generation) as JSON, for worker processes."""
    d = status.to_json()
    d["generation"] = status.generation
    d["health"] = [[r, s, ok] for (r, s), ok in status.health.items()]
    return d


def load_status(data: Mapping[str, Any]) -> Status:
    """Inverse of ``dump_status``."""
    drains = {}
    for d in data.get("drains", ()):
        until = d.get("until")
        dr = Drain(d["region"], d.get("service"), d.get("reason", ""), d.get("actor", ""),
                   d.get("cause", "operator"), float(d.get("since", 0)),
                   None if until is None else float(until))
        drains[(dr.region, dr.service)] = dr
    feeds = {}
    feed_until = {}
    for f in data.get("feeds", ()):
        key = (f["region"], f.get("service"))
        feeds[key] = MappingProxyType(dict(f["values"]))
        for k, t in (f.get("until") or {}).items():
            if k in f["values"]:
                feed_until[(key[0], key[1], k)] = float(t)
    health = {(r, s): bool(ok) for r, s, ok in data.get("health", ())}
    return Status(int(data.get("generation", 0)), MappingProxyType(drains), MappingProxyType(health),
                  MappingProxyType(feeds), MappingProxyType(feed_until))


class Inventory:
    """Holder of the current ``Status``; every mutation swaps in a new snapshot.

    Listeners (persistence, worker fan-out, metrics) are called after each swap with the new
    snapshot and a short description of the change. Single-threaded use (the event loop).
    """

    def __init__(self, status: Status | None = None):
        self._status = status or Status()
        self._listeners: list[Callable[[Status, dict], None]] = []

    @property
    def status(self) -> Status:
        return self._status

    def subscribe(self, fn: Callable[[Status, dict], None]) -> None:
        self._listeners.append(fn)

    def _swap(self, **changes: Any) -> Status:
        event = changes.pop("_event")
        new = replace(self._status, generation=self._status.generation + 1, **changes)
        self._status = new
        for fn in list(self._listeners):
            fn(new, event)
        return new

    def replace(self, status: Status) -> None:
        """Adopt a whole snapshot made elsewhere (a worker following its supervisor)."""
        self._status = status
        for fn in list(self._listeners):
            fn(status, {"action": "replace", "generation": status.generation})

    # -- drains ---------------------------------------------------------------------------
    def drain(
        self,
        region: str,
        service: str | None,
        reason: str,
        actor: str,
        cause: str = "operator",
        now: float | None = None,
        until: float | None = None,
    ) -> Drain:
        d = Drain(region, service, reason, actor, cause, time.time() if now is None else now, until)
        drains = dict(self._status.drains)
        drains[(region, service)] = d
        self._swap(drains=MappingProxyType(drains), _event={"action": "drain", **d.to_json()})
        return d

    def undrain(self, region: str, service: str | None, actor: str, cause: str = "operator") -> Drain | None:
        old = self._status.drains.get((region, service))
        if old is None:
            return None
        drains = dict(self._status.drains)
        del drains[(region, service)]
        self._swap(
            drains=MappingProxyType(drains),
            _event={"action": "undrain", "region": region, "service": service, "actor": actor, "cause": cause},
        )
        return old

    # -- health ---------------------------------------------------------------------------
    def set_health(self, region: str, service: str, healthy: bool | None) -> None:
        """Record a health verdict (None forgets it: unknown counts as up)."""
        if self._status.health.get((region, service)) is healthy:
            return
        health = dict(self._status.health)
        if healthy is None:
            health.pop((region, service), None)
        else:
            health[(region, service)] = healthy
        self._swap(
            health=MappingProxyType(health),
            _event={"action": "health", "region": region, "service": service, "healthy": healthy},
        )

    # -- data feeds -----------------------------------------------------------------------
    def feed(self, region: str, service: str | None, values: Mapping[str, Any],
             until: float | None = None) -> Mapping[str, Any]:
        """Merge validated feed values (see ``FEED_KEYS``) for a region or one of its services.

        ``until`` (unix time) makes these values expire then; without it they do not expire
        (an earlier expiry of a key pushed again is cancelled)."""
        feeds, fu = fed(self._status, region, service, values, until)
        event = {"action": "feed", "region": region, "service": service, "values": dict(values)}
        if until is not None:
            event["until"] = until
        self._swap(feeds=feeds, feed_until=fu, _event=event)
        return feeds[(region, service)]

    # -- committed operator state ----------------------------------------------------------
    def commit(self, drains: Mapping[Key, Drain], feeds: Mapping[Key, Mapping[str, Any]], event: dict,
               feed_until: Mapping[tuple, float] | None = None) -> Status:
        """Swap in drains and feeds (and feed expiries) that the state store has made durable
        (one swap). Without ``feed_until`` the current expiries of values still present stay."""
        if feed_until is None:
            feed_until = {k: t for k, t in self._status.feed_until.items()
                          if k[2] in feeds.get((k[0], k[1]), EMPTY)}
        return self._swap(drains=MappingProxyType(dict(drains)), feeds=MappingProxyType(dict(feeds)),
                          feed_until=MappingProxyType(dict(feed_until)), _event=dict(event))

    # -- persistence ----------------------------------------------------------------------
    def restore(self, data: Mapping[str, Any]) -> None:
        """Load what ``Status.to_json`` wrote (drains and feeds), replacing both."""
        saved = load_status(data)
        self._swap(
            drains=saved.drains,
            feeds=saved.feeds,
            feed_until=saved.feed_until,
            _event={"action": "restore", "drains": len(saved.drains), "feeds": len(saved.feeds)},
        )


# -- changes computed from a snapshot (the controller commits them through the state store) -----

def fed(status: Status, region: str, service: str | None, values: Mapping[str, Any],
        until: float | None) -> tuple[Mapping, Mapping]:
    """(feeds, feed_until) with ``values`` merged for (region, service); ``until`` sets their
    expiry (None cancels an earlier expiry of the keys pushed again)."""
    feeds = dict(status.feeds)
    feeds[(region, service)] = MappingProxyType({**feeds.get((region, service), EMPTY), **values})
    fu = dict(status.feed_until)
    for k in values:
        if until is None:
            fu.pop((region, service, k), None)
        else:
            fu[(region, service, k)] = until
    return MappingProxyType(feeds), MappingProxyType(fu)


def cleared(status: Status, region: str, service: str | None,
            keys: tuple[str, ...] | None = None) -> tuple[Mapping, Mapping, dict]:
    """(feeds, feed_until, dropped values) with the given keys (all when None) of (region,
    service) removed."""
    feeds = dict(status.feeds)
    cur = dict(feeds.get((region, service), EMPTY))
    gone = {k: cur.pop(k) for k in (list(cur) if keys is None else keys) if k in cur}
    if cur:
        feeds[(region, service)] = MappingProxyType(cur)
    else:
        feeds.pop((region, service), None)
    fu = {k: t for k, t in status.feed_until.items()
          if not (k[0] == region and k[1] == service and k[2] in gone)}
    return MappingProxyType(feeds), MappingProxyType(fu), gone


def expired(status: Status, now: float) -> tuple[Mapping, Mapping, Mapping, list, list]:
    """(drains, feeds, feed_until, expired drains, expired (region, service, key, value)) at
    ``now``."""
    gone_d = [d for d in status.drains.values() if d.until is not None and d.until <= now]
    drains = {k: d for k, d in status.drains.items() if not (d.until is not None and d.until <= now)}
    feeds = {k: dict(v) for k, v in status.feeds.items()}
    values = []
    for (r, s, k), t in sorted(status.feed_until.items(), key=lambda kv: (kv[1], str(kv[0]))):
        if t > now:
            continue
        cur = feeds.get((r, s))
        if cur is not None and k in cur:
            values.append((r, s, k, cur.pop(k)))
            if not cur:
                del feeds[(r, s)]
    fu = {k: t for k, t in status.feed_until.items() if t > now}
    return (MappingProxyType(drains), MappingProxyType({k: MappingProxyType(v) for k, v in feeds.items()}),
            MappingProxyType(fu), gone_d, values)
