"""The immutable configuration snapshot served to queries, and the holder swapped on reload.

``State`` is built aside by ``filterdns.config.build.build_state`` (the same function that
``filterdns check`` and start-up call) and swapped in with one reference assignment, so a query
in flight keeps the state it started with and nothing is ever half-applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class State:
    generation: int
    zones: Any  # filterdns.dns.zones.ZoneStore
    dynamic: Mapping[bytes, Any]  # lowercase wire owner -> DynamicRecord
    records: Mapping[str, Any]  # "wss-primary.example.com." -> DynamicRecord
    regions: Mapping[str, Any]  # name -> inventory.Region
    geo: Any  # filterdns.routing.geo.GeoDB
    default_region: str | None = None
    files: tuple[str, ...] = ()
    loaded_at: float = 0.0
    zones_dir: str = ""
    chains_dir: str = ""
    summary: str = ""
    health: tuple = field(default=())  # health-check specs from the chains config, if any


class StateHolder:
    """One reference to the live ``State``; ``swap`` replaces it and tells the listeners."""

    def __init__(self, state: State):
        self.state = state
        self._listeners: list[Callable[[State, State], None]] = []

    def subscribe(self, fn: Callable[[State, State], None]) -> None:
        self._listeners.append(fn)

    def swap(self, new: State) -> State:
        old = self.state
        self.state = new
        for fn in list(self._listeners):
            fn(old, new)
        return old
