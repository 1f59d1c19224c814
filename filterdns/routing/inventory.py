"""Regions (from config) and their runtime status (from operators, feeds and health checks).

Two halves, kept apart on purpose:

* ``Region`` / ``Service`` are *configuration*: built by the chains loader, immutable, part of
  ``State`` and replaced on reload.
* ``Status`` is *runtime*: drains, health verdicts and data-feed values. It lives in the
  ``Inventory`` holder, not in the config, so a reload never undoes a drain. Every change builds
  a new immutable ``Status`` with ``generation + 1`` and swaps one reference (copy-on-write), so
  a query in flight keeps the snapshot it started with, and caches keyed on the generation are
  invalidated by any change.

Metadata precedence when a filter reads a field (NS1): answer (the region's service) over region
over record. ``Status.overrides`` gives the runtime layer of the first two; the effective ``up``
is false when the region or service is drained or its health check says down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping

#: metadata keys a data feed may push (NS1 data feeds); value types
FEED_KEYS: Mapping[str, type] = MappingProxyType(
    {"up": bool, "connections": float, "requests": float, "loadavg": float}
)

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

    def to_json(self) -> dict:
        return {
            "region": self.region,
            "service": self.service,
            "reason": self.reason,
            "actor": self.actor,
            "cause": self.cause,
            "since": self.since,
        }


Key = tuple[str, "str | None"]  # (region, service or None for the whole region)


@dataclass(frozen=True, slots=True)
class Status:
    """Immutable runtime snapshot. Do not build by hand outside tests; use ``Inventory``."""

    generation: int = 0
    drains: Mapping[Key, Drain] = field(default_factory=lambda: EMPTY)
    # (region, service) -> healthy; absent: unknown (counts as up)
    health: Mapping[tuple[str, str], bool] = field(default_factory=lambda: EMPTY)
    feeds: Mapping[Key, Mapping[str, Any]] = field(default_factory=lambda: EMPTY)

    def drained(self, region: str, service: str) -> Drain | None:
        return self.drains.get((region, service)) or self.drains.get((region, None))

    def overrides(self, region: str, service: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """Runtime metadata for (answer level, region level).

        Answer level: feed values for (region, service), then ``up: False`` if the service or
        the region is drained or the service's health check says down. Region level: feed values
        for the whole region.
        """
        answer = dict(self.feeds.get((region, service), EMPTY))
        if self.drained(region, service) is not None or self.health.get((region, service)) is False:
            answer["up"] = False
        return answer, self.feeds.get((region, None), EMPTY)

    def to_json(self) -> dict:
        """What survives a restart: drains and feed values (health is re-measured)."""
        return {
            "drains": [d.to_json() for d in self.drains.values()],
            "feeds": [
                {"region": r, "service": s, "values": dict(v)} for (r, s), v in self.feeds.items()
            ],
        }


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
        dr = Drain(d["region"], d.get("service"), d.get("reason", ""), d.get("actor", ""),
                   d.get("cause", "operator"), float(d.get("since", 0)))
        drains[(dr.region, dr.service)] = dr
    feeds = {(f["region"], f.get("service")): MappingProxyType(dict(f["values"]))
             for f in data.get("feeds", ())}
    health = {(r, s): bool(ok) for r, s, ok in data.get("health", ())}
    return Status(int(data.get("generation", 0)), MappingProxyType(drains), MappingProxyType(health),
                  MappingProxyType(feeds))


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
    ) -> Drain:
        d = Drain(region, service, reason, actor, cause, time.time() if now is None else now)
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
    def feed(self, region: str, service: str | None, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """Merge validated feed values (see ``FEED_KEYS``) for a region or one of its services."""
        feeds = dict(self._status.feeds)
        merged = dict(feeds.get((region, service), EMPTY))
        merged.update(values)
        feeds[(region, service)] = MappingProxyType(merged)
        self._swap(
            feeds=MappingProxyType(feeds),
            _event={"action": "feed", "region": region, "service": service, "values": dict(values)},
        )
        return feeds[(region, service)]

    # -- committed operator state ----------------------------------------------------------
    def commit(self, drains: Mapping[Key, Drain], feeds: Mapping[Key, Mapping[str, Any]], event: dict) -> Status:
        """Swap in drains and feeds that the state store has made durable (one swap)."""
        return self._swap(drains=MappingProxyType(dict(drains)), feeds=MappingProxyType(dict(feeds)),
                          _event=dict(event))

    # -- persistence ----------------------------------------------------------------------
    def restore(self, data: Mapping[str, Any]) -> None:
        """Load what ``Status.to_json`` wrote (drains and feeds), replacing both."""
        saved = load_status(data)
        self._swap(
            drains=saved.drains,
            feeds=saved.feeds,
            _event={"action": "restore", "drains": len(saved.drains), "feeds": len(saved.feeds)},
        )
