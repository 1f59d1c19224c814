#!/usr/bin/env python3
"""Cost of DNSSEC online signing over real sockets: DO=1 against DO=0 on a many-subnet mix.

    python3 bench/dnssec.py [--subnets 20000] [--seconds 10] [--runs 2] [--workers 1] [--code DIR]

Starts ``filterdns serve`` (this checkout, or ``--code DIR``: another one, to compare commits; the bundled zones/ and chains/, a fresh ECDSA P-256
CSK for example.com in a temp directory, metrics on a free loopback port) and drives it with
dnsperf over UDP. The query mix: ``--subnets`` distinct client /24s (ECS, each placed in a
country by the bundled database), one query each, cycling through wss-primary and api A and
AAAA (routed) with every tenth query a static one (SOA, www A through a CNAME to a routed name,
an NXDOMAIN name). The DO=1 blob is the same queries with the DO bit.

Per DO value: one pass over the whole blob first (``dnsperf -n 1``: every subnet routed and,
with DO=1, signed once), then ``--runs`` timed runs of ``--seconds`` (DO=0 and DO=1 alternate),
each reporting dnsperf's queries per second and the server's CPU per answered query (utime +
stime of the server's process tree from /proc, divided by dnsperf's completed queries). With
DO=1 also: the signature cache hit rate and new signatures per query during the timed runs
(from ``filterdns_dnssec_signature_cache_{hits,misses}_total`` and
``filterdns_dnssec_signatures_total``). The median of the runs is printed, and the DO=1/DO=0
ratio of CPU per query (target: at most 2x). Last, the cost of one signature in-process.

On two cores the load generator shares the machine with the server: q/s is capped by dnsperf
as much as by the server; CPU per query is the figure to compare. Needs dnsperf (Debian's
``dnsperf``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _venv  # noqa: E402

_venv.ensure()

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dns.edns  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402

from filterdns.serve.address import free_port  # noqa: E402

ROUTED = [("wss-primary.example.com", "A"), ("api.example.com", "AAAA"),
          ("wss-primary.example.com", "AAAA"), ("api.example.com", "A")]
STATIC = [("example.com", "SOA"), ("www.example.com", "A"), ("nope.example.com", "A")]
CLK = os.sysconf("SC_CLK_TCK")


def mix(subnets: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for i, ip in enumerate(subnets):
        name, t = STATIC[(i // 10) % len(STATIC)] if i % 10 == 9 else ROUTED[i % len(ROUTED)]
        out.append((name, t, ip))
    return out


def blob(queries, do: bool, path: Path) -> None:
    with open(path, "wb") as f:
        for i, (name, t, ip) in enumerate(queries):
            q = dns.message.make_query(name, t, use_edns=0, want_dnssec=do, payload=1232,
                                       options=[dns.edns.ECSOption(ip, 24)])
            q.id = i & 0xFFFF
            w = q.to_wire()
            f.write(struct.pack("!H", len(w)) + w)


def tree_cpu(pid: int) -> float:
    """utime + stime (s) of ``pid`` and its descendants."""
    kids: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = f
            kids.setdefault(int(f[1]), []).append(int(d))
    total, todo, seen = 0.0, [pid], 0
    while todo and seen < 1024:
        p = todo.pop()
        seen += 1
        f = stats.get(p)
        if f:
            total += (int(f[11]) + int(f[12])) / CLK
        todo.extend(kids.get(p, ()))
    return total


def dnsperf(port: int, path: Path, seconds: int | None, out: Path) -> dict:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-c", "4", "-q", "100", "-t", "2", "-B", "-d", str(path)]
    cmd += ["-l", str(seconds)] if seconds else ["-n", "1"]
    with open(out, "w") as f:
        rc = subprocess.run(["timeout", str((seconds or 60) + 60), *cmd], stdout=f, stderr=subprocess.STDOUT).returncode
    text = out.read_text(errors="replace")
    res = {}
    for key, pat in (("completed", r"Queries completed:\s+(\d+)"), ("lost", r"Queries lost:\s+(\d+)"),
                     ("qps", r"Queries per second:\s+([0-9.]+)"), ("rcodes", r"Response codes:\s+(.*)")):
        m = re.search(pat, text)
        if m:
            res[key] = m.group(1) if key == "rcodes" else float(m.group(1))
    if rc != 0 or "qps" not in res:
        raise SystemExit(f"dnsperf failed (exit {rc}):\n{text[-2000:]}")
    return res


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for name in ("signatures_total", "signature_cache_hits_total", "signature_cache_misses_total"):
        out[name] = sum(float(m.group(1)) for m in
                        re.finditer(rf"^filterdns_dnssec_{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M))
    return out


def one_signature_us(keys: str) -> float:
    from filterdns.dns import dnssec

    (k,) = dnssec.zone_keys(keys, "example.com")
    s = dnssec.Signer(b"\x07example\x03com\x00", [k], 30)
    owner = b"\x0bwss-primary\x07example\x03com\x00"
    rds = [bytes([192, 0, 2, i]) for i in (111, 112, 113)]
    n = 300
    t0 = time.perf_counter()
    for i in range(n):
        s._sign_one(s.zsk[0][1], s.zsk[0][0], owner, 1, 20 + i, rds, time.time())
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:  # noqa: C901 - one linear run
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subnets", type=int, default=20000, help="distinct client /24s (default %(default)s)")
    ap.add_argument("--seconds", type=int, default=10, help="each timed dnsperf run, 1-60 (default %(default)s)")
    ap.add_argument("--runs", type=int, default=2, help="timed runs per DO value, 1-5 (default %(default)s)")
    ap.add_argument("--workers", type=int, default=1, help="`serve --workers` (default %(default)s)")
    ap.add_argument("--code", default=str(ROOT), metavar="DIR", help="checkout the server runs from (default: this one)")
    args = ap.parse_args()
    if not 1 <= args.seconds <= 60 or not 1 <= args.runs <= 5 or not 100 <= args.subnets <= 200000:
        ap.error("--seconds 1-60, --runs 1-5, --subnets 100-200000")
    if not shutil.which("dnsperf"):
        raise SystemExit("dnsperf not installed (Debian package dnsperf)")
    sys.path.insert(0, str(ROOT / "bench"))
    from microbench import many_subnets

    from filterdns.dns import dnssec

    with tempfile.TemporaryDirectory(prefix="filterdns-dnssec-bench-") as tmp:
        wd = Path(tmp)
        keys = str(wd / "keys")
        dnssec.keygen(keys, "example.com")
        queries = mix(many_subnets(args.subnets))
        blobs = {do: wd / f"do{int(do)}.blob" for do in (False, True)}
        for do, path in blobs.items():
            blob(queries, do, path)
        port, mport = free_port(), free_port()
        env = dict(os.environ, FILTERDNS_KEYS=keys, PYTHONPATH=str(Path(args.code).resolve()))
        log = open(wd / "server.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "filterdns", "serve", "--listen", f"127.0.0.1:{port}",
                                 "--zones", str(Path(args.code) / "zones"), "--chains", str(Path(args.code) / "chains"),
                                 "--state-dir", str(wd / "state"), "--metrics", f"127.0.0.1:{mport}",
                                 "--control", "off", "--no-watch", "--no-health", "--workers", str(args.workers)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    dns.query.udp(dns.message.make_query("example.com.", "SOA"), "127.0.0.1", port=port, timeout=0.3)
                    scrape(mport)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"server did not start:\n{(wd / 'server.log').read_text()}") from None
                    time.sleep(0.2)
            warm = {}
            for do in (False, True):  # warm-up: every subnet once
                m0 = scrape(mport)
                r = dnsperf(port, blobs[do], None, wd / f"warm{int(do)}.out")
                m1 = scrape(mport)
                warm[do] = ({k: m1[k] - m0[k] for k in m1}, r["completed"])
            rows: dict[bool, list[dict]] = {False: [], True: []}
            for i in range(args.runs):
                for do in (False, True):
                    m0, c0 = scrape(mport), tree_cpu(proc.pid)
                    r = dnsperf(port, blobs[do], args.seconds, wd / f"run{i}-{int(do)}.out")
                    c1, m1 = tree_cpu(proc.pid), scrape(mport)
                    r["cpu_us"] = (c1 - c0) / max(r["completed"], 1) * 1e6
                    d = {k: m1[k] - m0[k] for k in m1}
                    looked = d["signature_cache_hits_total"] + d["signature_cache_misses_total"]
                    r["hit_rate"] = d["signature_cache_hits_total"] / looked if looked else float("nan")
                    r["sigs_per_q"] = d["signatures_total"] / max(r["completed"], 1)
                    rows[do].append(r)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        load = os.getloadavg()[0]
        print(f"{len(queries)} queries over {args.subnets} distinct client /24s (ECS); 90% routed "
              f"(wss-primary/api A+AAAA), 10% static; {args.runs} x {args.seconds} s per DO value, medians; "
              f"serve --workers {args.workers}; load average {load:.1f} at the end")
        print(f"{'DO':>2s} {'q/s':>8s} {'CPU us/q':>9s} {'lost':>6s} {'sig cache hits':>15s} {'new sig/q':>10s}  rcodes")
        med = {}
        for do in (False, True):
            rs = rows[do]
            med[do] = {k: statistics.median(r[k] for r in rs) for k in ("qps", "cpu_us", "lost", "hit_rate", "sigs_per_q")}
            hm = f"{med[do]['hit_rate'] * 100:14.2f}%" if do else f"{'-':>15s}"
            sq = f"{med[do]['sigs_per_q']:10.4f}" if do else f"{'-':>10s}"
            print(f"{int(do):2d} {med[do]['qps']:8.0f} {med[do]['cpu_us']:9.1f} {med[do]['lost']:6.0f} {hm} {sq}  "
                  f"{rs[-1].get('rcodes', '')}")
        d, n = warm[True]
        looked = d["signature_cache_hits_total"] + d["signature_cache_misses_total"]
        print(f"first pass (every subnet new), DO=1: {d['signatures_total'] / max(n, 1):.4f} new signatures "
              f"per query, signature cache hits {d['signature_cache_hits_total'] / max(looked, 1) * 100:.2f}%")
        print(f"DO=1 / DO=0: CPU per query x{med[True]['cpu_us'] / med[False]['cpu_us']:.2f}, "
              f"q/s x{med[True]['qps'] / med[False]['qps']:.2f} (target: CPU <= 2x)")
        print(f"one ECDSA P-256 RRSIG (3 A records), in-process: {one_signature_us(keys):.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
