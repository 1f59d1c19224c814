"""``netfence_prefix``: keep only answers whose ``ip_prefixes`` contain the client address.

An answer's fence is its ``ip_prefixes`` metadata: a CIDR or a list of CIDRs (either family).
Answers whose prefixes do not contain the client's address (the ECS address, else the
resolver's) are removed; answers without the metadata are kept unless
``remove_no_ip_prefixes`` is true and some answer matched.

Options:

* ``remove_no_ip_prefixes`` (bool, default false)

Metadata read: ``ip_prefixes``.

Reads the client: yes, its own prefix (the ECS scope is raised to the source prefix).

Metrics: ``filterdns_filter_removed_total{filter="netfence_prefix"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); no metric of its own.

Example::

    chains:
      office-nets:
        - netfence_prefix: {remove_no_ip_prefixes: true}
        - geotarget_country
        - select_first_n
"""

from __future__ import annotations

import ipaddress

from filterdns.routing.filters._fence import fence
from filterdns.routing.filters.base import Answer, Context, Filter, Option, as_networks


class NetfencePrefix(Filter):
    name = "netfence_prefix"
    OPTIONS = (Option("remove_no_ip_prefixes", "bool", False,
                      doc="remove answers without ip_prefixes when another answer matched"),)
    reads_client = True
    needs_prefix = True

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        try:
            addr = ipaddress.ip_address(ctx.client.address)
        except ValueError:
            addr = None

        def test(a: Answer):
            raw = a.meta.get("ip_prefixes")
            if raw is None:
                return None
            return any(addr.version == n.version and addr in n for n in as_networks(raw))

        return fence(answers, ctx, addr, test, self.options["remove_no_ip_prefixes"], "address",
                     str(addr) if addr else "")
