"""The many-subnet query mix: real resolver traffic carries hundreds of thousands of distinct
client subnets, so a benchmark whose per-subnet caches always hit says little.

``many_subnet_queries(policy, n)`` returns ``n`` dnsperf ``-B`` wire queries (plus the country
and subnet of each): every query with ECS carries its own client subnet, drawn without repeats
from inside the networks the bench kit's test ``.mmdb`` maps (``make_mmdb.py`` stores the
covering IPv4 /16 and IPv6 /32 of each ``policy.CLIENTS`` subnet): every IPv4 /24 of those
/16s (13 countries, 256 each) and the rest as IPv6 /56s of the /32s (US, GB, DE, JP). So every
server routes each query exactly as it routes the kit's own client of that network. A share of
the queries (``no_ecs``) carries no ECS (the source, 127.0.0.1, routes them: the default
region). Names and types (A, AAAA) are drawn uniformly. Fixed seed: the same mix every run.

``bundled_queries(n)`` does the same for the bundled config (zones/, chains/, the embedded
DB-IP country database): distinct /24s and /56s in several countries of that database.

Stdlib only (``bundled_queries`` reads the .mmdb with ``maxminddb``, a filterdns dependency).
"""

from __future__ import annotations

import ipaddress
import random
import struct

MIX_SEED = 11
QTYPE = {"A": 1, "AAAA": 28}


def qname_wire(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.rstrip(".").split(".")) + b"\0"


def ecs_query(name: str, qtype: int, subnet: ipaddress._BaseNetwork | None) -> bytes:
    """RD query with EDNS0 (UDP 1232); with ECS (code 8, scope 0) when ``subnet`` is given."""
    if subnet is None:
        opt = b""
    else:
        data = struct.pack("!HBB", 1 if subnet.version == 4 else 2, subnet.prefixlen, 0)
        data += subnet.network_address.packed[:(subnet.prefixlen + 7) // 8]
        opt = struct.pack("!HH", 8, len(data)) + data
    header = struct.pack("!6H", 0, 0x0100, 1, 0, 0, 1)
    opt_rr = b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(opt)) + opt
    return header + qname_wire(name) + struct.pack("!HH", qtype, 1) + opt_rr


def mapped_networks(policy) -> list[tuple[str, ipaddress._BaseNetwork]]:
    """(country, network) the kit's test .mmdb maps: the /16 or /32 around each client."""
    out = []
    for cc, subnet in policy.CLIENTS:
        net = ipaddress.ip_network(subnet)
        out.append((cc, net.supernet(new_prefix=16 if net.version == 4 else 32)))
    return out


def _v6_56(net: ipaddress.IPv6Network, rng: random.Random, seen: set) -> ipaddress.IPv6Network:
    base = int(net.network_address)
    for _ in range(1000):
        k = rng.getrandbits(24)  # a /32 holds 2^24 /56s
        if (base, k) not in seen:
            seen.add((base, k))
            return ipaddress.IPv6Network((base | (k << 72), 56))
    raise RuntimeError("no free /56 left")  # pragma: no cover - 2^24 per /32


def many_subnets(policy, n: int, seed: int = MIX_SEED) -> list[tuple[str, ipaddress._BaseNetwork]]:
    """``n`` distinct (country, client subnet): every IPv4 /24 of the mapped /16s (or ``n`` of
    them, when fewer are asked for), then IPv6 /56s spread evenly over the mapped /32s."""
    rng = random.Random(seed)
    nets = mapped_networks(policy)
    v4 = [(cc, sub) for cc, net in nets if net.version == 4 for sub in net.subnets(new_prefix=24)]
    v6 = [(cc, net) for cc, net in nets if net.version == 6]
    rng.shuffle(v4)
    out = v4[:n]
    seen: set = set()
    i = 0
    while len(out) < n and v6:
        cc, net = v6[i % len(v6)]
        out.append((cc, _v6_56(net, rng, seen)))
        i += 1
    rng.shuffle(out)
    return out


def many_subnet_queries(policy, n: int = 120_000, no_ecs: float = 0.05, seed: int = MIX_SEED,
                        names=None) -> list[tuple[bytes, str | None, str | None, str, str]]:
    """``n`` ECS queries, one per distinct subnet, and ``no_ecs * n`` more without ECS:
    (wire, country or None, subnet text or None, name, type)."""
    rng = random.Random(seed + 1)
    names = tuple(names or policy.NAMES)
    out = []
    for cc, sub in many_subnets(policy, n, seed):
        name, t = rng.choice(names), rng.choice(("A", "AAAA"))
        out.append((ecs_query(f"{name}.{policy.ZONE}", QTYPE[t], sub), cc, str(sub), name, t))
    for _ in range(int(n * no_ecs)):
        name, t = rng.choice(names), rng.choice(("A", "AAAA"))
        out.append((ecs_query(f"{name}.{policy.ZONE}", QTYPE[t], None), None, None, name, t))
    rng.shuffle(out)
    return out


def bundled_subnets(n: int, countries, db_path, seed: int = MIX_SEED) -> list[ipaddress._BaseNetwork]:
    """``n`` distinct client subnets (about 2/3 IPv4 /24s, 1/3 IPv6 /56s) that the database at
    ``db_path`` places in one of ``countries``."""
    import maxminddb

    rng = random.Random(seed)
    want = set(countries)
    out: list = []
    seen: set = set()
    with maxminddb.open_database(str(db_path)) as db:
        v6nets = _v6_networks(db, want, rng) if n // 3 else []
        n4 = n - (n // 3 if v6nets else 0)
        for _ in range(n4 * 200):
            if len(out) >= n4:
                break
            a = rng.getrandbits(24)
            if a in seen:
                continue
            seen.add(a)
            ip = ipaddress.IPv4Address(a << 8)
            if not ip.is_global:
                continue
            if _cc(db.get(str(ip))) in want:
                out.append(ipaddress.IPv4Network((a << 8, 24)))
        for _ in range(n * 50):
            if len(out) >= n or not v6nets:
                break
            net = rng.choice(v6nets)
            k = rng.getrandbits(56 - net.prefixlen)
            sub = ipaddress.IPv6Network((int(net.network_address) | (k << 72), 56))
            if sub not in seen:
                seen.add(sub)
                out.append(sub)
    rng.shuffle(out)
    return out


def _v6_networks(db, want: set, rng: random.Random, count: int = 300) -> list:
    """Up to ``count`` IPv6 networks (/48 or wider) of the wanted countries, found by probing
    random addresses of the RIRs' main blocks (reading the whole database takes far longer)."""
    blocks = [0x2400, 0x2600, 0x2800, 0x2A00, 0x2C00]
    found: dict = {}
    for _ in range(count * 400):
        if len(found) >= count:
            break
        a = (rng.choice(blocks) << 112) | rng.getrandbits(116)  # inside that /12
        ip = ipaddress.IPv6Address(a)
        rec, plen = db.get_with_prefix_len(str(ip))
        if plen <= 48 and _cc(rec) in want:
            found[ipaddress.IPv6Network((a, plen), strict=False)] = True
    return list(found)


def _cc(rec) -> str | None:
    if not rec:
        return None
    if "country_code" in rec:  # the embedded compact DB-IP format
        return rec["country_code"]
    return (rec.get("country") or {}).get("iso_code")


def write_blob(path, wires) -> None:
    """dnsperf -B input: each message preceded by its 2-octet length (RFC 1035 4.2.2)."""
    with open(path, "wb") as f:
        for w in wires:
            f.write(struct.pack("!H", len(w)) + w)
