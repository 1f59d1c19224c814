"""``geofence_country``: keep only answers whose fence includes the client's country or state.

An answer's fence is its ``country`` metadata (ISO 3166-1 codes), ``us_state`` (US state codes,
``CA`` or ``US-CA``) and ``ca_province`` (Canadian province codes, ``BC`` or ``CA-BC``), as
NS1 has them (the region's own location ``country:`` is not a fence). The most granular list
that speaks of the client's country decides: a US client matches an answer with ``us_state``
only if its state is listed (``country: [US]`` is then not consulted), a Canadian client
likewise with ``ca_province``; otherwise the client's country must be in ``country``. An
answer with a fence that does not match is removed (so an answer fenced to ``us_state: [CA]``
is removed for a client in Germany). Answers without any of the three are kept, unless
``remove_no_location`` is true and some answer matched. A client whose country is unknown
fences nothing; a US or Canadian client whose state is unknown matches only ``country``.

Options:

* ``remove_no_location`` (bool, default false)

Metadata read: ``country``, ``us_state``, ``ca_province`` (a code or a list of codes).

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
from filterdns.routing.georegions import state_code

_STATE_KEYS = {"US": "us_state", "CA": "ca_province"}


def fence_match(a: Answer, country: str, subdivision: str | None) -> bool | None:
    """True: the answer's fence includes the client; False: it excludes it; None: no fence."""
    codes = as_codes(a.meta.get("country"))
    states = {cc: as_codes(a.meta.get(k)) for cc, k in _STATE_KEYS.items()}
    if codes is None and not any(states.values()):
        return None
    mine = states.get(country)
    if mine:
        if subdivision and subdivision in {state_code(c, country) for c in mine}:
            return True
        if subdivision:
            return False
    return codes is not None and country in codes


class GeofenceCountry(Filter):
    name = "geofence_country"
    OPTIONS = (Option("remove_no_location", "bool", False,
                      doc="remove answers without a fence when another answer matched"),)
    reads_client = True

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        loc = ctx.location
        cc, sub = loc.country, loc.subdivision

        def test(a: Answer):
            return fence_match(a, cc, sub)

        shown = f"{cc}-{sub}" if cc in _STATE_KEYS and sub else cc or ""
        return fence(answers, ctx, cc, test, self.options["remove_no_location"], "country", shown)
