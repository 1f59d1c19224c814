"""``geotarget_country``: sort answers by distance from the client's country.

Sorts answers so the closest regions to the client come first; never removes any. The client's
location comes from the ECS subnet when the query has one, else from the resolver's address.
Order: answers in the client's subdivision (when both sides have one) first, then answers in
the client's country, then the rest by great-circle distance from the client's coordinates
(the database's, else the country centroid) to the region's coordinates; ties are broken by
region name, so the order is deterministic. A client in a country with no region therefore
gets the nearest regions first. A client whose location is unknown gets the default region
(``default_region`` in ``chains/``) first, then the others by distance from it.

Options: none.

Metadata read: none (the region's configured ``country``, ``subdivision``, ``lat``/``lon``).

Reads the client: yes (ECS scope = the geo database's matched prefix).

Metrics: ``filterdns_filter_removed_total{filter="geotarget_country"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); it never removes, so it stays 0.

Example::

    chains:
      nearest:
        - up
        - geotarget_country
        - select_first_n: {n: 1}
"""

from __future__ import annotations

from filterdns.routing.filters.base import Answer, Context, Filter, KeyCache, distance_from


class GeotargetCountry(Filter):
    name = "geotarget_country"
    reads_client = True

    def __init__(self, options, build):
        super().__init__(options, build)
        self._regions = build.regions
        self._cache = KeyCache()

    def keys_for(self, ctx: Context) -> dict:
        loc = ctx.location
        ck = (loc.country, loc.subdivision, ctx.origin)
        keys = self._cache.get(ck)
        if keys is None:
            keys = {}
            for name, r in self._regions.items():
                tier = 2
                if loc.country is not None and r.country == loc.country:
                    tier = 0 if (loc.subdivision and r.subdivision == loc.subdivision) else 1
                keys[name] = (tier, distance_from(ctx.origin, r), name)
            self._cache.put(ck, keys)
        return keys

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        keys = self.keys_for(ctx)
        out = tuple(sorted(answers, key=lambda a: keys[a.name]))
        if ctx.trace:
            tiers = ("same subdivision", "same country", "")
            for a in out:
                t, d, _ = keys[a.name]
                ctx.note(a.name, f"{d:.0f} km" + (f", {tiers[t]}" if tiers[t] else ""))
        return out
