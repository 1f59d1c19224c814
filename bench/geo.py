#!/usr/bin/env python3
"""Geo database figures: size, open time, RSS, lookup cost, and the ECS scope over a
many-subnet client mix, before (the matched network) and after (the widest uniform prefix).

    PYTHONPATH=. python3 bench/geo.py [--geoip PATH] [--subnets 20000] [--n 200000]

* open: wall time of ``GeoDB.open`` (maxminddb MODE_AUTO: the C extension mmaps the file)
  and the process's RSS before and after opening and after the lookups (VmRSS, /proc);
* lookup: µs per uncached ``GeoDB.lookup`` of random addresses and per cached ``locate``;
* scope: over ``--subnets`` random client /24s (IPv4, fixed seed) that the database places
  somewhere, the mean and median ECS scope of ``wss-primary`` (geotarget_country) and ``api``
  (latency) on the bundled chains, with the matched network (before) and widened (after),
  the number of distinct scope blocks (what a resolver caches) and the first/next query cost
  of the widening;
* table: how many distinct decisions the mix has, and the cost of the chain's path per query
  once every cache is warm (the network -> decision table the widening builds makes the common
  query one dict lookup per cache level).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterdns.config.build import build_state  # noqa: E402
from filterdns.model import A, Client  # noqa: E402
from filterdns.routing.geo import DEFAULT_DB, GeoDB  # noqa: E402
from filterdns.routing.inventory import Status  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def subnets(geo: GeoDB, n: int, seed: int = 1) -> list[Client]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        a = rng.getrandbits(24) << 8
        if a in seen:
            continue
        seen.add(a)
        addr = str(ipaddress.IPv4Address(a))
        if ipaddress.IPv4Address(a).is_global and geo.lookup(addr).country:
            out.append(Client(addr, 4, 24, True))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--geoip", default=None, help="database (default: the bundled one)")
    ap.add_argument("--subnets", type=int, default=20000)
    ap.add_argument("--n", type=int, default=200000, help="lookups to time")
    args = ap.parse_args()
    path = args.geoip or str(DEFAULT_DB)
    size = Path(path).stat().st_size
    r0 = rss_mb()
    t = time.perf_counter()
    geo = GeoDB.open(path)
    t_open = time.perf_counter() - t
    r1 = rss_mb()
    print(f"database: {path} ({size / 1e6:.1f} MB), {geo._reader.metadata().database_type}")
    print(f"open: {t_open * 1000:.2f} ms; RSS {r0:.1f} MB before, {r1:.1f} MB after opening")

    rng = random.Random(2)
    addrs = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(args.n)]
    t = time.perf_counter()
    for a in addrs:
        geo.lookup(a)
    lk = (time.perf_counter() - t) / len(addrs) * 1e6
    c = Client("63.245.208.0", 4, 24, True)
    geo.locate(c)
    t = time.perf_counter()
    for _ in range(args.n):
        geo.locate(c)
    cached = (time.perf_counter() - t) / args.n * 1e6
    print(f"lookup: {lk:.2f} µs uncached (GeoDB.lookup, random IPv4), {cached:.3f} µs cached (locate)")
    print(f"RSS after {args.n:,} lookups: {rss_mb():.1f} MB")

    state = build_state(str(ROOT / "zones"), str(ROOT / "chains"), path)
    mix = subnets(state.geo, args.subnets)
    status = Status()
    for name in ("wss-primary.example.com.", "api.example.com."):
        rec = state.records[name]
        before = [min(state.geo.locate(cl).prefix_len, cl.prefix) for cl in mix]
        t = time.perf_counter()
        rng = random.Random(1)
        res = [rec.resolve(A, cl, state.geo, status, rng) for cl in mix]
        first = (time.perf_counter() - t) / len(mix) * 1e6
        t = time.perf_counter()
        for cl in mix:
            rec.resolve(A, cl, state.geo, status, rng)
        again = (time.perf_counter() - t) / len(mix) * 1e6
        after = [r.scope for r in res]
        blocks_b = {ipaddress.ip_network(f"{cl.address}/{s}", strict=False) for cl, s in zip(mix, before, strict=True)}
        blocks_a = {ipaddress.ip_network(f"{cl.address}/{s}", strict=False) for cl, s in zip(mix, after, strict=True)}
        decisions = {r.regions for r in res}
        print(f"{name} over {len(mix):,} client /24s: mean scope before /{statistics.mean(before):.1f} "
              f"(median /{statistics.median(before):.0f}), after /{statistics.mean(after):.1f} "
              f"(median /{statistics.median(after):.0f}); distinct scope blocks {len(blocks_b):,} -> "
              f"{len(blocks_a):,}; {len(decisions)} distinct answers")
        print(f"  resolve: {first:.1f} µs per query the first time (chain + widening), "
              f"{again:.2f} µs once cached (network -> scope table, location -> decision memo)")
    print(f"RSS at the end: {rss_mb():.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
