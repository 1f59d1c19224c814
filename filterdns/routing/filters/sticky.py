"""``sticky``: a deterministic, per-client-subnet pseudo-random order.

Sorts answers by rendezvous (highest-random-weight) hashing of the client's subnet and each
answer's name: the same subnet always gets the same order, different subnets spread evenly,
and removing one answer moves only the clients that had it first. The client's address is
masked to ``prefix_v4`` / ``prefix_v6`` bits (or its ECS source prefix, if shorter). With
``weighted: true`` the share of clients placing an answer first is proportional to its
``weight`` (NS1's weighted_sticky).

Options:

* ``prefix_v4`` (integer 0..32, default 24)
* ``prefix_v6`` (integer 0..128, default 56)
* ``weighted`` (bool, default false)
* ``default_weight`` (number >= 0, default 1)

Metadata read: ``weight`` (only when ``weighted``).

Reads the client: yes, its own prefix: the ECS scope is raised to min(source prefix, mask).

Metrics: ``filterdns_filter_removed_total{filter="sticky"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); it never removes, so it stays 0.

Example::

    chains:
      sticky-pair:
        - up
        - sticky: {prefix_v4: 24, prefix_v6: 48}
        - select_first_n
"""

from __future__ import annotations

import hashlib
import ipaddress
import math

from filterdns.model import Client
from filterdns.routing.filters.base import Answer, Context, Filter, Option, as_float


class Sticky(Filter):
    name = "sticky"
    OPTIONS = (
        Option("prefix_v4", "int", 24, min=0, max=32, doc="IPv4 bits that identify a client"),
        Option("prefix_v6", "int", 56, min=0, max=128, doc="IPv6 bits that identify a client"),
        Option("weighted", "bool", False, doc="spread clients in proportion to weight"),
        Option("default_weight", "float", 1.0, min=0, doc="weight of answers without one"),
    )
    reads_client = True
    needs_prefix = True

    def __init__(self, options, build):
        super().__init__(options, build)
        o = self.options
        self.p4, self.p6 = o["prefix_v4"], o["prefix_v6"]
        self.weighted, self.default = o["weighted"], o["default_weight"]

    def prefix_needed(self, client: Client) -> int:
        return min(client.prefix, self.p4 if client.family == 4 else self.p6)

    def subnet_key(self, client: Client) -> bytes:
        bits = self.prefix_needed(client)
        try:
            net = ipaddress.ip_network(f"{client.address}/{bits}", strict=False)
        except ValueError:
            return b""
        return net.network_address.packed + bytes([bits])

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        if len(answers) < 2:
            return answers
        sk = self.subnet_key(ctx.client)
        scored = []
        for a in answers:
            h = int.from_bytes(hashlib.blake2b(sk + a.name.encode(), digest_size=8).digest(), "big")
            if self.weighted:
                w = as_float(a.meta.get("weight"))
                w = self.default if w is None or w < 0 else w
                u = (h + 1) / (2**64 + 1)  # in (0, 1)
                score = -w / math.log(u) if w > 0 else -math.inf
            else:
                score = h
            scored.append((score, a.name, a))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return tuple(t[2] for t in scored)
