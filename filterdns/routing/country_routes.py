"""Where each country's clients are sent now, per dynamic record (the operator page's world map).

``country_routes(state, status, record)`` runs the record's chain once per country of the
country table (``filterdns/data/countries.csv``) for a client located as the country database
locates that country's clients: the country, its continent and its centroid, no subdivision
(``Location.key`` equal to a real lookup's, so the answer is the one such a client gets from
DNS). It calls ``DynamicRecord.route_at``, the steps ``resolve`` runs, with the region state
of ``status`` (drains, feeds, health, fail-open: ``filterdns.routing.region_state``). Nothing
here decides routing itself.

With a City database a country's clients are spread over its subdivisions and coordinates, so
a chain that reads them (``geotarget_regional`` for US states, ``geotarget_latlong``) can send
part of a country elsewhere than its centroid; the map shows the centroid's answer. Filters
that read the client's address (``sticky``, ``netfence_prefix``) see ``0.0.0.0/0``.

Each country's entry::

    {"name": "France", "regions": ["eu-west-2"], "random": false, "fallback": false}

``regions`` are the regions answered; for a chain that draws on the RNG for that client
(``shuffle``, weighted picks) ``random`` is true and ``regions`` is the set drawn from (the
regions left before the first random filter). No regions: the record answers NODATA there.
"""

from __future__ import annotations

import random
from typing import Any

from filterdns.routing.geo import COUNTRIES, Location
from filterdns.routing.inventory import Status


def country_location(code: str) -> Location:
    """Where the country database puts a client of country ``code`` (its centroid)."""
    c = COUNTRIES[code]
    return Location(c.code, None, c.continent, c.lat, c.lon, 0)


def compute(rec: Any, status: Status) -> dict[str, dict]:
    """Every country's route for the DynamicRecord ``rec`` under ``status`` (uncached)."""
    out: dict[str, dict] = {}
    for code in sorted(COUNTRIES):
        regions, pool, rand, fell_back = rec.route_at(country_location(code), status, random.Random(0))
        if fell_back:
            rand = False  # the fallback answers every region it names, no draw
        out[code] = {"name": COUNTRIES[code].name, "regions": list(pool if rand else regions),
                     "random": rand, "fallback": fell_back}
    return out


_cache: list = [None, None, None, None]  # record, status, state, result


def country_routes(state: Any, status: Status, record: str) -> dict[str, dict]:
    """``compute`` for the record named ``record`` of ``state``, cached for the last
    (state, status, record) (all immutable snapshots); KeyError for an unknown record."""
    rec = state.records[record]
    c = _cache
    if c[0] is rec and c[1] is status and c[2] is state:
        return c[3]
    result = compute(rec, status)
    c[0], c[1], c[2], c[3] = rec, status, state, result
    return result
