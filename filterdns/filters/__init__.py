"""The filter registry: YAML name → filter class (one module per filter, same name).

Each module's docstring is the filter's manual (``filterdns explain`` and docs/chains.md point
here). ``REGISTRY`` is what the chains loader validates names against.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .base import Answer, BuildContext, Context, Filter, Option
from .geofence_country import GeofenceCountry
from .geofence_regional import GeofenceRegional
from .geotarget_country import GeotargetCountry
from .geotarget_latlong import GeotargetLatlong
from .latency import Latency
from .netfence_asn import NetfenceAsn
from .netfence_prefix import NetfencePrefix
from .priority import Priority
from .select_first_n import SelectFirstN
from .shed_load import ShedLoad
from .shuffle import Shuffle
from .sticky import Sticky
from .up import Up
from .weighted_shuffle import WeightedShuffle

_ALL: tuple[type[Filter], ...] = (
    Up, ShedLoad, GeotargetCountry, GeotargetLatlong, SelectFirstN, Shuffle, WeightedShuffle,
    Priority, Sticky, GeofenceCountry, GeofenceRegional, NetfencePrefix, NetfenceAsn, Latency,
)

#: filter name → class
REGISTRY: Mapping[str, type[Filter]] = MappingProxyType({c.name: c for c in _ALL})

__all__ = ["REGISTRY", "Answer", "BuildContext", "Context", "Filter", "Option"]
