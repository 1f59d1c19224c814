"""``geotarget_country``: sort answers by how close their location is to the client's.

Sorts answers so the closest regions to the client come first; never removes any. The client's
location comes from the ECS subnet when the query has one, else from the resolver's address.
As NS1's Geotarget Country, the most granular location both sides have decides; the order is:

1. **same subdivision**: the client's US state is in the answer's ``us_state`` metadata, or its
   Canadian province in ``ca_province``, or the region's own ``subdivision`` (in its country) is
   the client's;
2. **same country**: the region's ``country``, or one listed in the answer's ``country``
   metadata (``us_state`` implies US, ``ca_province`` CA), is the client's;
3. **the rest**;

and inside each tier by great-circle distance from the client's coordinates (a City database's,
rounded as ``filterdns geo build`` documents; a country-only database gives the country
centroid) to the region's ``lat``/``lon``; ties by region name, so the order is deterministic.
A client in a country with no region therefore gets the nearest regions first; a client in a
big country gets the nearest region of its country first. A client whose location is unknown
gets the default region (``default_region`` in ``chains/``) first, then the others by distance
from it. ``filterdns explain`` shows each answer's tier and distance.

Options: none.

Metadata read: ``us_state`` (US state codes, ``CA`` or ``US-CA``), ``ca_province`` (Canadian
province codes, ``BC`` or ``CA-BC``), ``country`` (codes); and the region's configured
``country``, ``subdivision``, ``lat``/``lon``.

Reads the client: yes (ECS scope: the widest prefix over which the order is the same).

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

from filterdns.routing.filters.base import Answer, Context, Filter, KeyCache, as_codes, distance_from
from filterdns.routing.georegions import state_code

_TIERS = ("same subdivision", "same country", "")


def answer_places(a: Answer) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """(countries, {(country, subdivision)}) an answer stands for: region and metadata."""
    r = a.region
    countries = set(as_codes(a.meta.get("country")) or ())
    subs = set()
    if r.country:
        countries.add(r.country)
        if r.subdivision:
            subs.add((r.country, r.subdivision.upper()))
    for key, cc in (("us_state", "US"), ("ca_province", "CA")):
        codes = as_codes(a.meta.get(key))
        if codes:
            countries.add(cc)
            subs.update((cc, state_code(c, cc)) for c in codes)
    return frozenset(countries), frozenset(subs)


class GeotargetCountry(Filter):
    name = "geotarget_country"
    reads_client = True

    def __init__(self, options, build):
        super().__init__(options, build)
        self._cache = KeyCache()

    def key_of(self, a: Answer, ctx: Context) -> tuple:
        """(tier, km, name) of one answer for this client."""
        loc = ctx.location
        countries, subs = answer_places(a)
        ck = (loc.country, loc.subdivision, ctx.origin, a.name, countries, subs)
        k = self._cache.get(ck)
        if k is None:
            tier = 2
            if loc.country is not None and loc.country in countries:
                tier = 0 if (loc.subdivision and (loc.country, loc.subdivision) in subs) else 1
            k = self._cache.put(ck, (tier, distance_from(ctx.origin, a.region), a.name))
        return k

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        keys = {a.name: self.key_of(a, ctx) for a in answers}
        out = tuple(sorted(answers, key=lambda a: keys[a.name]))
        if ctx.trace:
            for a in out:
                t, d, _ = keys[a.name]
                ctx.note(a.name, f"{d:.0f} km" + (f", {_TIERS[t]}" if _TIERS[t] else ""))
        return out
