#!/usr/bin/env python3
"""Cost of DNSSEC online signing in-process (no sockets): DO=1 against DO=0 on the same server.

    PYTHONPATH=. python3 bench/dnssec.py [--n 5000] [--subnets 20000]

The bundled config (zones/, chains/) with a fresh ECDSA P-256 CSK for example.com (in a temp
directory). Prints microseconds per query for repeated queries (every cache hits) and for the
many-subnet mix (``--subnets`` distinct client /24s in ECS, each sent once, then again: the
first pass routes every subnet anew, the second is what a resolver population looks like),
with DO=0 and DO=1, the DO=1/DO=0 ratio, new signatures made per query in the second pass
(0 = every routed answer's signature came from the caches), and the cost of one
signature with the built-in signer and with dnspython's ``dns.dnssec.sign``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.message
import dns.name
import dns.rdata
import dns.rrset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from filterdns.config.build import build_state  # noqa: E402
from filterdns.config.state import StateHolder  # noqa: E402
from filterdns.dns import dnssec  # noqa: E402
from filterdns.dns.responder import Responder  # noqa: E402
from filterdns.ops.metrics import Metrics  # noqa: E402
from filterdns.routing.inventory import Inventory  # noqa: E402

GB = [dns.edns.ECSOption("81.2.69.0", 24)]
CASES = [
    ("wss-primary.example.com", "A", GB),
    ("api.example.com", "AAAA", GB),
    ("example.com", "SOA", None),
    ("www.example.com", "A", GB),
    ("nope.example.com", "A", None),
]


def responder():
    state = build_state(ROOT / "zones", ROOT / "chains")
    return Responder(StateHolder(state), Inventory(), Metrics(), rng=random.Random(3))


def per_query(r, wires, rounds=1) -> float:
    src = ("127.0.0.1", 1)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for w in wires:
            r.respond(w, src, "udp", 0)
        best = min(best, (time.perf_counter() - t0) / len(wires) * 1e6)
    return best


def wire(name, t, opts, do, qid=1):
    q = dns.message.make_query(name, t, use_edns=0, options=opts or [], want_dnssec=do)
    q.id = qid
    return q.to_wire()


def signer_of(r):
    return next(iter(r.signers.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="queries per repeated case (default %(default)s)")
    ap.add_argument("--subnets", type=int, default=20000, help="distinct client /24s (default %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as keys:
        dnssec.keygen(keys, "example.com")
        os.environ["FILTERDNS_KEYS"] = keys
        r = responder()
        print(f"{'name':26s} {'type':4s} {'ecs':3s} {'DO=0 us':>8s} {'DO=1 us':>8s} {'ratio':>6s}")
        for name, t, opts in CASES:
            cost = []
            for do in (False, True):
                w = wire(name, t, opts, do)
                r.respond(w, ("127.0.0.1", 1), "udp", 0)
                cost.append(per_query(r, [w] * args.n, 3))
            print(f"{name:26s} {t:4s} {'ecs' if opts else '-':3s} {cost[0]:8.2f} {cost[1]:8.2f} {cost[1] / cost[0]:6.2f}")

        if args.subnets > 0:
            from microbench import many_subnets

            subnets = many_subnets(args.subnets)
            print(f"\n{len(subnets)} distinct client /24s (ECS), each sent once, then again (fresh state per row)")
            print(f"{'name':26s} {'type':4s} {'DO':2s} {'first us':>9s} {'again us':>9s} {'new sig/q':>9s} {'q/s again':>10s}")
            for name, t in (("wss-primary.example.com", "A"), ("api.example.com", "AAAA")):
                again0 = None
                for do in (False, True):
                    ws = [wire(name, t, [dns.edns.ECSOption(ip, 24)], do, i & 0xFFFF) for i, ip in enumerate(subnets)]
                    rr = responder()
                    rr.respond(ws[0], ("127.0.0.1", 1), "udp", 0)
                    first = per_query(rr, ws)
                    if do:
                        s = signer_of(rr)
                        s.misses = 0
                    again = per_query(rr, ws)
                    hit = f"{s.misses / len(ws):9.3f}" if do else f"{'-':>9s}"
                    ratio = f"  x{again / again0:.2f} of DO=0" if do and again0 else ""
                    again0 = again0 or again
                    print(f"{name:26s} {t:4s} {int(do):2d} {first:9.2f} {again:9.2f} {hit} {1e6 / again:10.0f}{ratio}")

        s = signer_of(r)
        owner = b"\x0bwss-primary\x07example\x03com\x00"
        rds = [bytes([192, 0, 2, i]) for i in (111, 112, 113)]
        n = 300
        t0 = time.perf_counter()
        for i in range(n):
            s._sign_one(s.zsk[0][1], s.zsk[0][0], owner, 1, 20 + i, rds, time.time())
        own = (time.perf_counter() - t0) / n * 1e6
        rrset = dns.rrset.from_text("wss-primary.example.com.", 20, "IN", "A", "192.0.2.111", "192.0.2.112",
                                    "192.0.2.113")
        k = dnssec.zone_keys(keys, "example.com")[0]
        dnskey = dns.rdata.from_wire(1, 48, k.rdata, 0, len(k.rdata))
        priv = s.zsk[0][1]
        t0 = time.perf_counter()
        for _ in range(n):
            dns.dnssec.sign(rrset, priv, dns.name.from_text("example.com."), dnskey, lifetime=86400)
        theirs = (time.perf_counter() - t0) / n * 1e6
        print(f"\none ECDSA P-256 RRSIG: built-in signer {own:.1f} us, dns.dnssec.sign {theirs:.1f} us")


if __name__ == "__main__":
    main()
