"""Small value types shared by the decision core, the filter engine and the transports."""

from __future__ import annotations

from typing import NamedTuple


class Client(NamedTuple):
    """Where a query comes from, as far as routing is concerned.

    ``address`` is the ECS address when the query carried ECS with a source prefix > 0, else
    the packet's source address. ``prefix`` is the ECS source prefix length, or 32/128 for a
    packet source. IPv4-mapped IPv6 sources are given as IPv4.

    A tuple of plain values: the cyclic garbage collector stops tracking it at its first
    collection, so the one kept per client subnet (``wire.ECS.client``) costs no collection
    after that (serve/gctune.py).
    """

    address: str
    family: int  # 4 or 6
    prefix: int
    ecs: bool = False


#: rcodes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode (OPT)

#: rr types the hot path names
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, DNAME, OPT, DS, IXFR, AXFR, ANY = (
    1, 2, 5, 6, 12, 15, 16, 28, 33, 39, 41, 43, 251, 252, 255)
