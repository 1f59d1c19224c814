"""``geofence_country``: keep only answers whose country fence includes the client's country.

An answer's fence is its ``country`` metadata: an ISO 3166-1 code or a list of them (the
region's own location ``country:`` is not a fence). Answers whose list does not contain the
client's country are removed. Answers without the metadata are kept, unless
``remove_no_location`` is true and some answer matched. A client whose country is unknown
fences nothing.

Options:

* ``remove_no_location`` (bool, default false)

Metadata read: ``country`` (code or list of codes).

Reads the client: yes.

Metrics: ``filterdns_filter_removed_total{filter="geofence_country"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); no metric of its own.

Example::

    chains:
      eu-only:
        - geofence_country: {remove_no_location: true}
        - geotarget_country
        - select_first_n
"""

from __future__ import annotations

from filterdns.routing.filters._fence import fence
from filterdns.routing.filters.base import Answer, Context, Filter, Option, as_codes


class GeofenceCountry(Filter):
    name = "geofence_country"
    OPTIONS = (Option("remove_no_location", "bool", False,
                      doc="remove answers without a fence when another answer matched"),)
    reads_client = True

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        cc = ctx.location.country

        def test(a: Answer):
            codes = as_codes(a.meta.get("country"))
            return None if codes is None else cc in codes

        return fence(answers, ctx, cc, test, self.options["remove_no_location"], "country", cc or "")
