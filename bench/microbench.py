#!/usr/bin/env python3
"""Per-query cost of the query path in-process (no sockets): parse, decide, render, metrics.

    PYTHONPATH=. python3 bench/microbench.py [--n 30000]

Prints microseconds per query for typical queries against the bundled config (zones/, chains/),
each query repeated (every cache hits), then the many-subnet case: ``--subnets`` distinct
client /24s in ECS (drawn with a fixed seed from the embedded geo database, inside six
countries), each sent once ("first": every subnet new to the server) and then once more
("again"), on a freshly built state. Real resolver traffic looks like the second table.
The socket-level comparison with gdnsd and PowerDNS is bench/run.py.

``--bundled N`` times the seed's own chains the way ``bench/run.py`` sends them to the
bundled config: N distinct /24s and /56s of the bundled database (``bench/mix.py``), a feed
putting eu-west-2's wss between its ``shed_load`` watermarks, ``api`` (the deterministic
latency chain) against ``wss-primary`` + ``wss-backup`` (a draw, a shuffle), four passes each
(the first pays the ECS scope walks and the chain runs of new locations).
The collector runs as in the server (``serve/gctune.py``: off, a young collection and a
freeze every 600 queries here, about every 20 ms at the server's rate).

``--query-log PATH [--query-log-sample P]`` and ``--dnstap PATH`` time the same with the query
log or dnstap on (serve/tap.py), as ``filterdns serve`` would run it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _venv  # noqa: E402

_venv.ensure()  # plain `python3 bench/...` re-runs itself with the project's .venv when needed

import dns.edns  # noqa: E402
import dns.message  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterdns.config.build import build_state  # noqa: E402
from filterdns.routing.inventory import Inventory  # noqa: E402
from filterdns.ops.metrics import Metrics  # noqa: E402
from filterdns.dns.responder import Responder  # noqa: E402
from filterdns.config.state import StateHolder  # noqa: E402

GB = [dns.edns.ECSOption("81.2.69.0", 24)]
CASES = [
    ("wss-primary.example.com", "A", GB),
    ("wss-backup.example.com", "A", GB),
    ("api.example.com", "AAAA", GB),
    ("wss-primary.example.com", "A", None),
    ("example.com", "SOA", GB),
    ("example.com", "SOA", None),
    ("nope.example.com", "A", GB),
]


MANY_COUNTRIES = ("US", "GB", "DE", "JP", "BR", "AU")
MANY_CASES = [("wss-primary.example.com", "A"), ("api.example.com", "AAAA")]


def many_subnets(n: int, seed: int = 11) -> list[str]:
    """``n`` distinct IPv4 /24 network addresses whose geo location is one of MANY_COUNTRIES."""
    import maxminddb

    from filterdns.routing.geo import DEFAULT_DB

    reader = maxminddb.open_database(str(DEFAULT_DB))
    rng = random.Random(seed)
    seen: set[int] = set()
    out: list[str] = []
    while len(out) < n:
        a = rng.getrandbits(24)
        if a in seen:
            continue
        seen.add(a)
        ip = f"{a >> 16}.{(a >> 8) & 255}.{a & 255}.0"
        rec = reader.get(ip)
        if rec and rec.get("country_code") in MANY_COUNTRIES:
            out.append(ip)
    reader.close()
    return out


TAP: dict | None = None  # serve.tap options from --query-log / --dnstap


def _responder(state):
    from filterdns.serve import tap

    holder, m = StateHolder(state), Metrics()
    r = Responder(holder, Inventory(), m)
    r.tap = tap.build(holder, m, TAP)
    return r


def run_many(n: int, per_query: bool = False) -> None:
    subnets = many_subnets(n)
    print(f"\n{n} distinct client /24s (ECS) in {', '.join(MANY_COUNTRIES)}, each sent once, then again")
    print(f"{'name':28s} {'type':4s} {'first':>9s} {'again':>9s}  us/query")
    for name, t in MANY_CASES:
        wires = []
        for i, ip in enumerate(subnets):
            q = dns.message.make_query(name, t, use_edns=0, options=[dns.edns.ECSOption(ip, 24)])
            q.id = i & 0xFFFF
            wires.append(q.to_wire())
        state = build_state(ROOT / "zones", ROOT / "chains")
        r = _responder(state)
        src = ("127.0.0.1", 1)
        r.respond(wires[0], src, "udp", 0)
        figures = []
        each: list[float] = []
        for rnd in range(2):
            if per_query and rnd == 0:
                clock = time.thread_time  # CPU time: a preempted process does not count
                for w in wires:
                    t1 = clock()
                    r.respond(w, src, "udp", 0)
                    each.append(clock() - t1)
                figures.append(sum(each) / len(each) * 1e6)
                continue
            t0 = time.perf_counter()
            for w in wires:
                r.respond(w, src, "udp", 0)
            figures.append((time.perf_counter() - t0) / len(wires) * 1e6)
        print(f"{name:28s} {t:4s} {figures[0]:9.2f} {figures[1]:9.2f}")
        if each:
            each.sort()
            k = len(each)
            print(f"{'':33s} first, per query (CPU): p50 {each[k // 2] * 1e6:.1f} p99 {each[int(k * .99)] * 1e6:.1f} "
                  f"p99.9 {each[int(k * .999)] * 1e6:.1f} max {each[-1] * 1e6:.0f} us; over 1 ms: "
                  f"{sum(1 for x in each if x > 1e-3)}")


def serve_like_gc() -> None:
    """The collector as a worker runs it (serve/gctune.py), in a loop without an event loop."""
    import gc

    gc.collect()
    gc.freeze()
    gc.disable()


def run_bundled(n: int) -> None:
    import gc

    import mix  # bench/mix.py

    from filterdns.routing.geo import DEFAULT_DB

    subnets = mix.bundled_subnets(n, ("US", "CA", "BR", "GB", "IE", "DE", "FR", "IN", "SG", "JP", "AU"), DEFAULT_DB)
    print(f"\nbundled config, {n} distinct subnets (/24, /56), eu-west-2/wss between its watermarks; us/query per pass")
    for label, names in (("api (deterministic)", ("api",)), ("wss-primary + wss-backup", ("wss-primary", "wss-backup"))):
        rng = random.Random(13)
        wires = [mix.ecs_query(f"{rng.choice(names)}.example.com", mix.QTYPE[rng.choice(("A", "AAAA"))], sub)
                 for sub in subnets]
        state = build_state(ROOT / "zones", ROOT / "chains")
        inv = Inventory()
        inv.feed("eu-west-2", "wss", {"connections": 7000})
        holder, m = StateHolder(state), Metrics()
        m.track_zones(holder)
        r = Responder(holder, inv, m)
        src = ("127.0.0.1", 1)
        serve_like_gc()
        figures = []
        for _ in range(4):
            t0 = time.thread_time()
            for i, w in enumerate(wires):
                r.respond(w, src, "udp", 0)
                if i % 600 == 599:
                    gc.collect(0)
                    gc.freeze()
            figures.append((time.thread_time() - t0) / len(wires) * 1e6)
        gc.unfreeze()
        gc.enable()
        print(f"{label:28s} " + " ".join(f"{x:8.2f}" for x in figures))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30000, help="queries per case (default %(default)s)")
    ap.add_argument("--subnets", type=int, default=100_000,
                    help="distinct client /24s of the many-subnet case, 0 to skip (default %(default)s)")
    ap.add_argument("--bundled", type=int, default=0, metavar="N",
                    help="also time the seed's chains on N distinct subnets of the bundled database (e.g. 60000)")
    ap.add_argument("--query-log", metavar="PATH", help="time with the query log on, written to PATH")
    ap.add_argument("--query-log-sample", type=float, default=0.01, metavar="P")
    ap.add_argument("--dnstap", metavar="PATH", help="time with dnstap on, written to PATH")
    ap.add_argument("--per-query", action="store_true",
                    help="also time each first query of the many-subnet case alone: p50, p99, max, count over 1 ms")
    args = ap.parse_args()
    global TAP
    if args.query_log or args.dnstap:
        TAP = {"query_log": args.query_log, "sample": args.query_log_sample, "dnstap": args.dnstap,
               "listen": [("127.0.0.1", 53)]}
    state = build_state(ROOT / "zones", ROOT / "chains")
    r = _responder(state)
    print(f"{'name':28s} {'type':4s} {'ecs':4s} {'us/query':>9s}")
    for name, t, opts in CASES:
        w = dns.message.make_query(name, t, use_edns=0 if opts is not None else False,
                                   options=opts or []).to_wire()
        r.respond(w, ("127.0.0.1", 1), "udp", 0)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(args.n):
                r.respond(w, ("127.0.0.1", 1), "udp", 0)
            best = min(best, (time.perf_counter() - t0) / args.n * 1e6)
        print(f"{name:28s} {t:4s} {'ecs' if opts else '-':4s} {best:9.2f}")
    if args.subnets > 0:
        run_many(args.subnets, args.per_query)
    if args.bundled > 0:
        run_bundled(args.bundled)


if __name__ == "__main__":
    main()
