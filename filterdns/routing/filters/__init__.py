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
    Up, ShedLoad, GeotargetCountry, GeotargetLatlong, SelectFirstN, Shuffle, WeightedShuffle,
    Priority, Sticky, GeofenceCountry, GeofenceRegional, NetfencePrefix, NetfenceAsn, Latency,
)

#: filter name → class
REGISTRY: Mapping[str, type[Filter]] = MappingProxyType({c.name: c for c in _ALL})

__all__ = ["REGISTRY", "Answer", "BuildContext", "Context", "Filter", "Option"]
