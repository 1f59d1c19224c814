"""``geofence_regional``: keep only answers whose georegion fence includes the client's.

Georegions (NS1's): ``US-EAST``, ``US-CENTRAL``, ``US-WEST``, ``EUROPE``, ``ASIAPAC``,
``AFRICA``, ``SOUTH-AMERICA``. The client's georegion comes from its continent; North America
is split by longitude (east of -90: US-EAST, -90..-105: US-CENTRAL, west: US-WEST; a
country-only database places every US client at the US centroid, i.e. US-CENTRAL).
An answer's fence is its ``georegion`` metadata (one value or a list). Answers without it are
kept unless ``remove_no_georegion`` is true and some answer matched; a client whose
georegion is unknown fences nothing.

Options:

* ``remove_no_georegion`` (bool, default false)

Metadata read: ``georegion``.

Reads the client: yes.

Metrics: ``filterdns_filter_removed_total{filter="geofence_regional"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); no metric of its own.

Example::

    chains:
      regional:
        - up
        - geofence_regional
        - geotarget_country
        - select_first_n
"""

from __future__ import annotations

from filterdns.routing.geo import Location
from filterdns.routing.filters._fence import fence
from filterdns.routing.filters.base import Answer, Context, Filter, Option, as_codes

GEOREGIONS = ("US-EAST", "US-CENTRAL", "US-WEST", "EUROPE", "ASIAPAC", "AFRICA", "SOUTH-AMERICA")

_BY_CONTINENT = {"EU": "EUROPE", "AS": "ASIAPAC", "OC": "ASIAPAC", "AF": "AFRICA", "SA": "SOUTH-AMERICA"}


def georegion(loc: Location) -> str | None:
    """The NS1 georegion of a location, or None when unknown."""
    if loc.continent == "NA":
        if loc.lon is None:
            return None
        return "US-EAST" if loc.lon > -90 else "US-CENTRAL" if loc.lon > -105 else "US-WEST"
    return _BY_CONTINENT.get(loc.continent or "")


class GeofenceRegional(Filter):
    name = "geofence_regional"
    OPTIONS = (Option("remove_no_georegion", "bool", False,
                      doc="remove answers without a georegion when another answer matched"),)
    reads_client = True

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        gr = georegion(ctx.location)

        def test(a: Answer):
            codes = as_codes(a.meta.get("georegion"))
            return None if codes is None else gr in codes

        return fence(answers, ctx, gr, test, self.options["remove_no_georegion"], "georegion", gr or "")
