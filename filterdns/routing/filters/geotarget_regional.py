"""``geotarget_regional``: sort answers by georegion, the client's own first (NS1 Geotarget Regional).

The client's georegion (``US-EAST``, ``US-CENTRAL``, ``US-WEST``, ``EUROPE``, ``ASIAPAC``,
``AFRICA``, ``SOUTH-AMERICA``) comes from its country and US state or Canadian province, else
its continent (North America elsewhere by longitude); ``filterdns.routing.georegions`` has the
tables. An answer's georegions are its ``georegion`` metadata (one value or a list), else the
georegion of the region's own location (``country``, ``subdivision``, ``lon`` in
``regions:``), so regions need no metadata to be sorted.

Order (never removes):

1. answers in the client's georegion;
2. then the others by the distance from the client's georegion to the answer's nearest
   georegion (between the representative points of ``GEOREGION_CENTRES``), so a client in a
   georegion without an answer gets the closest georegion's answers first, as NS1 does;
3. ties (several answers of one georegion) by great-circle distance from the client's
   coordinates to the region, then by region name.

A client whose georegion is unknown is measured from the default region (which comes first).

Options: none.

Metadata read: ``georegion``.

Reads the client: yes (ECS scope: the widest prefix over which the order is the same).

Metrics: ``filterdns_filter_removed_total{filter="geotarget_regional"}`` counts answers it
removes (counted by the core from ``Resolution.removed``); it never removes, so it stays 0.

Example::

    chains:
      by-georegion:
        - up
        - geotarget_regional
        - select_first_n: {n: 1}
"""

from __future__ import annotations

from filterdns.routing.filters.base import Answer, Context, Filter, KeyCache, as_codes, distance_from
from filterdns.routing.geo import great_circle_km
from filterdns.routing.georegions import GEOREGION_CENTRES, georegion, georegion_of


def answer_georegions(a: Answer) -> frozenset[str]:
    """An answer's georegions: its metadata, else its region's own location."""
    codes = as_codes(a.meta.get("georegion"))
    if codes:
        return codes
    r = a.region
    own = georegion_of(r.country, r.subdivision, r.continent, r.lon)
    return frozenset({own}) if own else frozenset()


_FAR = 1e9  # an answer without a georegion, or a client without a point: last


class GeotargetRegional(Filter):
    name = "geotarget_regional"
    reads_client = True

    def __init__(self, options, build):
        super().__init__(options, build)
        self._cache = KeyCache()

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        gr = georegion(ctx.location) if ctx.location.known else None
        point = GEOREGION_CENTRES.get(gr) if gr else ctx.origin
        keys = {}
        for a in answers:
            regions = answer_georegions(a)
            ck = (gr, point, ctx.origin, a.name, regions)
            k = self._cache.get(ck)
            if k is None:
                if gr is not None and gr in regions:
                    tier, gkm = 0, 0.0
                else:
                    tier = 1
                    gkm = min((great_circle_km(*point, *GEOREGION_CENTRES[g]) for g in regions
                               if g in GEOREGION_CENTRES and point is not None), default=_FAR)
                k = self._cache.put(ck, (tier, round(gkm), distance_from(ctx.origin, a.region), a.name,
                                         "/".join(sorted(regions)) or "no georegion"))
            keys[a.name] = k
        out = tuple(sorted(answers, key=lambda a: keys[a.name][:4]))
        if ctx.trace:
            for a in out:
                tier, gkm, km, _, regions = keys[a.name]
                where = f"same georegion {gr}" if tier == 0 else regions if gkm >= _FAR else (
                    f"{regions}, {gkm} km from {gr or 'the default region'}")
                ctx.note(a.name, f"{where}; {km:.0f} km")
        return out
