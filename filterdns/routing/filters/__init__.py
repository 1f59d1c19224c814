"""The filter registry: YAML name → filter class (one module per filter, same name).

Each module's docstring is the filter's manual (``filterdns explain`` and docs/chains.md point
here). ``REGISTRY`` is what the chains loader validates names against.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from filterdns.routing.filters.base import Answer, BuildContext, Context, Filter, Option
from filterdns.routing.filters.geofence_country import GeofenceCountry
from filterdns.routing.filters.geofence_regional import GeofenceRegional
from filterdns.routing.filters.geotarget_country import GeotargetCountry
from filterdns.routing.filters.geotarget_latlong import GeotargetLatlong
from filterdns.routing.filters.geotarget_regional import GeotargetRegional
from filterdns.routing.filters.latency import Latency
from filterdns.routing.filters.netfence_asn import NetfenceAsn
from filterdns.routing.filters.netfence_prefix import NetfencePrefix
from filterdns.routing.filters.priority import Priority
from filterdns.routing.filters.select_first_n import SelectFirstN
from filterdns.routing.filters.shed_load import ShedLoad
from filterdns.routing.filters.shuffle import Shuffle
from filterdns.routing.filters.sticky import Sticky
from filterdns.routing.filters.up import Up
from filterdns.routing.filters.weighted_shuffle import WeightedShuffle

_ALL: tuple[type[Filter], ...] = (
    Up, ShedLoad, GeotargetCountry, GeotargetLatlong, GeotargetRegional, SelectFirstN, Shuffle, WeightedShuffle,
    Priority, Sticky, GeofenceCountry, GeofenceRegional, NetfencePrefix, NetfenceAsn, Latency,
)



def build_registry(classes) -> Mapping[str, type[Filter]]:
    """name → class; two filters claiming one name (or a filter without a name) is an error,
    raised at import, instead of one silently replacing the other."""
    out: dict[str, type[Filter]] = {}
    for c in classes:
        if not c.name:
            raise ValueError(f"filter class {c.__module__}.{c.__qualname__} has no name")
        if c.name in out:
            other = out[c.name]
            raise ValueError(f"filter name {c.name!r} is claimed by both {other.__module__}.{other.__qualname__} "
                             f"and {c.__module__}.{c.__qualname__}")
        out[c.name] = c
    return MappingProxyType(out)


#: filter name → class
REGISTRY: Mapping[str, type[Filter]] = build_registry(_ALL)

__all__ = ["REGISTRY", "Answer", "BuildContext", "Context", "Filter", "Option"]
