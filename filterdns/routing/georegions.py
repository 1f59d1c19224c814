"""NS1 georegions, US states and Canadian provinces: the one place that says which georegion a
location is in.

Georegions (NS1's ``georegion`` metadata values): ``US-EAST``, ``US-CENTRAL``, ``US-WEST``,
``EUROPE``, ``ASIAPAC``, ``AFRICA``, ``SOUTH-AMERICA``.

* A US client is placed by its state (``US_STATE_GEOREGION``: the Pacific and Mountain time-zone
  states and the Pacific territories are US-WEST, the Central time-zone states US-CENTRAL, the
  rest and the Caribbean territories US-EAST), a Canadian client by its province
  (``CA_PROVINCE_GEOREGION``: BC, AB, YT, NT west; SK, MB, NU central; the rest east).
* Any other North American client, or a US/Canadian one whose state is unknown, by its
  longitude: east of -90° US-EAST, -90° to -105° US-CENTRAL, west of -105° US-WEST. (A
  country-only database puts every US client at the US centroid, -98.6°: US-CENTRAL.)
* Everywhere else by continent: EU -> EUROPE, AS and OC -> ASIAPAC, AF -> AFRICA,
  SA -> SOUTH-AMERICA; Antarctica and unknown locations have none.

``GEOREGION_CENTRES`` gives each georegion a representative point, used by
``geotarget_regional`` to order georegions by distance.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from filterdns.routing.geo import Location

GEOREGIONS = ("US-EAST", "US-CENTRAL", "US-WEST", "EUROPE", "ASIAPAC", "AFRICA", "SOUTH-AMERICA")

_W, _C, _E = "US-WEST", "US-CENTRAL", "US-EAST"

#: ISO 3166-2:US suffix -> georegion (50 states, DC and the inhabited territories)
US_STATE_GEOREGION: Mapping[str, str] = MappingProxyType({
    **dict.fromkeys(("AK", "AZ", "CA", "CO", "HI", "ID", "MT", "NM", "NV", "OR", "UT", "WA", "WY",
                     "GU", "AS", "MP", "UM"), _W),
    **dict.fromkeys(("AL", "AR", "IA", "IL", "KS", "LA", "MN", "MO", "MS", "ND", "NE", "OK", "SD",
                     "TN", "TX", "WI"), _C),
    **dict.fromkeys(("CT", "DC", "DE", "FL", "GA", "IN", "KY", "MA", "MD", "ME", "MI", "NC", "NH",
                     "NJ", "NY", "OH", "PA", "RI", "SC", "VA", "VT", "WV", "PR", "VI"), _E),
})

#: ISO 3166-2:CA suffix -> georegion (10 provinces, 3 territories)
CA_PROVINCE_GEOREGION: Mapping[str, str] = MappingProxyType({
    **dict.fromkeys(("BC", "AB", "YT", "NT"), _W),
    **dict.fromkeys(("SK", "MB", "NU"), _C),
    **dict.fromkeys(("ON", "QC", "NB", "NS", "PE", "NL"), _E),
})

US_STATES = frozenset(US_STATE_GEOREGION)
CA_PROVINCES = frozenset(CA_PROVINCE_GEOREGION)

_BY_CONTINENT = {"EU": "EUROPE", "AS": "ASIAPAC", "OC": "ASIAPAC", "AF": "AFRICA", "SA": "SOUTH-AMERICA"}

#: a representative point (lat, lon) per georegion
GEOREGION_CENTRES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "US-EAST": (38.0, -79.0),
    "US-CENTRAL": (38.0, -94.0),
    "US-WEST": (40.0, -117.0),
    "EUROPE": (50.0, 10.0),
    "ASIAPAC": (15.0, 115.0),
    "AFRICA": (5.0, 20.0),
    "SOUTH-AMERICA": (-15.0, -60.0),
})


def georegion_of(country: str | None, subdivision: str | None, continent: str | None,
                 lon: float | None) -> str | None:
    """The georegion of a place (see the module docstring), or None when unknown."""
    if country == "US" and subdivision in US_STATE_GEOREGION:
        return US_STATE_GEOREGION[subdivision]
    if country == "CA" and subdivision in CA_PROVINCE_GEOREGION:
        return CA_PROVINCE_GEOREGION[subdivision]
    if continent == "NA":
        if lon is None:
            return None
        return _E if lon > -90 else _C if lon > -105 else _W
    return _BY_CONTINENT.get(continent or "")


def georegion(loc: Location) -> str | None:
    """The georegion of a client location."""
    return georegion_of(loc.country, loc.subdivision, loc.continent, loc.lon)


def state_code(value: str, country: str) -> str:
    """``us_state`` / ``ca_province`` values may be written ``CA`` or ``US-CA``: the suffix."""
    v = value.strip().upper()
    prefix = country + "-"
    return v[len(prefix):] if v.startswith(prefix) else v
