#!/usr/bin/env python3
"""Per-query cost of the query path in-process (no sockets): parse, decide, render, metrics.

    PYTHONPATH=. python3 bench/microbench.py [--n 30000]

Prints microseconds per query for typical queries against the bundled config (zones/, chains/).
The socket-level comparison with gdnsd and PowerDNS is bench/run.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dns.edns
import dns.message

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30000, help="queries per case (default %(default)s)")
    args = ap.parse_args()
    state = build_state(ROOT / "zones", ROOT / "chains")
    r = Responder(StateHolder(state), Inventory(), Metrics())
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


if __name__ == "__main__":
    main()
