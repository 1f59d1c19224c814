#!/usr/bin/env python3
"""filterdns beside gdnsd and PowerDNS (geoip backend): one bounded benchmark, one command.

Usage: python3 bench/run.py [--seconds 10] [--runs 3] [--workers N] [--soak MINUTES]
                            [--only filterdns,gdnsd,pdns] [--mmdb PATH] [--pin]
                            [--keep-workdir] [--save]

Phases (a status line is printed as each one starts):

 1. reference servers: the shared kit's ``references.sh start`` installs what is missing from
    Debian's packages (dnsperf, gdnsd, pdns-server, pdns-backend-geoip), writes the test
    country .mmdb and starts gdnsd on 127.0.0.1:5401 and PowerDNS on 127.0.0.1:5403;
 2. filterdns config for the same policy, generated from the kit's ``policy.py`` into a
    workdir (zones/example.com.zone, chains/bench.yaml), checked with ``filterdns check``;
 3. filterdns on 127.0.0.1:5400 with that config and the same .mmdb (metrics and control off);
 4. verification: GB and JP clients by dig on every server, then all 102 queries of the
    dnsperf blob (17 ECS subnets x 3 names x A/AAAA) sent to every server and compared with
    each other and with policy.py; any difference stops the run with a diff;
 5. dnsperf per server (``-l SECONDS -c 4 -q 100 -t 2 -B``, ``timeout`` as backstop): RUNS
    runs, median QPS and average latency, lost queries summed; one short ``-v`` run for the
    99th-percentile latency; peak memory (VmHWM, summed over the server's processes);
 6. filterdns at half its measured QPS (``-Q``): lost queries and p99 (target: 0 lost, < 2 ms);
 7. with ``--soak MINUTES``: filterdns under steady half-rate load, RSS of each process every
    10 s (target: < 150 MB per worker, flat);
 8. the table, the ratios filterdns/gdnsd and filterdns/PowerDNS, and the targets of issue 5;
    ``--save`` also writes them to bench/results/latest.json.

Only 127.0.0.1 is used. Every load is bounded by ``dnsperf -l`` and ``timeout``; every wait
loop by a count. The servers the run started are stopped by PID (``references.sh stop`` for the
references, which only stops the PIDs it recorded) on success, error, Ctrl-C and SIGTERM.

The shared kit is found at ``../shared/bench`` beside the repository, or at
``$FILTERDNS_SHARED_BENCH``. Exit status: 0 done (targets are reported, not enforced),
1 a server failed or answered wrongly, 2 usage or the kit is missing.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _venv  # noqa: E402

_venv.ensure()  # plain `python3 bench/...` re-runs itself with the project's .venv when needed

import yaml  # noqa: E402

import mix  # noqa: E402  (bench/mix.py: the many-subnet query mix)

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PORTS = {"filterdns": 5400, "gdnsd": 5401, "pdns": 5403, "bundled": 5404}  # moved by --port-base
LABELS = {"filterdns": "filterdns", "gdnsd": "gdnsd", "pdns": "PowerDNS"}
SERVERS = ("filterdns", "gdnsd", "pdns")
CHECK_SUBNETS = ("81.2.69.0/24", "133.242.0.0/24")  # a GB and a JP client, as references.sh checks
DNSPERF_FLAGS = ("-c", "4", "-q", "100", "-t", "2", "-B")
P99_SECONDS = 3          # the -v run that yields per-query latencies (dnsperf 2.10 has no histogram)
SOAK_SAMPLE_S = 10
TARGETS = {"vs_pdns": 3.0, "vs_gdnsd": 0.6, "half_p99_ms": 2.0, "rss_mb_per_worker": 150.0}
# issue 11, on the many-subnet mix: CPU per query near gdnsd's, q/s, the seed's chains, half rate
TARGETS11 = {"cpu_vs_gdnsd": 1.5, "many_vs_pdns": 3.0, "many_vs_gdnsd": 0.8, "chains_vs_deterministic": 1.3,
             "half_p99_ms": 1.0, "soak_growth_mb": 10.0}
VERIFY_SAMPLE = 1500     # many-subnet queries compared with gdnsd (and policy.py) before measuring
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A phase failed; the message says what and where to look."""


class Stop(BaseException):
    """SIGTERM/SIGHUP: unwind through the finally blocks like Ctrl-C."""


