"""What every filter shares: the answer value, the per-query context, the option schema.

A filter is a class with a ``name``, an ``OPTIONS`` schema (option, type, default, range: data,
not code), and ``apply(answers, ctx) -> answers``. It is built once from validated options when
the configuration is loaded; ``apply`` never mutates its input (answers are tuples of frozen
``Answer`` values), does no I/O, and reports why it removed an answer through ``ctx.note`` (a
no-op unless the query is traced for ``filterdns explain``).

Class attributes the chain engine reads:

* ``reads_client``: the filter's output depends on the client's location (or address), so
  the ECS scope must cover it. ``needs_prefix``: it depends on the client's own address bits
  (``sticky``, ``netfence_prefix``), so the scope is raised to ``prefix_needed(client)``.
* ``random``: the output depends on the RNG (``shuffle``, ``weighted_shuffle``, ``shed_load``);
  everything else is a pure function of (answers, location, status) and may be cached.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

from filterdns.cache import Cache
from filterdns.config.schema import Field
from filterdns.routing.geo import COUNTRIES, Location, great_circle_km
from filterdns.routing.inventory import Region
from filterdns.model import Client

EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Answer:
    """One candidate answer: a region's endpoint group for the record's service.

    ``meta`` is the merged metadata (answer over region over record, runtime values over
    config at each level). ``v4``/``v6`` are packed addresses. ``lat``/``lon`` always set
    (the region's own coordinates, else its country's centroid).
    """

    name: str
    region: Region
    v4: tuple[bytes, ...]
    v6: tuple[bytes, ...]
    meta: Mapping[str, Any]
    #: the region's effective state (``filterdns.routing.region_state.RegionState``), if known
    state: Any = None

    def __repr__(self) -> str:
        return f"Answer({self.name})"


#: a filter option is a schema field (one Field type for every option and value the config
#: has; ``filterdns.config.schema`` is a leaf module, so this import adds no cycle)
Option = Field


@dataclass(frozen=True)
class BuildContext:
    """What a filter may look at when it is built (never per query)."""

    regions: Mapping[str, Region]
    default_region: str | None = None
    latency_tables: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=lambda: EMPTY)


class Context:
    """Per-query inputs of a chain run. ``notes`` collects reasons only when tracing."""

    __slots__ = ("client", "location", "rng", "origin", "trace", "notes")

    def __init__(self, client: Client, location: Location, rng: Any, origin: tuple[float, float] | None,
                 trace: bool = False):
        self.client = client
        self.location = location
        self.rng = rng
        #: the point distances are measured from: the client's coordinates, else the default
        #: region's (so an unknown client gets the default region first), else None
        self.origin = origin
        self.trace = trace
        self.notes: list[tuple[str, str]] = []

    def note(self, answer: str, reason: str) -> None:
        if self.trace:
            self.notes.append((answer, reason))


class Filter:
    """Base class. Subclasses set ``name``, ``OPTIONS`` and implement ``apply``."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    reads_client: ClassVar[bool] = False
    needs_prefix: ClassVar[bool] = False
    random: ClassVar[bool] = False
    #: keeps or drops each answer by that answer's own metadata alone (not the client, not the
    #: other answers): applied to a subset of answers, it drops the same ones. The chain uses it
    #: to see that an answer is the same for every client (ECS scope 0).
    per_answer: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any], build: BuildContext):
        self.options = MappingProxyType(dict(options))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {o.name: o.default for o in cls.OPTIONS}

    @classmethod
    def check(cls, options: Mapping[str, Any], build: BuildContext) -> list[tuple[str | None, str]]:
        """Cross-field checks after each option passed its own: [(option or None, message)]."""
        return []

    def prefix_needed(self, client: Client) -> int:
        """Client prefix bits this filter's result depends on (only if ``needs_prefix``)."""
        return client.prefix

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        raise NotImplementedError

    def random_for(self, answers: tuple[Answer, ...]) -> bool:
        """Whether ``apply`` on these answers would use the RNG. The chain memoises every filter
        up to the first one for which this is true; override when randomness depends on the
        input (``shed_load`` only draws for answers between the watermarks)."""
        return self.random

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})"


# -- helpers shared by several filters ---------------------------------------------------------

def as_float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def as_codes(v: Any) -> frozenset[str] | None:
    """A metadata value that lists codes: a string or a list of strings (upper-cased)."""
    if isinstance(v, str):
        return frozenset({v.upper()})
    if isinstance(v, (list, tuple, frozenset, set)):
        return frozenset(str(x).upper() for x in v)
    return None


_NET_CACHE = Cache(4096)  # configured prefix text -> parsed networks


def as_networks(v: Any) -> tuple:
    """Parse an ``ip_prefixes`` metadata value (cached per distinct value)."""
    key = v if isinstance(v, str) else tuple(v) if isinstance(v, (list, tuple)) else None
    if key is None:
        return ()
    nets = _NET_CACHE.get(key)
    if nets is None:
        items = (key,) if isinstance(key, str) else key
        out = []
        for s in items:
            try:
                out.append(ipaddress.ip_network(str(s), strict=False))
            except ValueError:
                continue
        nets = _NET_CACHE.put(key, tuple(out))
    return nets


def region_point(region: Region) -> tuple[float, float] | None:
    if region.lat is not None and region.lon is not None:
        return region.lat, region.lon
    c = COUNTRIES.get(region.country or "")
    return (c.lat, c.lon) if c else None


def distance_from(origin: tuple[float, float] | None, region: Region) -> float:
    """Great-circle km from ``origin`` to the region (inf when either is unknown)."""
    p = region_point(region)
    if origin is None or p is None:
        return float("inf")
    return great_circle_km(origin[0], origin[1], p[0], p[1])


class KeyCache(Cache):
    """A bounded map of per-location sort keys (location key → {region: key});
    ``filterdns.cache.Cache`` (two-generation swap table)."""

    __slots__ = ()

    def __init__(self, max_entries: int = 4096):
        super().__init__(max_entries)
