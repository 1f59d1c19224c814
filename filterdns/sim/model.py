"""The simulation: clients, resolvers and regions on a simulated clock; DNS from a real server.

Time is simulated (a heap of events), so ten minutes run in seconds. Every DNS answer comes from
the real filterdns: lookups due within one ``step`` that miss the resolver caches are sent
together (``dnsclient.Batch``), and control-plane events (drains, undrains, feeds, health
verdicts) are pushed to its control API, acknowledged, before the next lookup is sent. So the
server sees the same ordered sequence of queries and state changes in every run with the same
seed, and (seeded, one worker) gives the same answers.

Clients (``client:`` in the scenario):

* start at a uniform random time in ``[0, population.ramp)``, look up the primary record and
  connect;
* hold the websocket until it breaks (a region failure) or, with ``client.session > 0``, for an
  exponentially distributed lifetime, after which they reconnect with a fresh lookup;
* notice a broken connection after a uniform ``[ping_timeout, ping_timeout + ping_interval)``
  delay (at once when the region refuses connections);
* then try the records of ``retry_sequence`` in turn (primary, backup, primary, ...): the first
  try at once, then after a full-jitter exponential backoff, attempt k waiting uniform
  ``[0, min(retry_cap, retry_base * retry_multiplier^(k-1)))`` (AWS "full jitter");
* an attempt fails after ``connect_timeout`` when the region is failed (at once for a refusing
  region), and is rejected after ``reject_delay`` when the region is at ``capacity`` or has
  accepted ``accept_rate`` connections in the current second;
* after ``degraded_after`` failed attempts in a row a client enters degraded mode (API only); it
  keeps trying websockets every uniform ``[0, degraded_retry)`` seconds and leaves degraded mode
  when one connects.

Regions fail and recover on the timeline (``events``); the DNS side only learns of it through
the simulated health checker (``health``: a probe per region every ``interval`` seconds,
``fall`` failures in a row drain the region's service on the server, ``rise`` successes undrain
it), operator drains and undrains on the timeline, and the connection-count feeds
(``feeds``) that ``shed_load`` reads.

Everything observable is appended to the event log (``Model.log``); the report is computed from
that log alone.
"""

from __future__ import annotations

import heapq
import random
import sys
import time
from typing import Callable

# event kinds; CONTROL kinds talk to the server and are processed one at a time, in order
LOOKUP, FAILRES, DETECT, CLOSE, SAMPLE, TIMELINE, PROBE, FEED, REJRES = range(9)
CONTROL = frozenset({TIMELINE, PROBE, FEED})

# log row kinds
ATTEMPT, DISCONNECT, DEGRADED, UNDEGRADED, REGION, CONTROL_ROW, SAMPLE_ROW = (
    "attempt", "disconnect", "degraded", "undegraded", "region", "control", "sample")

OK, FAIL, REJECT, NODNS = "ok", "fail", "reject", "nodns"


