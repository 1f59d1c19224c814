"""Clients and resolvers: who is where, with real subnets from the geo database.

Each client belongs to a country of the scenario's table and gets an IPv4 /24 that the geo
database places in that country. The networks are found by sampling: random IPv4 addresses
are looked up (``GeoDB.lookup``, the server's own reader) until every country of the table has
``population.samples`` hits or a budget runs out; a hit is an address and the database network
that holds it. Hits are proportional to address space, so a client's /24 is drawn from a
random hit's network: big networks (big ISPs) get more clients, as in real traffic.

Resolvers: the clients of one country are spread at random over
``ceil(clients / resolvers.clients_per_resolver)`` resolvers of that country. A resolver sends
the client's /24 (``resolvers.ecs_source``) as ECS and caches each answer for its TTL (clamped
to ``[min_ttl, max_ttl]``) within the answer's ECS scope: one cached answer serves every
client of that resolver inside the scope network (RFC 7871 section 7.3.1).
"""

from __future__ import annotations

import math
import random
import socket
import struct
from dataclasses import dataclass

from filterdns.errors import ConfigError, Problem

#: the most random addresses looked up to find every country's networks (about 3 s)
MAX_TRIES = 2_000_000


@dataclass(frozen=True, slots=True)
class Population:
    country: list[str]  # per client
    subnet: list[int]  # per client: its /24 as an int
    resolver: list[int]  # per client: resolver index
    resolver_country: list[str]
    samples: dict[str, int]  # country -> networks found

    def __len__(self) -> int:
        return len(self.country)


def sample_networks(geo, countries: list[str], want: int, rng: random.Random,
                    max_tries: int = MAX_TRIES) -> dict[str, list[tuple[int, int]]]:
    """Per country, up to ``want`` (address, matched prefix) hits of random IPv4 addresses."""
    hits: dict[str, list[tuple[int, int]]] = {cc: [] for cc in countries}
    missing = set(countries)
    tries = 0
    lookup = geo.lookup
    ntoa = socket.inet_ntoa
    pack = struct.Struct("!I").pack
    while missing and tries < max_tries:
        for _ in range(20000):
            a = rng.getrandbits(32)
            loc = lookup(ntoa(pack(a)))
            cc = loc.country
            if cc in missing:
                h = hits[cc]
                h.append((a, loc.prefix_len))
                if len(h) >= want:
                    missing.discard(cc)
        tries += 20000
    return hits


def subnet_in(hit: tuple[int, int], rng: random.Random) -> int:
    """A random /24 inside the hit's network (the hit's own /24 for networks smaller than that)."""
    a, plen = hit
    if plen >= 24:
        return a & 0xFFFFFF00
    host_bits = 32 - plen
    base = (a >> host_bits) << host_bits
    return base | (rng.getrandbits(host_bits - 8) << 8)


def build_population(sc, geo, rng: random.Random) -> Population:
    countries = sorted(sc.countries)
    hits = sample_networks(geo, countries, sc.population["samples"], rng)
    empty = [cc for cc in countries if not hits[cc]]
    if empty:
        raise ConfigError([Problem(sc.file, None, None,
                                   f"population.countries: no IPv4 network of {cc} found in the geo database "
                                   f"({geo.description}) after {MAX_TRIES} random addresses")
                           for cc in empty])
    country: list[str] = []
    subnet: list[int] = []
    resolver: list[int] = []
    rcountry: list[str] = []
    per = sc.resolvers["clients_per_resolver"]
    for cc in countries:
        n = sc.countries[cc]
        nres = max(1, math.ceil(n / per))
        first = len(rcountry)
        rcountry.extend([cc] * nres)
        h = hits[cc]
        for _ in range(n):
            country.append(cc)
            subnet.append(subnet_in(h[rng.randrange(len(h))], rng))
            resolver.append(first + rng.randrange(nres))
    # shuffle client order so that ids do not group by country (start times are random anyway)
    order = list(range(len(country)))
    rng.shuffle(order)
    return Population([country[i] for i in order], [subnet[i] for i in order], [resolver[i] for i in order],
                      rcountry, {cc: len(hits[cc]) for cc in countries})
