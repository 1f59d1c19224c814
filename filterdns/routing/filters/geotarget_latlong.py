"""``geotarget_latlong``: sort answers by great-circle distance from the client.

Sorts answers by the great-circle distance between the client's coordinates (from the geo
database; a country-only database gives the country centroid) and each region's ``lat``/``lon``.
Never removes. Ties are broken by region name. An unknown client is measured from the default
region (which therefore comes first).

Options: none.

Metadata read: none (the region's configured coordinates).

Reads the client: yes.

Metrics: ``filterdns_filter_removed_total{filter="geotarget_latlong"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); it never removes, so it stays 0.

Example::

    chains:
      closest:
        - up
        - geotarget_latlong
        - select_first_n: {n: 2}
"""

from __future__ import annotations

from filterdns.routing.filters.base import Answer, Context, Filter, KeyCache, distance_from


class GeotargetLatlong(Filter):
    name = "geotarget_latlong"
    reads_client = True

    def __init__(self, options, build):
        super().__init__(options, build)
        self._regions = build.regions
        self._cache = KeyCache()

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        keys = self._cache.get(ctx.origin)
        if keys is None:
            keys = self._cache.put(ctx.origin, {n: (distance_from(ctx.origin, r), n)
                                                for n, r in self._regions.items()})
        out = tuple(sorted(answers, key=lambda a: keys[a.name]))
        if ctx.trace:
            for a in out:
                ctx.note(a.name, f"{keys[a.name][0]:.0f} km")
        return out