def status(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the shared kit ------------------------------------------------------------------------------

def find_kit() -> Path | None:
    env = os.environ.get("FILTERDNS_SHARED_BENCH")
    cand = Path(env) if env else REPO.parent / "shared" / "bench"
    need = ("references.sh", "policy.py", "make_queries.py")
    if cand.is_dir() and all((cand / f).is_file() for f in need):
        return cand.resolve()
    return None


def load_policy(kit: Path):
    sys.path.insert(0, str(kit))
    try:
        import policy  # noqa: PLC0415  (the kit's tables: the one source of the routing policy)
    finally:
        sys.path.remove(str(kit))
    return policy


# -- the filterdns config, generated from policy.py -----------------------------------------------

def region_countries(policy) -> dict[str, list[str]]:
    """region -> client countries routed to it, in policy.COUNTRY_REGION order."""
    out: dict[str, list[str]] = {r: [] for r in policy.REGIONS}
    for cc, region in policy.COUNTRY_REGION.items():
        out[region].append(cc)
    return out


def zone_text(policy) -> str:
    z = policy.ZONE
    return (f"; generated by bench/run.py from the bench kit's policy.py\n"
            f"$ORIGIN {z}.\n$TTL {policy.TTL}\n"
            f"@    IN SOA ns1.{z}. hostmaster.{z}. 1 7200 3600 1209600 300\n"
            f"     IN NS  ns1.{z}.\n"
            f"ns1  IN A   127.0.0.1\n")


def chains_doc(policy) -> dict:
    """regions, chain and records that answer exactly as policy.py says.

    Each name is its own service with one address per family in each region. A region's
    ``country`` metadata is the fence: the client countries policy.COUNTRY_REGION routes there.
    The chain keeps the region whose fence lists the client's country (geofence_country); a
    client in a country no fence lists is left with nothing, and the record's fallback
    (default_region) answers the default region; a client with no known country (127.0.0.1,
    no ECS) is fenced nowhere, and geotarget_country puts the default region first.
    select_first_n keeps one region.
    """
    fences = region_countries(policy)
    missing = [r for r, ccs in fences.items() if not ccs and r != policy.DEFAULT_REGION]
    if missing:  # a region no country routes to would need a location of its own
        raise BenchError(f"policy.py: no country routes to region(s) {', '.join(missing)}")
    regions = {}
    for region in policy.REGIONS:
        ccs = fences[region]
        services = {}
        for name in policy.NAMES:
            a4, a6 = policy.addresses(region, name)
            services[name] = {"v4": [a4], "v6": [a6]}
        regions[region] = {
            # where the region is: the first country routed to it (geotarget ties use it only
            # for clients whose country is unknown, who get the default region first anyway)
            "country": ccs[0] if ccs else "US",
            "meta": {"country": ccs} if ccs else {},
            "services": services,
        }
    chain = ["geofence_country", "geotarget_country", {"select_first_n": {"n": 1}}]
    records = {f"{name}.{policy.ZONE}": {"service": name, "types": ["A", "AAAA"], "ttl": policy.TTL,
                                         "chain": "policy", "fallback": "default_region"}
               for name in policy.NAMES}
    return {"default_region": policy.DEFAULT_REGION, "regions": regions,
            "chains": {"policy": chain}, "records": records}


def write_config(policy, workdir: Path) -> tuple[Path, Path]:
    zones, chains = workdir / "zones", workdir / "chains"
    zones.mkdir(parents=True, exist_ok=True)
    chains.mkdir(parents=True, exist_ok=True)
    (zones / f"{policy.ZONE}.zone").write_text(zone_text(policy))
    header = ("# generated by bench/run.py from the bench kit's policy.py: do not edit.\n"
              "# One service per name, one address per region; the fence (meta country) of a region\n"
              "# lists the client countries routed to it; unmapped and unknown clients get the\n"
              "# default region.\n")
    (chains / "bench.yaml").write_text(header + yaml.safe_dump(chains_doc(policy), sort_keys=False, default_flow_style=None))
    return zones, chains


def expected_answers(policy, subnet: str | None, name: str, qtype: str) -> list[str]:
    """What policy.py says `name` answers a client in `subnet` (None: no ECS, 127.0.0.1)."""
    cc = None
    if subnet is not None:
        cc = next((c for c, s in policy.CLIENTS if ipaddress.ip_network(s) == ipaddress.ip_network(subnet)), None)
    region = policy.COUNTRY_REGION.get(cc, policy.DEFAULT_REGION)
    a4, a6 = policy.addresses(region, name)
    return [a4 if qtype == "A" else a6]


# -- a small stdlib DNS client (verification only, never under load) -----------------------------

QTYPES = {1: "A", 28: "AAAA", 6: "SOA", 2: "NS"}


def _skip_name(msg: bytes, i: int) -> int:
    for _ in range(128):  # bounded: at most 128 labels
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1
    raise ValueError("name too long")


def _read_name(msg: bytes, i: int) -> str:
    labels = []
    for _ in range(128):
        n = msg[i]
        if n == 0 or n & 0xC0:
            break
        labels.append(msg[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += n + 1
    return ".".join(labels)


def describe_query(msg: bytes) -> tuple[str, str, str | None]:
    """(name, type, ECS subnet or None) of one blob query."""
    name = _read_name(msg, 12)
    i = _skip_name(msg, 12)
    qtype = struct.unpack_from("!H", msg, i)[0]
    i += 4
    subnet = None
    arcount = struct.unpack_from("!H", msg, 10)[0]
    for _ in range(arcount):
        i = _skip_name(msg, i)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, i)
        i += 10
        if rtype == 41:
            j = i
            while j + 4 <= i + rdlen:
                code, olen = struct.unpack_from("!HH", msg, j)
                if code == 8:
                    fam, src, _scope = struct.unpack_from("!HBB", msg, j + 4)
                    raw = msg[j + 8:j + 4 + olen]
                    size = 4 if fam == 1 else 16
                    addr = raw + b"\0" * (size - len(raw))
                    text = socket.inet_ntop(socket.AF_INET if fam == 1 else socket.AF_INET6, addr)
                    subnet = f"{text}/{src}"
                j += 4 + olen
        i += rdlen
    return name, QTYPES.get(qtype, str(qtype)), subnet


def ask(port: int, msg: bytes, timeout: float = 1.0, tries: int = 2) -> tuple[str, list[str]]:
    """Send one query over UDP to 127.0.0.1:port; (rcode text, sorted A/AAAA answers)."""
    rcodes = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
    for _ in range(tries):
        qid = random.randrange(65536)
        q = struct.pack("!H", qid) + msg[2:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(q, (HOST, port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    r = s.recv(65535)
                except socket.timeout:
                    break
                if len(r) >= 12 and struct.unpack_from("!H", r)[0] == qid:
                    return _parse_answer(r, rcodes)
    return "TIMEOUT", []


def _parse_answer(r: bytes, rcodes: dict) -> tuple[str, list[str]]:
    flags, qd, an = struct.unpack_from("!HHH", r, 2)
    rcode = rcodes.get(flags & 0xF, str(flags & 0xF))
    if flags & 0x0200:
        rcode += "(TC)"
    i = 12
    for _ in range(qd):
        i = _skip_name(r, i) + 4
    out = []
    for _ in range(an):
        i = _skip_name(r, i)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", r, i)
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntop(socket.AF_INET, r[i:i + 4]))
        elif rtype == 28 and rdlen == 16:
            out.append(socket.inet_ntop(socket.AF_INET6, r[i:i + 16]))
        i += rdlen
    return rcode, sorted(out)


def build_query(name: str, qtype: int) -> bytes:
    """A plain query (RD, no EDNS): the 127.0.0.1-without-ECS case."""
    wire = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    return struct.pack("!6H", 0, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, 1)


def read_blob(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, i = [], 0
    while i + 2 <= len(data) and len(out) < 100000:
        n = struct.unpack_from("!H", data, i)[0]
        out.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return out


def dig_short(port: int, name: str, qtype: str, subnet: str) -> str:
    try:
        p = subprocess.run(["dig", "+short", "+time=1", "+tries=2", f"@{HOST}", "-p", str(port),
                            name, qtype, f"+subnet={subnet}"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"<dig failed: {e}>"
    return " ".join(x for x in p.stdout.split() if not x.startswith(";"))


def verify(policy, blob: Path, servers: list[str]) -> dict:
    """dig spot checks on every server, then every blob query on every server vs policy.py."""
    name = f"wss-primary.{policy.ZONE}"
    problems = []
    for subnet in CHECK_SUBNETS:
        want = expected_answers(policy, subnet, "wss-primary", "A")[0]
        got = {s: dig_short(PORTS[s], name, "A", subnet) for s in servers}
        status(f"dig {name} A +subnet={subnet}: " + "  ".join(f"{LABELS[s]} {got[s] or 'none'}" for s in servers)
               + f"  (policy: {want})")
        problems += [f"dig +subnet={subnet} {LABELS[s]}: got {got[s] or 'no answer'!r}, policy says {want}"
                     for s in servers if got[s] != want]

    rows = []
    for msg in read_blob(blob):
        qname, qtype, subnet = describe_query(msg)
        short = qname[:-len(policy.ZONE) - 1] if qname.endswith("." + policy.ZONE) else qname
        rows.append((f"{subnet or '-'} {qname} {qtype}", msg, expected_answers(policy, subnet, short, qtype)))
    for t in ("A", "AAAA"):  # 127.0.0.1 without ECS: the default region
        rows.append((f"no-ECS(127.0.0.1) {name} {t}", build_query(name, 1 if t == "A" else 28),
                     expected_answers(policy, None, "wss-primary", t)))
    diffs = compare(rows, servers)
    status(f"compared {len(rows)} queries ({len(rows) - 2} of the blob + 2 without ECS) on "
           f"{', '.join(LABELS[s] for s in servers)}: {len(diffs)} difference(s)")
    fail_on_differences(problems, diffs)
    return {"queries": len(rows), "servers": servers, "differences": 0}


def compare(rows, servers: list[str]) -> list[tuple]:
    """Send every (label, query, expected answers) row to every server: the differences from
    policy.py or from gdnsd, as (label, server, answer, expected)."""
    diffs = []
    for label, msg, want in rows:
        got = {s: ask(PORTS[s], msg) for s in servers}
        ref = got.get("gdnsd")
        for s in servers:
            rcode, addrs = got[s]
            if rcode != "NOERROR" or addrs != want or (ref is not None and (rcode, addrs) != ref):
                diffs.append((label, s, f"{rcode} {' '.join(addrs) or '-'}", " ".join(want)))
    return diffs


def fail_on_differences(problems: list[str], diffs: list[tuple]) -> None:
    if problems or diffs:
        lines = problems[:]
        if diffs:
            w = max(len(d[0]) for d in diffs)
            lines.append(f"{'query':<{w}}  {'server':<9}  {'answer':<34}  policy.py")
            lines += [f"{q:<{w}}  {LABELS[s]:<9}  {a:<34}  {p}" for q, s, a, p in diffs[:120]]
            if len(diffs) > 120:
                lines.append(f"... and {len(diffs) - 120} more")
        raise BenchError("the servers do not answer the same policy:\n  " + "\n  ".join(lines))


def verify_many(policy, queries: list[tuple], servers: list[str], sample: int = VERIFY_SAMPLE) -> dict:
    """A fixed-seed sample of the many-subnet mix (with and without ECS, A and AAAA) on every
    server, each answer compared with gdnsd's and with policy.py."""
    rng = random.Random(mix.MIX_SEED)
    picked = rng.sample(queries, min(sample, len(queries)))
    rows = []
    for wire, cc, subnet, name, t in picked:
        region = policy.COUNTRY_REGION.get(cc, policy.DEFAULT_REGION)
        a4, a6 = policy.addresses(region, name)
        rows.append((f"{subnet or 'no-ECS'} {name} {t}", wire, [a4 if t == "A" else a6]))
    diffs = compare(rows, servers)
    n_ecs = sum(1 for q in picked if q[2] is not None)
    status(f"many-subnet mix: compared a sample of {len(rows)} queries ({n_ecs} with ECS, "
           f"{len(rows) - n_ecs} without) on {', '.join(LABELS[s] for s in servers)}: {len(diffs)} difference(s)")
    fail_on_differences([], diffs)
    return {"queries": len(rows), "with_ecs": n_ecs, "servers": servers, "differences": 0}


# -- processes: identity, trees, memory -----------------------------------------------------------

def starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(d))
    return out


def tree(pid: int) -> list[int]:
    """pid and its descendants (bounded walk)."""
    kids = children_map()
    out, todo = [], [pid]
    while todo and len(out) < 1024:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def proc_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def peak_rss_mb(pid: int) -> tuple[float, int, float]:
    """(sum of VmHWM over the process tree in MB, number of processes, largest VmHWM in MB)."""
    kb = [proc_kb(p, "VmHWM") for p in tree(pid)]
    return sum(kb) / 1024, len(kb), max(kb, default=0) / 1024


def cpu_ticks(pid: int) -> int:
    """utime + stime (clock ticks) of pid and its descendants, every thread included."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue  # a process that just exited: its time is lost with it (a worker restart)
    return total


def alive(pid: int, st: str | None) -> bool:
    return st is not None and starttime(pid) == st


# -- servers --------------------------------------------------------------------------------------

class References:
    """gdnsd and PowerDNS through the kit's references.sh (which records and stops its PIDs)."""

    def __init__(self, kit: Path, workdir: Path, mmdb: str | None):
        self.kit, self.workdir, self.mmdb = kit, workdir, mmdb
        self.started = False
        self.pids: dict[str, int] = {}

    def _run(self, *args: str, timeout: int) -> subprocess.CompletedProcess:
        env = dict(os.environ, GDNSD_PORT=str(PORTS["gdnsd"]), PDNS_PORT=str(PORTS["pdns"]))
        return subprocess.run(["bash", str(self.kit / "references.sh"), *args, "--workdir", str(self.workdir)],
                              capture_output=True, text=True, timeout=timeout, env=env)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["start"] + (["--mmdb", self.mmdb] if self.mmdb else [])
        p = self._run(*args, timeout=900)  # a first run installs Debian packages and mmdb-writer
        for line in p.stdout.splitlines():
            if line.startswith(("gdnsd:", "pdns:", "wrote", "workdir:", "installing")):
                status("references: " + line)
        if p.returncode != 0:
            # references.sh stops what it started when start fails: nothing left for us to stop
            raise BenchError(f"references.sh start failed (exit {p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
        self.started = True
        for n in ("gdnsd", "pdns"):
            pid, _st, _port = (self.workdir / f"{n}.pid").read_text().split()
            self.pids[n] = int(pid)

    @property
    def mmdb_path(self) -> str:
        return self.mmdb or str(self.workdir / "country.mmdb")

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        try:
            p = self._run("stop", timeout=60)
            for line in p.stdout.splitlines():
                status("references: " + line)
        except subprocess.TimeoutExpired:
            status("references: stop timed out; check " + str(self.workdir))


class Filterdns:
    """filterdns started from this repository; stopped by its PID (and its recorded children)."""

    def __init__(self, workdir: Path, zones: Path, chains: Path, mmdb: str | None, workers: int | None,
                 name: str = "filterdns", state: dict | None = None):
        """``mmdb`` None: the embedded geo database; ``state``: a state.json (drains, feeds) to
        start with; ``name``: its key in PORTS and the name of its log."""
        self.workdir, self.zones, self.chains, self.mmdb, self.workers = workdir, zones, chains, mmdb, workers
        self.name, self.state = name, state
        self.port = PORTS[name]
        self.proc: subprocess.Popen | None = None
        self.st: str | None = None
        self.log = workdir / f"{name}.log"
        self.notes: list[str] = []

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "filterdns", *args]

    def _env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def check(self) -> str:
        geo = ["--geoip", self.mmdb] if self.mmdb else []
        p = subprocess.run(self._cmd("check", "--zones", str(self.zones), "--chains", str(self.chains), *geo),
                           cwd=REPO, env=self._env(), capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise BenchError(f"filterdns check rejected the bench config (exit {p.returncode}):\n"
                             f"{p.stdout}{p.stderr}")
        return (p.stdout.strip().splitlines() or [""])[-1]

    def start(self) -> None:
        port = self.port
        if not port_free(port):
            raise BenchError(f"{HOST}:{port} is in use; stop that server first")
        helptext = subprocess.run(self._cmd("serve", "--help"), cwd=REPO, env=self._env(),
                                  capture_output=True, text=True, timeout=30).stdout
        args = ["serve", "--zones", str(self.zones), "--chains", str(self.chains),
                *(["--geoip", self.mmdb] if self.mmdb else []),
                "--listen", f"{HOST}:{port}", "--metrics", "off", "--control", "off"]
        state_dir = self.workdir / f"state-{self.name}"
        if self.state is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            (state_dir / "state.json").write_text(json.dumps(self.state))
        for flag, extra in (("--state-dir", [str(state_dir)]), ("--no-watch", []),
                            ("--no-health", [])):
            if flag in helptext:
                args += [flag, *extra]
        if self.workers is not None:
            if "--workers" in helptext:
                args += ["--workers", str(self.workers)]
            else:
                self.notes.append(f"filterdns serve has no --workers yet: ran without it (asked for {self.workers})")
        status(f"{self.name}: " + " ".join(["python3", "-m", "filterdns", *args]))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self._cmd(*args), cwd=REPO, env=self._env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.st = starttime(self.proc.pid)
        soa = build_query(f"{'example.com'}", 6)
        for _ in range(150):  # up to ~30 s
            if self.proc.poll() is not None:
                raise BenchError(f"filterdns exited at start-up (exit {self.proc.returncode}); "
                                 f"log {self.log}:\n{tail(self.log)}")
            if ask(port, soa, timeout=0.2, tries=1)[0] == "NOERROR":
                break
            time.sleep(0.2)
        else:
            raise BenchError(f"filterdns did not answer SOA on {HOST}:{port} within 30 s; log:\n{tail(self.log)}")
        time.sleep(0.5)  # let any workers finish starting before counting them
        n = len(tree(self.proc.pid))
        status(f"{self.name}: pid {self.proc.pid}, {n} process(es), on {HOST}:{port} (log: {self.log})")
        if self.workers is not None and "--workers" in helptext and n < self.workers:
            self.notes.append(f"filterdns was started with --workers {self.workers} but runs {n} process(es)")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def processes(self) -> list[int]:
        return tree(self.pid) if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        family = [(p, starttime(p)) for p in tree(proc.pid)] if alive(proc.pid, self.st) else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for _ in range(25):  # children it had: give them up to 5 s, then SIGKILL those still alive
            left = [(p, st) for p, st in family[1:] if alive(p, st)]
            if not left:
                break
            time.sleep(0.2)
        for p, st in family[1:]:
            if alive(p, st):
                os.kill(p, signal.SIGKILL)
        status(f"{self.name}: stopped pid {proc.pid}")


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# -- dnsperf --------------------------------------------------------------------------------------

def dnsperf(port: int, blob: Path, seconds: int, out: Path, qps: int | None = None, verbose: bool = False,
            pin: str | None = None, cpu_pid: int | None = None) -> dict:
    """One bounded dnsperf run: {qps, avg_ms, lost, sent, rcodes[, p99_ms, p50_ms][, cpu_us]}.
    With ``cpu_pid``: ``cpu_us``, the CPU time of that server's process tree (utime + stime
    from /proc) during the run, per answered query, in microseconds."""
    cmd = ["timeout", str(seconds + 30), "dnsperf", "-s", HOST, "-p", str(port), "-l", str(seconds),
           *DNSPERF_FLAGS, "-d", str(blob)]
    if qps:
        cmd += ["-Q", str(qps)]
    if verbose:
        cmd += ["-v"]
    if pin:
        cmd = ["taskset", "-c", pin, *cmd]
    t0 = cpu_ticks(cpu_pid) if cpu_pid else 0
    with open(out, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=seconds + 60).returncode
    t1 = cpu_ticks(cpu_pid) if cpu_pid else 0
    res: dict = {"seconds": seconds}
    lat: list[float] = []
    with open(out, errors="replace") as f:
        for line in f:
            if line.startswith("> "):
                if verbose:
                    parts = line.split()
                    if parts[1] != "T":  # "> T ..." marks a timeout in -v output
                        try:
                            lat.append(float(parts[-1]))
                        except ValueError:
                            pass
                continue
            s = line.strip()
            if s.startswith("Queries sent:"):
                res["sent"] = int(s.split()[2])
            elif s.startswith("Queries lost:"):
                res["lost"] = int(s.split()[2])
            elif s.startswith("Queries per second:"):
                res["qps"] = float(s.split()[3])
            elif s.startswith("Average Latency (s):"):
                res["avg_ms"] = float(s.split()[3]) * 1000
            elif s.startswith("Response codes:"):
                res["rcodes"] = s.split(":", 1)[1].strip()
    if rc != 0 or "qps" not in res:
        raise BenchError(f"dnsperf against {HOST}:{port} failed (exit {rc}); output {out}:\n{tail(out, 15)}")
    if cpu_pid and "sent" in res:
        answered = res["sent"] - res.get("lost", 0)
        res["cpu_us"] = (t1 - t0) / CLK_TCK * 1e6 / answered if answered > 0 else None
    if lat:
        lat.sort()
        res["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        res["p50_ms"] = lat[len(lat) // 2] * 1000
        res["latency_samples"] = len(lat)
    if verbose:
        out.unlink(missing_ok=True)  # hundreds of thousands of lines; the figures are kept
    rcodes = res.get("rcodes", "")
    if rcodes and not (rcodes.startswith("NOERROR") and "(100.00%)" in rcodes):
        status(f"warning: {HOST}:{port} response codes: {rcodes}")
    return res


def pin_server(pids: list[int], cpus: str) -> None:
    for p in pids:
        subprocess.run(["taskset", "-apc", cpus, str(p)], capture_output=True, timeout=10)


def measure(server: str, pid: int, blob: Path, args, wd: Path, pins: tuple[str, str] | None,
            mix_name: str = "17 subnets") -> dict:
    port = PORTS[server]
    if pins:
        pin_server(tree(pid), pins[1])
    runs = []
    tag = mix_name.split()[0]
    for i in range(args.runs):
        status(f"{LABELS[server]} ({mix_name}): dnsperf run {i + 1}/{args.runs}, {args.seconds} s")
        r = dnsperf(port, blob, args.seconds, wd / f"dnsperf-{server}-{tag}-{i + 1}.out", pin=pins and pins[0],
                    cpu_pid=pid)
        status(f"{LABELS[server]} ({mix_name}): {r['qps']:.0f} q/s, avg {r['avg_ms']:.3f} ms, lost {r['lost']} "
               f"of {r['sent']}, CPU {fmt(r.get('cpu_us'), '.2f')} us/query, load {os.getloadavg()[0]:.2f}")
        runs.append(r)
    secs = min(P99_SECONDS, args.seconds)
    status(f"{LABELS[server]} ({mix_name}): latency run with dnsperf -v, {secs} s (per-query latencies for p99)")
    lr = dnsperf(port, blob, secs, wd / f"dnsperf-{server}-{tag}-v.out", verbose=True, pin=pins and pins[0])
    mem, nproc, mem_max = peak_rss_mb(pid)
    cpus = [r["cpu_us"] for r in runs if r.get("cpu_us") is not None]
    return {
        "server": server,
        "mix": mix_name,
        "qps": statistics.median(r["qps"] for r in runs),
        "cpu_us": statistics.median(cpus) if cpus else None,
        "avg_ms": statistics.median(r["avg_ms"] for r in runs),
        "p99_ms": lr.get("p99_ms"),
        "lost": sum(r["lost"] for r in runs),
        "sent": sum(r["sent"] for r in runs),
        "peak_rss_mb": mem,
        "processes": nproc,
        "peak_rss_mb_max_process": mem_max,
        "runs": runs,
        "latency_run": {k: lr.get(k) for k in ("qps", "avg_ms", "p50_ms", "p99_ms", "lost", "sent",
                                               "latency_samples")},
    }


#: the latency probe: one query at a time, this often, each answer awaited at most PROBE_TIMEOUT
PROBE_INTERVAL = 0.002
PROBE_TIMEOUT = 1.0


def probe(port: int, wires: list[bytes], seconds: float, out: dict) -> None:
    """Single-answer latency under dnsperf's load: every PROBE_INTERVAL s one query of the
    mix (in turn, its own ID), sent alone and its answer awaited, timed with the monotonic
    clock. dnsperf's own ``-v`` latencies are not used here: printing a line per answer busies
    dnsperf's receiving thread, and what it then measures is its own delay (gdnsd, at 7 us of
    CPU a query, showed a p99 of 3-4 ms that way). Fills ``out`` with n, lost, p50/p99/max ms."""
    lat: list[float] = []
    lost = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(PROBE_TIMEOUT)
    sock.connect((HOST, port))
    clock = time.perf_counter
    end = clock() + seconds
    i = 0
    try:
        while clock() < end:
            w = bytearray(wires[i % len(wires)])
            qid = i & 0xFFFF
            w[0:2] = struct.pack("!H", qid)
            t0 = clock()
            sock.send(w)
            try:
                while True:
                    r = sock.recv(4096)
                    if len(r) >= 2 and struct.unpack_from("!H", r)[0] == qid:
                        break
                lat.append((clock() - t0) * 1000)
            except OSError:  # timeout
                lost += 1
            i += 1
            pause = t0 + PROBE_INTERVAL - clock()
            if pause > 0:
                time.sleep(pause)
    finally:
        sock.close()
    lat.sort()
    out.update(n=len(lat) + lost, lost=lost,
               p50_ms=lat[len(lat) // 2] if lat else None,
               p99_ms=lat[int(len(lat) * 0.99)] if lat else None,
               max_ms=lat[-1] if lat else None)


def dnsperf_probed(port: int, blob: Path, seconds: int, out: Path, qps: int, pin, cpu_pid: int) -> dict:
    """dnsperf at ``qps`` (no -v) with the latency probe beside it: p99 is the probe's."""
    import threading

    wires = read_blob(blob)[:5000]
    got: dict = {}
    th = threading.Thread(target=probe, args=(port, wires, max(1.0, seconds - 1.0), got), daemon=True)
    th.start()
    r = dnsperf(port, blob, seconds, out, qps=qps, pin=pin, cpu_pid=cpu_pid)
    th.join(timeout=PROBE_TIMEOUT + 5)
    r["probe"] = got
    r["p99_ms"], r["p50_ms"] = got.get("p99_ms"), got.get("p50_ms")
    r["probe_lost"] = got.get("lost", 0)
    return r


def fixed_rate(server: str, pid: int, blob: Path, rate: int, seconds: int, wd: Path, pins) -> dict:
    """One run at ``rate`` q/s (dnsperf -Q) with the latency probe: CPU per query, lost, p99."""
    status(f"{LABELS[server]}: fixed rate, dnsperf -Q {rate} for {seconds} s, latency probe every "
           f"{PROBE_INTERVAL * 1000:g} ms")
    r = dnsperf_probed(PORTS[server], blob, seconds, wd / f"dnsperf-{server}-fixed.out", rate,
                       pins and pins[0], pid)
    r["target_qps"] = rate
    r["sustained"] = r["lost"] == 0 and r["qps"] >= 0.97 * rate
    pr = r["probe"]
    status(f"{LABELS[server]}: fixed rate {r['qps']:.0f} q/s, lost {r['lost']}, probe p50 {fmt(pr.get('p50_ms'), '.3f')} "
           f"p99 {fmt(pr.get('p99_ms'), '.3f')} max {fmt(pr.get('max_ms'), '.2f')} ms (lost {pr.get('lost')} of "
           f"{pr.get('n')}), CPU {fmt(r.get('cpu_us'), '.2f')} us/query")
    return r


def soak(fd: Filterdns, blob: Path, minutes: float, qps: int, wd: Path, pins) -> dict:
    secs = int(minutes * 60)
    cmd = ["timeout", str(secs + 30), "dnsperf", "-s", HOST, "-p", str(fd.port), "-l", str(secs),
           *DNSPERF_FLAGS, "-d", str(blob), "-Q", str(qps)]
    if pins:
        cmd = ["taskset", "-c", pins[0], *cmd]
    out = wd / "dnsperf-soak.out"
    samples: dict[int, list[float]] = {}
    status(f"soak: filterdns at {qps} q/s for {minutes:g} min, RSS every {SOAK_SAMPLE_S} s")
    t0 = cpu_ticks(fd.pid)
    with open(out, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            for i in range(secs // SOAK_SAMPLE_S + 4):  # bounded: the run plus a margin
                for pid in fd.processes():
                    samples.setdefault(pid, []).append(proc_kb(pid, "VmRSS") / 1024)
                if i % 6 == 0:
                    total = sum(v[-1] for v in samples.values() if v)
                    status(f"soak: {i * SOAK_SAMPLE_S} s, RSS {total:.1f} MB over {len(fd.processes())} process(es)")
                try:
                    p.wait(timeout=SOAK_SAMPLE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
    t1 = cpu_ticks(fd.pid)
    for pid in fd.processes():  # one last sample, after the load
        samples.setdefault(pid, []).append(proc_kb(pid, "VmRSS") / 1024)
    text = out.read_text(errors="replace")
    lost = next((int(l.split()[2]) for l in text.splitlines() if l.strip().startswith("Queries lost:")), None)
    sent = next((int(l.split()[2]) for l in text.splitlines() if l.strip().startswith("Queries sent:")), None)
    # "flat" is judged after the warm-up (the first quarter, at most a minute), while the bounded
    # caches fill: from then to the end, RSS may not grow
    warm = min(len(v) for v in samples.values()) // 4 if samples else 0
    warm = min(warm, 60 // SOAK_SAMPLE_S)
    # bounded caches that fill and are swapped make RSS a sawtooth; a leak makes each peak higher,
    # so "growth" is the peak of the second half (after warm-up) minus the peak of the first
    def growth(v: list[float]) -> float:
        tail = v[min(warm, len(v) - 1):]
        k = max(1, len(tail) // 2)
        return max(tail[k:] or tail) - max(tail[:k])

    per = {str(pid): {"first_mb": v[0], "warm_mb": v[min(warm, len(v) - 1)], "last_mb": v[-1], "max_mb": max(v),
                      "growth_mb": growth(v), "samples": len(v), "role": "main" if pid == fd.pid else "child"}
           for pid, v in samples.items() if v and v[0] > 0}
    answered = (sent or 0) - (lost or 0)
    cpu = (t1 - t0) / CLK_TCK * 1e6 / answered if answered > 0 else None
    return {"minutes": minutes, "qps": qps, "lost": lost, "sent": sent, "cpu_us": cpu,
            "warmup_s": warm * SOAK_SAMPLE_S, "per_process": per}


# -- the seed's own chains, on the bundled config (filterdns alone) -------------------------------

BUNDLED_COUNTRIES = ("US", "CA", "BR", "GB", "IE", "DE", "FR", "IN", "SG", "JP", "AU")
SHED_REGION, SHED_SERVICE = "eu-west-2", "wss"
SHED_CLIENT = "81.2.69.0/24"  # London: routed to SHED_REGION first, by country and by subdivision


def shed_state() -> tuple[dict, str]:
    """A state.json feeding ``connections`` halfway between the watermarks of SHED_REGION's
    SHED_SERVICE in the bundled chains/regions.yaml, so shed_load draws for its clients."""
    doc = yaml.safe_load((REPO / "chains" / "regions.yaml").read_text())
    meta = doc["regions"][SHED_REGION]["services"][SHED_SERVICE].get("meta", {})
    low, high = float(meta["low_watermark"]), float(meta["high_watermark"])
    load = (low + high) / 2
    state = {"version": 1, "saved_at": int(time.time()), "drains": [],
             "feeds": [{"region": SHED_REGION, "service": SHED_SERVICE, "values": {"connections": load}}]}
    return state, f"{SHED_REGION}/{SHED_SERVICE} connections {load:g} between its watermarks {low:g}..{high:g}"


def bundled_blobs(n: int, wd: Path) -> dict[str, Path]:
    """Blobs over ``n`` distinct subnets of the embedded database: 'deterministic' (api, the
    latency chain) and 'seed' (wss-primary with shed_load and wss-backup with shuffle)."""
    from filterdns.routing.geo import DEFAULT_DB

    subnets = mix.bundled_subnets(n, BUNDLED_COUNTRIES, DEFAULT_DB)
    rng = random.Random(mix.MIX_SEED + 2)
    out = {}
    for label, names in (("deterministic", ("api",)), ("seed", ("wss-primary", "wss-backup"))):
        wires = [mix.ecs_query(f"{rng.choice(names)}.example.com", mix.QTYPE[rng.choice(("A", "AAAA"))], sub)
                 for sub in subnets]
        out[label] = wd / f"bundled-{label}.blob"
        mix.write_blob(out[label], wires)
    return out


def check_shedding(port: int) -> str:
    """The shed region's clients must get it for some queries and another region for others."""
    gb = mix.ecs_query("wss-primary.example.com", 1, ipaddress.ip_network(SHED_CLIENT))
    seen: dict[str, int] = {}
    for _ in range(60):
        rcode, addrs = ask(port, gb)
        seen[" ".join(addrs) or rcode] = seen.get(" ".join(addrs) or rcode, 0) + 1
    if len(seen) < 2:
        raise BenchError(f"bundled config: wss-primary for {SHED_CLIENT} always got {list(seen)}: "
                         f"shed_load is not drawing between the watermarks")
    return ", ".join(f"{k} x{v}" for k, v in sorted(seen.items()))


def measure_bundled(args, wd: Path, pins) -> dict:
    state, what = shed_state()
    status(f"phase 8: the seed's chains on the bundled config (zones/, chains/, embedded geo DB); {what}")
    blobs = bundled_blobs(args.bundled_subnets, wd)
    fb = Filterdns(wd, REPO / "zones", REPO / "chains", None, args.workers, name="bundled", state=state)
    out: dict = {"subnets": args.bundled_subnets, "shed": what}
    try:
        fb.start()
        out["shed_check"] = check_shedding(fb.port)
        status(f"bundled: wss-primary for {SHED_CLIENT}, 60 queries: {out['shed_check']}")
        for label, blob in blobs.items():
            runs = []
            for i in range(args.runs):
                r = dnsperf(fb.port, blob, args.seconds, wd / f"dnsperf-bundled-{label}-{i + 1}.out",
                            pin=pins and pins[0], cpu_pid=fb.pid)
                status(f"bundled {label}: {r['qps']:.0f} q/s, lost {r['lost']}, CPU {fmt(r.get('cpu_us'), '.2f')} "
                       f"us/query, load {os.getloadavg()[0]:.2f}")
                runs.append(r)
            cpus = [r["cpu_us"] for r in runs if r.get("cpu_us") is not None]
            out[label] = {"qps": statistics.median(r["qps"] for r in runs),
                          "cpu_us": statistics.median(cpus) if cpus else None,
                          "lost": sum(r["lost"] for r in runs), "sent": sum(r["sent"] for r in runs), "runs": runs}
    finally:
        fb.stop()
    return out


# -- report ---------------------------------------------------------------------------------------

def fmt(v, spec: str, none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def report(results: dict, half: dict | None, soak_res: dict | None, notes: list[str]) -> str:
    lines = [f"{'server':<10} {'QPS':>9} {'avg ms':>8} {'p99 ms':>8} {'lost':>12} {'peak RSS MB':>12} {'procs':>5}"]
    for s in SERVERS:
        r = results.get(s)
        if r is None:
            continue
        lines.append(f"{LABELS[s]:<10} {r['qps']:>9.0f} {r['avg_ms']:>8.3f} {fmt(r['p99_ms'], '.3f'):>8} "
                     f"{str(r['lost']) + '/' + str(r['sent']):>12} {r['peak_rss_mb']:>12.1f} {r['processes']:>5}")
    fd = results.get("filterdns")
    ratios = {}
    if fd:
        for ref in ("gdnsd", "pdns"):
            if ref in results and results[ref]["qps"]:
                ratios[ref] = fd["qps"] / results[ref]["qps"]
        if ratios:
            lines.append("")
            lines.append("filterdns/" + ", filterdns/".join(f"{LABELS[k]} = {v:.2f}x" for k, v in ratios.items()))
    if half:
        lines.append(f"filterdns at half rate (-Q {half['target_qps']}): {half['qps']:.0f} q/s, lost "
                     f"{half['lost']} of {half['sent']}, p99 {fmt(half.get('p99_ms'), '.3f')} ms, "
                     f"avg {half['avg_ms']:.3f} ms")
    if soak_res:
        lines.append(f"soak {soak_res['minutes']:g} min at {soak_res['qps']} q/s: lost {soak_res['lost']} of "
                     f"{soak_res['sent']}")
        for pid, v in soak_res["per_process"].items():
            lines.append(f"  pid {pid} ({v['role']}): RSS first {v['first_mb']:.1f} MB, last {v['last_mb']:.1f} MB, "
                         f"max {v['max_mb']:.1f} MB ({v['samples']} samples)")
    # the targets of issue 5
    t = []
    if "pdns" in ratios:
        t.append(f">= {TARGETS['vs_pdns']:g}x PowerDNS: {'yes' if ratios['pdns'] >= TARGETS['vs_pdns'] else 'NO'}")
    if "gdnsd" in ratios:
        t.append(f">= {TARGETS['vs_gdnsd']:g}x gdnsd: {'yes' if ratios['gdnsd'] >= TARGETS['vs_gdnsd'] else 'NO'}")
    if half:
        ok = half["lost"] == 0 and half.get("p99_ms") is not None and half["p99_ms"] < TARGETS["half_p99_ms"]
        t.append(f"half rate 0 lost and p99 < {TARGETS['half_p99_ms']:g} ms: {'yes' if ok else 'NO'}")
    if fd:
        per = fd["peak_rss_mb_max_process"]
        t.append(f"peak RSS of the largest process {per:.1f} MB < {TARGETS['rss_mb_per_worker']:g}: "
                 f"{'yes' if per < TARGETS['rss_mb_per_worker'] else 'NO'}")
    if soak_res and soak_res["per_process"]:
        worst = max(v["max_mb"] for v in soak_res["per_process"].values())
        growth = max(v["last_mb"] - v["first_mb"] for v in soak_res["per_process"].values())
        t.append(f"soak max {worst:.1f} MB/worker, growth {growth:+.1f} MB: "
                 f"{'yes' if worst < TARGETS['rss_mb_per_worker'] and growth < 10 else 'NO'}")
    if t:
        lines.append("targets: " + "; ".join(t))
    for n in notes:
        lines.append("note: " + n)
    return "\n".join(lines)


def yes(ok: bool) -> str:
    return "reached" if ok else "NOT reached"


def report11(many: dict, fixed: dict, half: dict | None, bundled: dict | None, soak_res: dict | None,
             base: dict, n_subnets: int, loads: tuple[float, float]) -> str:
    """The issue-11 table (many-subnet mix) and its targets, each reached or not."""
    lines = [f"many-subnet mix: {n_subnets} distinct client subnets (IPv4 /24, IPv6 /56) plus 5% without ECS; "
             f"load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end",
             f"{'server':<10} {'q/s 17 subnets':>14} {'q/s many':>9} {'CPU us/q sat':>12} "
             f"{'q/s fixed':>9} {'CPU us/q fixed':>14} {'p99 ms fixed':>12} {'lost many':>12}"]
    for s in SERVERS:
        m = many.get(s)
        if m is None:
            continue
        f = fixed.get(s) or {}
        b = base.get(s) or {}
        lines.append(f"{LABELS[s]:<10} {fmt(b.get('qps'), '.0f'):>14} {m['qps']:>9.0f} {fmt(m['cpu_us'], '.2f'):>12} "
                     f"{fmt(f.get('qps'), '.0f'):>9} {fmt(f.get('cpu_us'), '.2f'):>14} "
                     f"{fmt(f.get('p99_ms'), '.3f'):>12} {str(m['lost']) + '/' + str(m['sent']):>12}")
    if fixed:
        rate = next(iter(fixed.values()))["target_qps"]
        lines.append(f"fixed rate: dnsperf -Q {rate} (half the slowest server's many-subnet q/s), p99 from a "
                     f"probe sending one query every {PROBE_INTERVAL * 1000:g} ms beside it; "
                     + ", ".join(f"{LABELS[s]} {'sustained' if v['sustained'] else 'NOT sustained'}"
                                 for s, v in fixed.items()))
    if bundled:
        d, sd = bundled.get("deterministic"), bundled.get("seed")
        lines.append(f"bundled config, {bundled['subnets']} subnets ({bundled['shed']}):")
        for label, v in (("api (latency chain, deterministic)", d), ("wss-primary + wss-backup (shed_load, "
                                                                      "shuffle)", sd)):
            if v:
                lines.append(f"  {label}: {v['qps']:.0f} q/s, CPU {fmt(v['cpu_us'], '.2f')} us/query, "
                             f"lost {v['lost']}/{v['sent']}")
    t = []
    fd, gd, pd = many.get("filterdns"), many.get("gdnsd"), many.get("pdns")
    if fd and gd and fd.get("cpu_us") and gd.get("cpu_us"):
        r = fd["cpu_us"] / gd["cpu_us"]
        t.append(f"CPU/query at saturation {r:.2f}x gdnsd (<= {TARGETS11['cpu_vs_gdnsd']:g}x): "
                 f"{yes(r <= TARGETS11['cpu_vs_gdnsd'])}")
        ff, fg = fixed.get("filterdns", {}).get("cpu_us"), fixed.get("gdnsd", {}).get("cpu_us")
        if ff and fg:
            t.append(f"CPU/query at the fixed rate {ff / fg:.2f}x gdnsd: {yes(ff / fg <= TARGETS11['cpu_vs_gdnsd'])}")
    if fd and pd and pd["qps"]:
        r = fd["qps"] / pd["qps"]
        t.append(f"q/s {r:.2f}x PowerDNS (>= {TARGETS11['many_vs_pdns']:g}x): {yes(r >= TARGETS11['many_vs_pdns'])}")
    if fd and gd and gd["qps"]:
        r = fd["qps"] / gd["qps"]
        t.append(f"q/s {r:.2f}x gdnsd (>= {TARGETS11['many_vs_gdnsd']:g}x): {yes(r >= TARGETS11['many_vs_gdnsd'])}")
    if bundled and bundled.get("seed", {}).get("cpu_us") and bundled.get("deterministic", {}).get("cpu_us"):
        r = bundled["seed"]["cpu_us"] / bundled["deterministic"]["cpu_us"]
        t.append(f"seed chains {r:.2f}x the deterministic chain's CPU/query (<= "
                 f"{TARGETS11['chains_vs_deterministic']:g}x): {yes(r <= TARGETS11['chains_vs_deterministic'])}")
    if half:
        lost = half["lost"] + half.get("probe_lost", 0)
        ok = lost == 0 and half.get("p99_ms") is not None and half["p99_ms"] < TARGETS11["half_p99_ms"]
        t.append(f"half rate (-Q {half['target_qps']}) p99 {fmt(half.get('p99_ms'), '.3f')} ms (probe), lost "
                 f"{half['lost']} + {half.get('probe_lost', 0)} probes (< {TARGETS11['half_p99_ms']:g} ms, 0 lost): "
                 f"{yes(ok)}")
    if soak_res and soak_res["per_process"]:
        worst = max(v["max_mb"] for v in soak_res["per_process"].values())
        growth = max(v["growth_mb"] for v in soak_res["per_process"].values())
        ok = worst < TARGETS["rss_mb_per_worker"] and growth < TARGETS11["soak_growth_mb"]
        t.append(f"soak {soak_res['minutes']:g} min: largest process {worst:.1f} MB, peak of the second half "
                 f"over the first (after {soak_res['warmup_s']} s warm-up) {growth:+.1f} MB "
                 f"(< 150 MB, < {TARGETS11['soak_growth_mb']:g} MB): {yes(ok)}")
    if soak_res:
        lines.append(f"soak {soak_res['minutes']:g} min at {soak_res['qps']} q/s (many-subnet mix): lost "
                     f"{soak_res['lost']} of {soak_res['sent']}, CPU {fmt(soak_res.get('cpu_us'), '.2f')} us/query")
        for pid, v in soak_res["per_process"].items():
            lines.append(f"  pid {pid} ({v['role']}): RSS first {v['first_mb']:.1f} MB, after warm-up "
                         f"{v['warm_mb']:.1f} MB, last {v['last_mb']:.1f} MB, max {v['max_mb']:.1f} MB, "
                         f"growth {v['growth_mb']:+.1f} MB")
    if t:
        lines.append("targets (issue 11):")
        lines += ["  " + x for x in t]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="See bench/README.md for how to read the table.")
    ap.add_argument("--seconds", type=int, default=10, help="length of each dnsperf run, 1-60 (default: 10)")
    ap.add_argument("--runs", type=int, default=3, help="dnsperf runs per server, median reported, 1-5 (default: 3)")
    ap.add_argument("--workers", type=int, default=None, metavar="N",
                    help="filterdns --workers N (default: the server's own default)")
    ap.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                    help="also run filterdns under steady half-rate load this long (1-60), sampling RSS")
    ap.add_argument("--only", default=",".join(SERVERS), metavar="LIST",
                    help="servers to measure, from filterdns,gdnsd,pdns (default: all; both references "
                         "are always started, to verify answers against gdnsd)")
    ap.add_argument("--mmdb", default=None, metavar="PATH",
                    help="country .mmdb for all three (default: the kit's small test database)")
    ap.add_argument("--pin", action="store_true",
                    help="pin dnsperf to CPU 0 and the measured server to the other CPUs (taskset)")
    ap.add_argument("--subnets", type=int, default=120_000, metavar="N",
                    help="distinct client subnets of the many-subnet mix, 0 to skip it (default: 120000)")
    ap.add_argument("--bundled-subnets", type=int, default=60_000, metavar="N",
                    help="distinct client subnets for the seed's chains on the bundled config, 0 to skip "
                         "(default: 60000)")
    ap.add_argument("--fixed-rate", type=int, default=None, metavar="QPS",
                    help="the fixed rate every server is measured at (default: half the slowest server's "
                         "many-subnet q/s)")
    ap.add_argument("--port-base", type=int, default=5400, metavar="PORT",
                    help="filterdns on PORT, gdnsd PORT+1, PowerDNS PORT+3, the bundled config PORT+4 "
                         "(default: 5400)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the workdir (configs, logs, dnsperf output)")
    ap.add_argument("--save", action="store_true", help="write the results to bench/results/latest.json")
    a = ap.parse_args(argv)
    if not 1 <= a.seconds <= 60:
        ap.error("--seconds must be in 1..60")
    if not 1 <= a.runs <= 5:
        ap.error("--runs must be in 1..5")
    if a.workers is not None and not 1 <= a.workers <= 64:
        ap.error("--workers must be in 1..64")
    if a.soak is not None and not 1 <= a.soak <= 60:
        ap.error("--soak must be in 1..60 minutes")
    if not 0 <= a.subnets <= 1_000_000 or not 0 <= a.bundled_subnets <= 1_000_000:
        ap.error("--subnets and --bundled-subnets must be in 0..1000000")
    if a.fixed_rate is not None and not 100 <= a.fixed_rate <= 1_000_000:
        ap.error("--fixed-rate must be in 100..1000000")
    if not 1024 <= a.port_base <= 65000:
        ap.error("--port-base must be in 1024..65000")
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SERVERS]
    if bad or not only:
        ap.error(f"--only: unknown server(s) {', '.join(bad) or '(none given)'}; choose from {','.join(SERVERS)}")
    a.only = [s for s in SERVERS if s in only]
    return a


def main(argv=None) -> int:  # noqa: C901 - the run is one linear sequence of steps, each a call
    args = parse_args(argv)
    for k, off in (("filterdns", 0), ("gdnsd", 1), ("pdns", 3), ("bundled", 4)):
        PORTS[k] = args.port_base + off
    kit = find_kit()
    if kit is None:
        where = os.environ.get("FILTERDNS_SHARED_BENCH") or str(REPO.parent / "shared" / "bench")
        print(f"bench: the shared bench kit was not found at {where} (it needs references.sh, policy.py and "
              f"make_queries.py). Put a copy of shared/ beside the repository, or set "
              f"FILTERDNS_SHARED_BENCH=/path/to/shared/bench.", file=sys.stderr)
        return 2
    for tool in ("dig", "timeout", "bash") + (("taskset",) if args.pin else ()):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found", file=sys.stderr)
            return 2
    policy = load_policy(kit)
    pins = None
    if args.pin:
        n = os.cpu_count() or 1
        if n < 2:
            print("bench: --pin needs at least 2 CPUs", file=sys.stderr)
            return 2
        pins = ("0", f"1-{n - 1}")

    def on_signal(signum, _frame):
        raise Stop(signal.Signals(signum).name)

    # SIGINT too: a shell that starts the bench in the background leaves SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    t0 = time.monotonic()
    wd = Path(tempfile.mkdtemp(prefix="filterdns-bench-"))
    refs = References(kit, Path(os.environ.get("TMPDIR", "/tmp")) / (
        "filterdns-bench-refs-run" + ("" if args.port_base == 5400 else f"-{args.port_base}")), args.mmdb)
    fd: Filterdns | None = None
    notes: list[str] = []
    rc = 1
    try:
        status(f"kit {kit}, workdir {wd}")
        load1 = os.getloadavg()[0]
        status(f"load average {load1:.2f} on {os.cpu_count()} CPU(s)")
        if load1 > 0.5:
            notes.append(f"load average was {load1:.2f} at the start: other jobs share these CPUs, "
                         f"so absolute figures are low and noisy (ratios from one run are fairer)")
        status("phase 1: reference servers (references.sh start; installs missing Debian packages)")
        refs.start()
        if shutil.which("dnsperf") is None:
            raise BenchError("dnsperf is still missing after references.sh start")
        p = subprocess.run([sys.executable, str(kit / "make_queries.py"), str(wd / "geo.blob")],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise BenchError(f"make_queries.py failed:\n{p.stdout}{p.stderr}")
        status(p.stdout.strip())
        blob = wd / "geo.blob"

        status("phase 2: filterdns config from policy.py")
        zones, chains = write_config(policy, wd)
        fd = Filterdns(wd, zones, chains, refs.mmdb_path, args.workers)
        status(f"filterdns check: {fd.check()}")

        status("phase 3: filterdns")
        fd.start()
        notes += fd.notes
        if args.workers is None:
            notes.append(f"filterdns ran with its default worker count: {len(fd.processes())} process(es) "
                         f"in its tree (peak RSS is their sum)")

        status("phase 4: verification (dig, then every blob query on every server)")
        verified = verify(policy, blob, list(SERVERS))
        many_blob, n_many = None, 0
        if args.subnets:
            status(f"phase 4b: the many-subnet mix, {args.subnets} distinct client subnets")
            queries = mix.many_subnet_queries(policy, args.subnets)
            many_blob = wd / "many.blob"
            mix.write_blob(many_blob, [q[0] for q in queries])
            n_many = len({q[2] for q in queries if q[2] is not None})
            status(f"wrote {many_blob}: {len(queries)} queries, {n_many} distinct client subnets "
                   f"({sum(1 for q in queries if q[2] and ':' in q[2])} IPv6 /56), "
                   f"{sum(1 for q in queries if q[2] is None)} without ECS, "
                   f"{len({q[1] for q in queries if q[1]})} countries")
            verified["many"] = verify_many(policy, queries, list(SERVERS))
            del queries

        status("phase 5: dnsperf, " + ", ".join(LABELS[s] for s in args.only) +
               f" ({args.runs} x {args.seconds} s each per mix, then {min(P99_SECONDS, args.seconds)} s with -v)")
        results, many, fixed = {}, {}, {}
        pids = {"filterdns": fd.pid, **refs.pids}
        for s in args.only:
            results[s] = measure(s, pids[s], blob, args, wd, pins)
            if many_blob is not None:
                many[s] = measure(s, pids[s], many_blob, args, wd, pins, mix_name=f"{n_many} subnets")
        if many:
            rate = args.fixed_rate or max(100, int(min(m["qps"] for m in many.values()) / 2) // 100 * 100)
            status(f"phase 5b: every server at one fixed rate, {rate} q/s, many-subnet mix")
            for s in args.only:
                fixed[s] = fixed_rate(s, pids[s], many_blob, rate, args.seconds, wd, pins)

        half = None
        source = many if many else results
        if "filterdns" in source:
            target = max(1, int(source["filterdns"]["qps"] / 2))
            which = "many-subnet" if many else "17-subnet"
            status(f"phase 6: filterdns at half rate, dnsperf -Q {target} for {args.seconds} s with the latency "
                   f"probe ({which} mix)")
            half = dnsperf_probed(PORTS["filterdns"], many_blob or blob, args.seconds, wd / "dnsperf-half.out",
                                  target, pins and pins[0], fd.pid)
            half["target_qps"] = target
            pr = half["probe"]
            status(f"half rate: {half['qps']:.0f} q/s, lost {half['lost']}, probe p50 {fmt(pr.get('p50_ms'), '.3f')} "
                   f"p99 {fmt(pr.get('p99_ms'), '.3f')} max {fmt(pr.get('max_ms'), '.2f')} ms "
                   f"(lost {pr.get('lost')} of {pr.get('n')})")

        soak_res = None
        if args.soak:
            status(f"phase 7: soak {args.soak:g} min")
            q = int(source["filterdns"]["qps"] / 2) if "filterdns" in source else 10000
            soak_res = soak(fd, many_blob or blob, args.soak, q, wd, pins)

        bundled = None
        if args.bundled_subnets and "filterdns" in args.only:
            bundled = measure_bundled(args, wd, pins)

        if "filterdns" in results and results["filterdns"]["qps"] >= 100000:
            notes.append("filterdns is near dnsperf's own ceiling (~120k q/s on 2 cores): read it as 'at least'")
        status(f"done in {time.monotonic() - t0:.0f} s")
        load_end = os.getloadavg()[0]
        table = report(results, None if many else half, None if many else soak_res, notes)
        if many:
            table += "\n\n" + report11(many, fixed, half, bundled, soak_res, results, n_many, (load1, load_end))
        print("\n" + table, flush=True)
        if args.save:
            out = REPO / "bench" / "results" / "latest.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                   "command": " ".join(["python3", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
                   "dnsperf_flags": " ".join(DNSPERF_FLAGS), "verified": verified, "results": results,
                   "many_subnets": many, "fixed_rate": fixed, "bundled": bundled,
                   "half_rate": half, "soak": soak_res, "notes": notes, "table": table.splitlines()}
            out.write_text(json.dumps(doc, indent=2) + "\n")
            status(f"wrote {out}")
        rc = 0
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        rc = 1
    except (KeyboardInterrupt, Stop) as e:
        print(f"bench: interrupted ({e or 'SIGINT'}): stopping the servers it started", file=sys.stderr)
        rc = 130
    except subprocess.TimeoutExpired as e:
        print(f"bench: a command exceeded its time bound: {e}", file=sys.stderr)
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if fd is not None:
                fd.stop()
        finally:
            refs.stop()
            if args.keep_workdir or rc not in (0, 130):
                status(f"workdir kept: {wd}")
            else:
                shutil.rmtree(wd, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
