#!/usr/bin/env python3
"""How many queries a real ECS resolver sends upstream for a many-subnet client mix.

    PYTHONPATH=. python3 bench/ecs_unbound.py --geoip CITY.mmdb [--code DIR] [--subnets 3000] [--rounds 3]

Starts filterdns (``--code DIR``: the checkout to run, default this one; so the same mix can be
replayed against an older commit) on the bundled zones and chains (record TTLs raised to one
hour, so that nothing expires during the run) and an Unbound in front of it with ECS
(``module-config: "subnetcache validator iterator"``, ``send-client-subnet`` to filterdns), on
free loopback ports. Then sends ``--rounds`` passes over ``--subnets`` random client /24s
(fixed seed, IPv4, each placed somewhere by the database) as ECS queries for
``wss-primary.example.com`` A to Unbound, and prints the queries Unbound sent upstream (from
filterdns's ``filterdns_queries_total``), the resolver's cache hit ratio and the mean ECS scope
of the answers. Unbound keeps at most ``max-ecs-tree-size-ipv4`` ECS answers per name (100 by
default, ``--tree-size``): fewer, wider scopes fit more clients in it.
Unbound: /usr/sbin/unbound (Debian package ``unbound``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import maxminddb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from filterdns.serve.address import free_port  # noqa: E402 - after the checkout is on the path
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"




def wait_answer(port: int, name: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query(name, "SOA"), "127.0.0.1", port=port, timeout=0.3)
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def upstream_queries(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^filterdns_queries_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def mix(geoip: str, n: int, seed: int = 1, clusters: int = 0) -> list[str]:
    """``n`` distinct client /24s the database places: uniform over IPv4, or inside
    ``clusters`` random /14s (clients come from a few access networks, as a resolver sees)."""
    rng = random.Random(seed)
    out, seen = [], set()
    bases = [rng.getrandbits(14) << 18 for _ in range(clusters)]
    with maxminddb.open_database(geoip) as r:
        while len(out) < n:
            if bases:
                a = ipaddress.IPv4Address(rng.choice(bases) | (rng.getrandbits(10) << 8))
            else:
                a = ipaddress.IPv4Address(rng.getrandbits(24) << 8)
            if a in seen or not a.is_global:
                continue
            seen.add(a)
            if r.get(str(a)):
                out.append(str(a))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--geoip", required=True)
    ap.add_argument("--code", default=str(ROOT), help="filterdns checkout to run (default: this one)")
    ap.add_argument("--subnets", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clusters", type=int, default=0,
                    help="draw the client /24s inside this many random /14s (default 0: all of IPv4)")
    ap.add_argument("--tree-size", type=int, default=100,
                    help="Unbound max-ecs-tree-size-ipv4: ECS answers kept per name (default: Unbound's, 100)")
    args = ap.parse_args()
    args.geoip = str(Path(args.geoip).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="ecs-unbound-"))
    procs = []
    try:
        shutil.copytree(ROOT / "zones", tmp / "zones")
        shutil.copytree(ROOT / "chains", tmp / "chains")
        for f in (tmp / "chains").glob("*.yaml"):
            f.write_text(re.sub(r"(\n\s+ttl:) \d+", r"\1 3600", f.read_text()))
        dport, mport, uport = free_port(), free_port(), free_port()
        env = dict(os.environ, PYTHONPATH=args.code)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "filterdns", "serve", "--listen", f"127.0.0.1:{dport}", "--zones",
             str(tmp / "zones"), "--chains", str(tmp / "chains"), "--geoip", args.geoip, "--metrics",
             f"127.0.0.1:{mport}", "--control", "off", "--workers", "1", "--no-health", "--no-watch",
             "--state-dir", str(tmp / "state")], env=env, cwd=tmp,
            stdout=open(tmp / "filterdns.log", "wb"), stderr=subprocess.STDOUT))
        (tmp / "unbound.conf").write_text(f"""
server:
  interface: 127.0.0.1
  port: {uport}
  do-daemonize: no
  use-syslog: no
  logfile: "{tmp}/unbound.log"
  username: ""
  chroot: ""
  directory: "{tmp}"
  pidfile: "{tmp}/unbound.pid"
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "subnetcache validator iterator"
  send-client-subnet: 127.0.0.1
  max-client-subnet-ipv4: 24
  max-ecs-tree-size-ipv4: {args.tree_size}
  num-threads: 1
  msg-cache-size: 64m
  rrset-cache-size: 64m
  qname-minimisation: no
  auto-trust-anchor-file: ""
stub-zone:
  name: "example.com"
  stub-addr: 127.0.0.1@{dport}
""")
        procs.append(subprocess.Popen([UNBOUND, "-d", "-c", str(tmp / "unbound.conf")],
                                      stdout=open(tmp / "unbound.out", "wb"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        try:
            wait_answer(dport, "example.com.", deadline)
            wait_answer(uport, "example.com.", deadline)
        except RuntimeError:
            for log in ("filterdns.log", "unbound.out", "unbound.log"):
                if (tmp / log).exists():
                    print(f"--- {log}\n{(tmp / log).read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        clients = mix(args.geoip, args.subnets, clusters=args.clusters)
        time.sleep(2)  # worker counters reach /metrics within a second
        before = upstream_queries(mport)
        sent, scopes, per_round = 0, [], []
        rng = random.Random(2)
        t0 = time.monotonic()
        for _ in range(args.rounds):
            order = clients[:]
            rng.shuffle(order)
            for a in order:
                q = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0,
                                           options=[dns.edns.ECSOption(a, 24)])
                r = dns.query.udp(q, "127.0.0.1", port=uport, timeout=5)
                sent += 1
                for o in r.options:
                    if isinstance(o, dns.edns.ECSOption):
                        scopes.append(o.scopelen)
            time.sleep(2)
            per_round.append(upstream_queries(mport) - before - sum(per_round))
        elapsed = time.monotonic() - t0
        up = sum(per_round)
        print(f"code: {args.code}; database: {args.geoip}; Unbound max-ecs-tree-size-ipv4 {args.tree_size}; "
              f"clusters {args.clusters or 'none'}")
        print(f"{sent:,} ECS queries from {len(clients):,} client /24s in {args.rounds} rounds ({elapsed:.0f} s): "
              f"Unbound sent {up:,.0f} upstream ({up / sent:.1%}), cache hit ratio {1 - up / sent:.1%}; "
              f"mean scope in answers /{statistics.mean(scopes):.1f} (median /{statistics.median(scopes):.0f}); "
              f"upstream per round: {', '.join(f'{x:,.0f}' for x in per_round)}")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