class Model:
    def __init__(self, sc, pop, regions: list[str], addr_region: dict[str, str], dns, control,
                 health_defaults: dict[str, tuple[float, int, int]] | None = None,
                 progress: Callable[["Model", float, float], None] | None = None):
        self.sc = sc
        self.pop = pop
        self.regions = list(regions)
        self.ridx = {r: i for i, r in enumerate(self.regions)}
        self.addr_region = {a: self.ridx[r] for a, r in addr_region.items()}
        self.dns = dns
        self.control = control
        self.progress = progress
        self.rng = random.Random(f"{sc.seed}:clients")
        self.health_defaults = health_defaults or {}
        n = len(pop)
        R = len(self.regions)
        self.names = [sc.records["primary"].rstrip(".") + ".", sc.records["backup"].rstrip(".") + "."]
        cl = sc.client
        self.seq = [0 if x == "primary" else 1 for x in cl["retry_sequence"]]
        # clients
        self.region = [-1] * n  # connected region, -1 none
        self.gen = [0] * n
        self.streak = [0] * n
        self.degraded = [False] * n
        # regions
        self.failed: list[str | None] = [None] * R  # None | "timeout" | "refuse"
        self.conns = [0] * R
        self.members: list[set[int]] = [set() for _ in range(R)]
        self.acc_sec = [-1] * R
        self.acc_n = [0] * R
        self.cap = [sc.region_spec(r).capacity for r in self.regions]
        self.rate = [sc.region_spec(r).accept_rate for r in self.regions]
        # resolvers: one dict each, (record, scope, network) -> (expires, region index)
        self.cache: list[dict] = [dict() for _ in pop.resolver_country]
        self.scopes: list[list[int]] = [[], []]
        self.min_ttl = sc.resolvers["min_ttl"]
        self.max_ttl = sc.resolvers["max_ttl"]
        # bookkeeping
        self.heap: list = []
        self._seq = 0
        self.log: list[tuple] = []
        self.degraded_now = 0
        self.lookups = 0
        self.cache_hits = 0
        self.queries = 0
        self.unknown_answers = 0
        self.control_errors: list[str] = []
        self.health_state: dict[int, list] = {}
        self.fed: dict[int, int] = {}

    # ------------------------------------------------------------------ scheduling
    def push(self, t: float, kind: int, a: int = 0, b=0) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, kind, a, b))

    def setup(self) -> None:
        sc = self.sc
        rng = self.rng
        ramp = sc.population["ramp"]
        for c in range(len(self.pop)):
            self.push(rng.uniform(0, ramp) if ramp else 0.0, LOOKUP, c, self.seq[0])
        for i, ev in enumerate(sc.events):
            self.push(ev.at, TIMELINE, i)
        t = 0.0
        while t <= sc.duration:
            self.push(t, SAMPLE)
            t += 1.0
        h = sc.health
        if h["enabled"] and self.control is not None:
            for r in range(len(self.regions)):
                interval, fall, rise = self._health_params(self.regions[r])
                self.health_state[r] = [0, 0, False, interval, fall, rise]  # fails, oks, drained by us
                self.push(rng.uniform(0, interval), PROBE, r)
        if sc.feeds["enabled"] and self.control is not None:
            self.push(0.0, FEED)

    def _health_params(self, region: str) -> tuple[float, int, int]:
        h = self.sc.health
        d = self.health_defaults.get(region, (5.0, 3, 2))
        return (float(h["interval"] if h["interval"] is not None else d[0]),
                int(h["fall"] if h["fall"] is not None else d[1]),
                int(h["rise"] if h["rise"] is not None else d[2]))

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        self.setup()
        sc = self.sc
        heap = self.heap
        end_t = sc.duration
        step = sc.step
        wall0 = time.monotonic()
        next_progress = wall0
        handlers = {LOOKUP: None, FAILRES: self._failres, REJRES: self._failres, DETECT: self._detect,
                    CLOSE: self._close, SAMPLE: self._sample, TIMELINE: self._timeline, PROBE: self._probe,
                    FEED: self._feed}
        while heap and heap[0][0] <= end_t:
            if heap[0][2] in CONTROL:
                ev = heapq.heappop(heap)
                handlers[ev[2]](ev)
                continue
            limit = heap[0][0] + step
            batch = []
            while heap and heap[0][0] < limit and heap[0][0] <= end_t and heap[0][2] not in CONTROL:
                batch.append(heapq.heappop(heap))
            answers = self._resolve_batch(batch)
            for ev in batch:
                if ev[2] == LOOKUP:
                    self._attempt(ev[0], ev[3], ev[4], answers[ev[1]])
                else:
                    handlers[ev[2]](ev)
            if self.progress is not None:
                now = time.monotonic()
                if now >= next_progress:
                    next_progress = now + 0.25
                    self.progress(self, batch[-1][0], now - wall0)
        if self.progress is not None:
            self.progress(self, end_t, time.monotonic() - wall0)

    # ------------------------------------------------------------------ DNS through resolvers
    def _cached(self, res: int, rec: int, sub: int, t: float):
        cache = self.cache[res]
        for s in self.scopes[rec]:
            e = cache.get((rec, s, sub >> (32 - s) if s else 0))
            if e is not None:
                if e[0] > t:
                    return e[1]
        return None

    def _resolve_batch(self, batch: list) -> dict:
        pop = self.pop
        out: dict = {}
        want: dict[tuple, list] = {}
        items: list[tuple[str, int]] = []
        for ev in batch:
            if ev[2] != LOOKUP:
                continue
            t, seq, _, c, rec = ev
            self.lookups += 1
            res, sub = pop.resolver[c], pop.subnet[c]
            hit = self._cached(res, rec, sub, t)
            if hit is not None:
                self.cache_hits += 1
                out[seq] = hit
                continue
            key = (res, rec, sub)
            w = want.get(key)
            if w is None:
                want[key] = w = [len(items), t, []]
                items.append((self.names[rec], sub))
            w[2].append(seq)
        if not items:
            return out
        answers = self.dns.resolve(items)
        self.queries += len(items)
        for (res, rec, sub), (i, t, seqs) in want.items():
            a = answers[i]
            region = -1
            if a.rcode == 0 and a.addresses:
                region = self.addr_region.get(a.addresses[0], -1)
                if region < 0:
                    self.unknown_answers += 1
            if region >= 0:
                ttl = min(max(a.ttl, self.min_ttl), self.max_ttl)
                s = min(a.scope, 32)
                if s not in self.scopes[rec]:
                    self.scopes[rec].append(s)
                    self.scopes[rec].sort(reverse=True)
                self.cache[res][(rec, s, sub >> (32 - s) if s else 0)] = (t + ttl, region)
            for seq in seqs:
                out[seq] = region
        return out

    # ------------------------------------------------------------------ clients
    def _attempt(self, t: float, c: int, rec: int, region: int) -> None:
        cl = self.sc.client
        log = self.log
        if region < 0:
            log.append((t, ATTEMPT, c, "", rec, NODNS))
            self._failed_attempt(t, c, rec)
            return
        mode = self.failed[region]
        if mode is not None:
            log.append((t, ATTEMPT, c, self.regions[region], rec, FAIL))
            delay = cl["connect_timeout"] if mode == "timeout" else 0.05
            self.push(t + delay, FAILRES, c, rec)
            return
        sec = int(t)
        if self.acc_sec[region] != sec:
            self.acc_sec[region] = sec
            self.acc_n[region] = 0
        if self.conns[region] >= self.cap[region] or self.acc_n[region] >= self.rate[region]:
            log.append((t, ATTEMPT, c, self.regions[region], rec, REJECT))
            self.push(t + cl["reject_delay"], REJRES, c, rec)
            return
        self.acc_n[region] += 1
        log.append((t, ATTEMPT, c, self.regions[region], rec, OK))
        self.region[c] = region
        self.conns[region] += 1
        self.members[region].add(c)
        self.streak[c] = 0
        self.gen[c] += 1
        if self.degraded[c]:
            self.degraded[c] = False
            self.degraded_now -= 1
            log.append((t, UNDEGRADED, c, self.regions[region], rec, ""))
        if cl["session"] > 0:
            self.push(t + self.rng.expovariate(1.0 / cl["session"]), CLOSE, c, self.gen[c])

    def _failed_attempt(self, t: float, c: int, rec: int) -> None:
        cl = self.sc.client
        self.streak[c] += 1
        k = self.streak[c]
        if not self.degraded[c] and k >= cl["degraded_after"]:
            self.degraded[c] = True
            self.degraded_now += 1
            self.log.append((t, DEGRADED, c, "", rec, ""))
        if self.degraded[c]:
            delay = self.rng.uniform(0, cl["degraded_retry"])
        else:
            cap = min(cl["retry_cap"], cl["retry_base"] * cl["retry_multiplier"] ** (k - 1))
            delay = self.rng.uniform(0, cap)
        self.push(t + delay, LOOKUP, c, self.seq[k % len(self.seq)])

    def _failres(self, ev) -> None:
        self._failed_attempt(ev[0], ev[3], ev[4])

    def _detect(self, ev) -> None:
        t, _, _, c, gen = ev
        if self.gen[c] != gen:
            return
        self.streak[c] = 0
        self.push(t, LOOKUP, c, self.seq[0])

    def _close(self, ev) -> None:
        t, _, _, c, gen = ev
        if self.gen[c] != gen or self.region[c] < 0:
            return
        r = self.region[c]
        self._drop(c)
        self.log.append((t, DISCONNECT, c, self.regions[r], 0, "session"))
        self.streak[c] = 0
        self.push(t, LOOKUP, c, self.seq[0])

    def _drop(self, c: int) -> None:
        r = self.region[c]
        self.conns[r] -= 1
        self.members[r].discard(c)
        self.region[c] = -1
        self.gen[c] += 1

    # ------------------------------------------------------------------ regions and control
    def _sample(self, ev) -> None:
        t = ev[0]
        for r, name in enumerate(self.regions):
            self.log.append((t, SAMPLE_ROW, -1, name, 0, self.conns[r]))

    def _fail_region(self, t: float, r: int, mode: str) -> None:
        cl = self.sc.client
        self.failed[r] = mode
        name = self.regions[r]
        for c in sorted(self.members[r]):
            self._drop(c)
            self.log.append((t, DISCONNECT, c, name, 0, "failure"))
            if mode == "refuse":
                delay = 0.0
            else:
                delay = self.rng.uniform(cl["ping_timeout"], cl["ping_timeout"] + cl["ping_interval"])
            self.push(t + delay, DETECT, c, self.gen[c])

    def _timeline(self, ev) -> None:
        t = ev[0]
        e = self.sc.events[ev[3]]
        r = self.ridx.get(e.region)
        if e.action == "fail":
            self.log.append((t, REGION, -1, e.region, 0, f"fail ({e.mode})"))
            if r is not None:
                self._fail_region(t, r, e.mode)
        elif e.action == "recover":
            self.log.append((t, REGION, -1, e.region, 0, "recover"))
            if r is not None:
                self.failed[r] = None
        else:
            self._api(t, e.action, e.region, e.service, reason=e.reason or "simulated operator",
                      force=e.force, values=e.values)

    def _api(self, t: float, action: str, region: str, service, reason: str = "", force: bool = False,
             values=None) -> bool:
        from filterdns.sim.backend import ControlError

        if self.control is None:
            self.control_errors.append(f"{t:.1f}s {action} {region}: no control API")
            self.log.append((t, CONTROL_ROW, -1, region, 0, f"{action} skipped: no control API"))
            return False
        try:
            if action == "drain":
                self.control.drain(region, service, reason, force=force)
            elif action == "undrain":
                self.control.undrain(region, service)
            elif action == "feed":
                self.control.feed(region, service, dict(values or {}))
        except (ControlError, OSError) as ex:
            self.control_errors.append(f"{t:.1f}s {action} {region}: {ex}")
            self.log.append((t, CONTROL_ROW, -1, region, 0, f"{action} refused: {ex}"))
            return False
        detail = action if action != "feed" else f"feed {values}"
        self.log.append((t, CONTROL_ROW, -1, region, 0, f"{detail}" + (f" ({reason})" if reason else "")))
        return True

    def _probe(self, ev) -> None:
        t, r = ev[0], ev[3]
        st = self.health_state[r]
        fails, oks, drained, interval, fall, rise = st
        if self.failed[r] is None:
            st[0], st[1] = 0, oks + 1
            if drained and st[1] >= rise:
                if self._api(t, "undrain", self.regions[r], self.sc.service):
                    st[2] = False
        else:
            st[0], st[1] = fails + 1, 0
            if not drained and st[0] >= fall:
                if self._api(t, "drain", self.regions[r], self.sc.service,
                             reason=f"simulated health check: {st[0]} failed probes"):
                    st[2] = True
        self.push(t + interval, PROBE, r)

    def _feed(self, ev) -> None:
        t = ev[0]
        scale = self.sc.feeds["scale"]
        for r, name in enumerate(self.regions):
            v = int(round(self.conns[r] * scale))
            if self.fed.get(r) != v:
                if self._api(t, "feed", name, self.sc.service, values={"connections": v}):
                    self.fed[r] = v
        self.push(t + self.sc.feeds["interval"], FEED)


PROGRESS_FIELDS = 5  # simulated time, duration, connected, degraded, DNS queries


def progress_values(model: Model, t: float) -> tuple[float, ...]:
    return (t, model.sc.duration, sum(model.conns), model.degraded_now, model.queries)


def progress_line(names: list[str], values, wall: float) -> str:
    """One line for every run in progress: ``name: 312/600 s, 19,998 up, 0 degraded | ... | 12.3 s``."""
    parts = []
    queries = 0
    for i, name in enumerate(names):
        t, dur, conn, deg, q = values[i * PROGRESS_FIELDS:(i + 1) * PROGRESS_FIELDS]
        queries += int(q)
        short = name if len(name) <= 20 else name[:19] + "~"
        parts.append(f"{short}: {t:3.0f}/{dur:.0f} s, {int(conn):,} up, {int(deg):,} degraded")
    return " | ".join(parts) + f" | {queries:,} DNS queries, {wall:.1f} s"


_last_line = [0.0]


def stderr_line(line: str, final: bool = False) -> None:
    """The progress line: rewritten in place on a terminal; one line every 5 s into a log."""
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + "\x1b[K")
    else:
        now = time.monotonic()
        if not final and now - _last_line[0] < 5.0:
            return
        _last_line[0] = now
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
