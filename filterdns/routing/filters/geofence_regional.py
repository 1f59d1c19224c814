"""``geofence_regional``: keep only answers whose georegion fence includes the client's.

Georegions (NS1's): ``US-EAST``, ``US-CENTRAL``, ``US-WEST``, ``EUROPE``, ``ASIAPAC``,
``AFRICA``, ``SOUTH-AMERICA``. The client's georegion comes from its country and subdivision
(US state, Canadian province), else its continent, North America elsewhere split by longitude:
``filterdns.routing.georegions`` has the tables. An answer's fence is its ``georegion`` metadata (one value or a list). Answers without it are
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

from filterdns.routing.filters._fence import fence
from filterdns.routing.filters.base import Answer, Context, Filter, Option, as_codes
from filterdns.routing.georegions import GEOREGIONS, georegion

__all__ = ["GEOREGIONS", "GeofenceRegional", "georegion"]


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
