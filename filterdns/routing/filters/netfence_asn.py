"""``netfence_asn``: keep only answers whose ``asn`` list contains the client's AS number.

The client's ASN comes from the geo database when it carries ``autonomous_system_number``
(an ASN or City+ASN database passed with ``--geoip``); with the bundled country database it is
unknown and nothing is fenced. Answers whose ``asn`` metadata (a number or a list) does not
contain the client's ASN are removed; answers without it are kept unless ``remove_no_asn`` is
true and some answer matched.

Options:

* ``remove_no_asn`` (bool, default false)

Metadata read: ``asn``.

Reads the client: yes (ECS scope = the database's matched prefix).

Metrics: ``filterdns_filter_removed_total{filter="netfence_asn"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); no metric of its own.

Example::

    chains:
      by-network:
        - netfence_asn
        - geotarget_country
        - select_first_n
"""

from __future__ import annotations

from filterdns.routing.filters._fence import fence
from filterdns.routing.filters.base import Answer, Context, Filter, Option


def _asns(v) -> frozenset[int] | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return frozenset({v})
    if isinstance(v, (list, tuple)):
        return frozenset(x for x in v if isinstance(x, int) and not isinstance(x, bool))
    return None


class NetfenceAsn(Filter):
    name = "netfence_asn"
    OPTIONS = (Option("remove_no_asn", "bool", False,
                      doc="remove answers without asn when another answer matched"),)
    reads_client = True

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        asn = ctx.location.asn

        def test(a: Answer):
            s = _asns(a.meta.get("asn"))
            return None if s is None else asn in s

        return fence(answers, ctx, asn, test, self.options["remove_no_asn"], "ASN", f"AS{asn}")
