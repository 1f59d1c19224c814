"""Every ``filterdns_*`` Prometheus metric, in one module.

The hot path (one call per query from the transports) counts in plain Python ints and dicts;
nothing touches prometheus-client until a scrape, when ``_Collector`` turns a ``snapshot()``
into metric families. Measured on the development machine (Python 3.11, prometheus-client
0.26.0, 2 vCPUs; ``python -m filterdns.ops.metrics`` reruns it)::

    Counter.labels("udp", "A", "NOERROR").inc()    ~970-1000 ns per call
    bound child .inc() (labels bound once)         ~230-250 ns per call
    Histogram.observe()                            ~500-1270 ns per call
    dict[key] = dict.get(key, 0) + 1               ~60 ns per call
    prometheus per query (counter + ECS counter + histogram, with .labels())   ~3.6 µs
    Metrics.query(...) (the same work, plain ints: 2 dict increments, bisect)  ~0.3 µs

So counting in plain ints is about 10x cheaper per query than prometheus-client objects, and
takes no lock. (The machine is shared; figures varied by ~2x between runs, ratios did not.)

Per query ``query`` makes one key of everything it counts (transport, qtype, rcode, ECS, the
time's bucket, zone, family, exact sizes) and increments it once; ``_fold``, at each
``snapshot`` (every second in a worker) or once ``RECENT_MAX`` keys have piled up, adds those
keys to the counters and histograms. That halved the cost of a server's call (with the parsed
query: zone, family and sizes too): about 870 -> 620 ns, and 61,600 -> 55,700 instructions
per query of the bench's 17-subnet mix in-process (callgrind). Likewise a dynamic answer is
one key (record, regions, candidates removed by each filter, client country): ``answer``
notes it, the ``query`` that follows counts it, a fold splits it per region and filter.

Metric names (labels in braces; every label set is bounded by code or by config)::

    filterdns_queries_total{transport,qtype,rcode}       qtype lumped (see QTYPES), rcode by name
    filterdns_requests_total{zone,proto,family}          zone: a served zone or "."; family 1 | 2
    filterdns_request_size_bytes{proto}                  histogram of query sizes (octets)
    filterdns_response_size_bytes{proto}                 histogram of response sizes (octets)
    filterdns_ecs_queries_total{transport}
    filterdns_ecs_formerr_total
    filterdns_request_duration_seconds{transport}        histogram of processing time
    filterdns_malformed_total{transport,reason}          reason in MALFORMED_REASONS
    filterdns_truncated_total
    filterdns_servfail_exceptions_total                  SERVFAIL because of an exception
    filterdns_answers_total{record,region}               record: configured dynamic record
    filterdns_answers_by_country_total{country,region}   client country (ISO code | unknown) -> region
    filterdns_filter_removed_total{filter}
    filterdns_tcp_connections                            gauge
    filterdns_tcp_refused_total
    filterdns_tcp_closed_total{reason}                   reason in TCP_CLOSE_REASONS
    filterdns_rrl_responses_total{class,action}          UDP response rate limiting (dns/rrl.py)
    filterdns_rrl_buckets                                gauge: RRL buckets held
    filterdns_tap_written_total{sink}                    query log / dnstap entries written
    filterdns_tap_dropped_total{sink}                    ... dropped: the sink was too slow
    filterdns_rrl_evictions_total                        RRL buckets dropped (table full)
    filterdns_udp_replay_total{result}                   UDP queries the Replay (serve/_mmsg.c) looked
                                                         up: hit (answered in C) | miss (to Python)
    filterdns_udp_replay_entries                         gauge: replayable answers held, all workers
    filterdns_udp_replay_bytes                           gauge: octets of keys and replies they hold
    filterdns_udp_wakeups_total{result}                  UDP socket wake-ups (serve/udp.py): data | empty
                                                         (another worker had taken the datagrams)
    filterdns_udp_replies_dropped_total                  UDP replies dropped: the send buffer stayed full
    filterdns_udp_standby_arms_total                     times a standby worker started reading a socket
                                                         (the lead worker did not keep up alone)
    filterdns_udp_sockets_reading                        gauge: (worker, UDP socket) pairs reading now
    filterdns_config_generation                          gauge
    filterdns_config_last_reload_success_timestamp_seconds
    filterdns_reloads_total{result}                      result: success | failure
    filterdns_drains_total{cause}, filterdns_undrains_total{cause}
    filterdns_drain_refused_total{cause}                 refused by the safety rule
    filterdns_health_probes_total{region,service,result}
    -- collected at scrape time from the config State and the Inventory --
    filterdns_inventory_generation
    filterdns_region_serving{region,service}             1 when DNS sends clients there
    filterdns_region_up{region,service}                  the effective up value filters read
    filterdns_region_held{region,service}                1 when failing but held in DNS by the safety rule
    filterdns_region_state{region,service,state}         1 for the current state (region_state.REASONS)
    filterdns_region_drained{region,service}
    filterdns_region_health{region,service,state}        state: up | down | unknown (1 = current)
    filterdns_region_feed_up{region,service}             one gauge per feed key (config/schema.py FEED),
    filterdns_region_feed_connections{region,service}    named with its unit; service "" for region level
    filterdns_region_feed_requests_per_second{region,service}
    filterdns_region_feed_loadavg{region,service}
    filterdns_drains_orphaned                            drains of regions/services not in config
    filterdns_state_store_up{kind}                       kind: file | etcd; 0 = serving last known state
    filterdns_state_store_staleness_seconds              since the store was last current (0 when up)
    filterdns_state_store_revision                       revision of the operator state served
    filterdns_fleet_instances                            instances connected (etcd store)
    filterdns_drain_since_timestamp_seconds{region,service,cause}   when each drain began
    filterdns_build_info{version,python,implementation}  always 1
    process_* (cpu, memory, fds, start time)             the whole server: workers added up
    filterdns_process_cpu_seconds_total{process}         per process, with --workers N
    filterdns_process_resident_memory_bytes{process}
    -- DNSSEC (dns/dnssec.py; zone: "example.com.") --
    filterdns_dnssec_do_queries_total{transport}          queries with the DO bit
    filterdns_dnssec_signatures_total{zone}               RRSIGs computed (ECDSA signing operations)
    filterdns_dnssec_signature_cache_hits_total{zone}     RRsets signed from the signature cache
    filterdns_dnssec_signature_cache_misses_total{zone}   RRsets that needed new signatures
    filterdns_dnssec_keys{zone,role,state}                keys loaded; role ksk|zsk, state active|published
    filterdns_dnssec_dnskey_signature_expiry_seconds{zone}  until the served DNSKEY RRSIG expires

Multi-worker aggregation: ``snapshot()`` returns plain, picklable data and ``merge()`` adds
snapshots together; with ``serve --workers N`` the supervisor renders ``/metrics`` through
``merged_renderer`` over the workers' latest snapshots (see filterdns.serve.supervisor).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from filterdns.dns.responder import client_of
from filterdns.dns.wire import name_to_text

#: qtype number -> label; anything else is "other"
QTYPES: Mapping[int, str] = {
    1: "A", 28: "AAAA", 6: "SOA", 2: "NS", 5: "CNAME", 15: "MX", 16: "TXT", 255: "ANY",
    33: "SRV", 12: "PTR", 257: "CAA", 43: "DS", 48: "DNSKEY", 65: "HTTPS", 64: "SVCB",
    252: "AXFR", 251: "IXFR",
}
#: rcode number -> label (RFC 6895 registry, 0-10 and BADVERS); anything else is "other"
RCODES: Mapping[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
}
TRANSPORTS = ("udp", "tcp")
MALFORMED_REASONS = frozenset({"short", "formerr", "qr_set", "other"})
#: upper bounds (seconds) of the processing-time histogram; +Inf is implicit
BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
#: upper bounds (octets) of the request and response size histograms (CoreDNS's)
SIZE_BUCKETS: tuple[float, ...] = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000,
                                   48000, 64000)
#: address family label values (CoreDNS: "1" IPv4, "2" IPv6)
FAMILIES = ("1", "2")
#: message size -> its bucket's index (a table look-up instead of a bisect per query)
_SIZE_IDX = bytes(bisect_left(SIZE_BUCKETS, n) for n in range(65536))
_LAST = len(SIZE_BUCKETS)
ZONE_OTHER = "."  # the zone label of a name outside every served zone (REFUSED)
_ZONE_CACHE_MAX = 10_000
#: distinct keys ``Metrics.query`` holds before folding them into the counters (a snapshot
#: folds them too: every second in a worker); bounds memory whatever the traffic
RECENT_MAX = 4096
#: label sets the UDP Replay counts under (``replay_cell``); beyond them nothing new is replayed
REPLAY_CELLS = 4096
DRAIN_CAUSES = frozenset({"operator", "health"})
#: why the server closed a TCP connection (serve/tcp.py)
TCP_CLOSE_REASONS = frozenset({"idle", "read_deadline", "lifetime", "write_stall", "evicted",
                               "per_source", "framing"})
TAP_SINKS = ("query_log", "dnstap")
RRL_ACTIONS = frozenset({"passed", "dropped", "slipped", "logged", "exempt"})


def _add(d: dict, key: Any, n: int | float = 1) -> None:
    d[key] = d.get(key, 0) + n


class Metrics:
    """Counters for one process. Cheap to call; exported on scrape.

    ``Metrics()`` makes a fresh instance with its own registry (tests); the module-level
    ``metrics`` is the one the server uses. ``bind(get_state, inventory)`` names where the
    per-region gauges come from at scrape time.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._get_state: Callable[[], Any] | None = None
        self._inventory: Any = None
        self._zholder: Any = None
        self._store: Any = None
        self.reset()
        self.registry.register(_Collector(self))

    def reset(self) -> None:
        """Forget every count (tests)."""
        # per query, one increment of one key (see ``query``); ``_fold`` turns those into the
        # counters below at snapshot time, or when RECENT_MAX keys have piled up
        self._recent: dict[tuple, list[int]] = {}
        self._queries: dict[tuple[str, str, str], int] = {}
        self._ecs: dict[str, int] = {}
        # transport -> [bucket counts..., +Inf count] (not cumulative) and sum of seconds
        self._hist: dict[str, list[int]] = {t: [0] * (len(BUCKETS) + 1) for t in TRANSPORTS}
        self._hist_sum: dict[str, float] = {t: 0.0 for t in TRANSPORTS}
        self._requests: dict[tuple[str, str, str], int] = {}  # (zone, family, transport)
        self._sizes: dict[tuple[str, str], list[int]] = {}  # ("request" | "response", transport)
        self._size_sum: dict[tuple[str, str], int] = {}  # the same keys -> octets
        self._malformed: dict[tuple[str, str], int] = {}
        # ((record, regions, removed), country or None) -> answers since the last fold
        self._answered: dict[tuple, list[int]] = {}
        self._answers: dict[tuple[str, str], int] = {}  # (record, region)
        self._removed: dict[str, int] = {}
        self._drains: dict[tuple[str, str], int] = {}  # (action, cause)
        self._probes: dict[tuple[str, str, str], int] = {}
        self._reloads: dict[str, int] = {}
        self._tcp_closed: dict[str, int] = {}
        self._rrl: dict[tuple[str, str], int] = {}
        self._tap: dict[tuple[str, str], int] = {}  # (sink, "written" | "dropped")
        self._zcache: dict[bytes, str] = {}
        self._countries: dict[tuple[str, str], int] = {}  # (client country, region)
        self._pending: tuple | None = None  # (record, regions, removed) of the answer being counted
        self._last_answered: tuple | None = None  # the ``_answered`` key the last ``query`` counted
        self._last_key: tuple = ()  # ... and its ``_recent`` key (``replay_cell`` reads both)
        #: (labels of ``query`` but the time, ``_answered`` key) -> the Replay's cell for them
        self._replay: dict[tuple, Any] = {}
        self._replay_stats: Callable[[], dict] | None = None  # the Replay's stats()
        self._udp_sources: list[Callable[[], tuple]] = []  # BatchedUdp.counts of each socket
        self._geo_of: Any = None  # the State whose geo database _geo is
        self._geo: Any = None
        self._scalars: dict[str, float] = {
            "ecs_formerr": 0, "truncated": 0, "servfail_exception": 0, "tcp_connections": 0,
            "tcp_refused": 0, "config_generation": 0, "last_reload_success": 0,
            "rrl_buckets": 0, "rrl_evictions": 0, "replay_hits": 0, "replay_misses": 0,
            "replay_entries": 0, "replay_bytes": 0, "udp_wakeups": 0, "udp_empty_wakeups": 0, "udp_dropped": 0,
            "udp_arms": 0, "udp_reading": 0,
        }
        # -- DNSSEC: the signers count into these dicts themselves (dnssec_counts) --------------
        self._do: dict[str, int] = {}
        self._dnssec: dict[str, dict[str, float]] = {}  # zone -> signatures, hits, misses, dnskey_expires

    def track_zones(self, holder: Any) -> None:
        """Label requests by the served zone of their name: zones from ``holder.state``,
        looked up once per name and generation (``StateHolder.subscribe`` forgets them)."""
        self._zholder = holder
        self._zcache = {}
        holder.subscribe(lambda old, new: self._zcache.clear())

    def _zone(self, qname_lower: bytes) -> str:
        holder = self._zholder
        zone = holder.state.zones.find(qname_lower) if holder is not None else None
        label = ZONE_OTHER if zone is None else name_to_text(zone.origin.lower)
        if len(self._zcache) >= _ZONE_CACHE_MAX:
            self._zcache.clear()
        self._zcache[qname_lower] = label
        return label

    def bind(self, get_state: Callable[[], Any] | None, inventory: Any, store: Any = None) -> None:
        """Where scrape-time region gauges come from (config ``State``, ``Inventory`` and the
        state store, ``ops/store``)."""
        self._get_state = get_state
        self._inventory = inventory
        if store is not None:
            self._store = store

    # -- hot path (transports) -------------------------------------------------------------
    def query(self, transport: str, qtype: int, rcode: int, ecs: bool, seconds: float,
              query: Any = None, src: Any = None, size_in: int = 0, size_out: int = 0) -> None:
        """One answered query: its transport, qtype, rcode, ECS use and processing time; with
        the parsed ``query``, its source and the sizes in and out also its zone, address
        family and sizes.

        Per query this is one increment of one key holding all of that (the sizes exact, the
        time as its bucket) and one addition to the time's sum; ``_fold`` splits the keys into
        the exported counters and histograms (per key, not per query)."""
        p = self._pending
        if p is not None:  # a dynamic answer (``answer``): counted with the client's country
            self._pending = None
            country = None
            if query is not None:
                # the ECS subnet's country, else the resolver's (the geo database's cached
                # look-up, the one routing made)
                holder = self._zholder
                if holder is not None:
                    st = holder.state
                    if st is not self._geo_of:
                        self._geo_of, self._geo = st, getattr(st, "geo", None)
                    geo = self._geo
                    country = geo.locate(client_of(query, src)).country or "unknown" if geo is not None \
                        else "unknown"
                else:
                    country = "unknown"
            k = self._last_answered = (p, country)
            cell = self._answered.get(k)
            if cell is None:
                cell = self._new_cell(k, self._answered)
            cell[0] += 1
        else:
            self._last_answered = None
        if query is None:
            key = (transport, qtype, rcode, ecs, bisect_left(BUCKETS, seconds))
        else:
            qn = query.qname_lower
            key = (transport, qtype, rcode, ecs, bisect_left(BUCKETS, seconds),
                   self._zcache.get(qn) or self._zone(qn), ":" in src[0] if src else False,
                   size_in, size_out)
        self._last_key = key
        cell = self._recent.get(key)
        if cell is None:
            cell = self._new_cell(key, self._recent)
        cell[0] += 1
        hs = self._hist_sum
        try:
            hs[transport] += seconds
        except KeyError:
            hs[transport] = seconds

    @staticmethod
    def latency_buckets() -> tuple[float, ...]:
        """The upper bounds (seconds) of the processing-time histogram's buckets."""
        return BUCKETS

    def replay_cell(self) -> Any:
        """Where the UDP transport's Replay (``serve/_mmsg.c``) counts the later hits of the
        query ``query`` has just counted (with its parsed query): an ``array('Q')`` of one
        count per latency bucket then the nanoseconds spent, shared by every reply with the
        same labels (the query's ``_recent`` key but the time bucket, and its ``_answered``
        key). ``_harvest`` adds the cells to what ``query`` and ``answer`` count, as if each
        hit had called them. None (the reply is not replayed) once ``REPLAY_CELLS`` label sets
        are held."""
        k = self._last_key
        key = (k[:4] + k[5:], self._last_answered)
        cell = self._replay.get(key)
        if cell is None:
            if len(self._replay) >= REPLAY_CELLS:
                return None
            cell = self._replay[key] = array("Q", bytes(8 * (len(BUCKETS) + 2)))
        return cell

    def replay_source(self, stats: Callable[[], dict]) -> None:
        """Where the UDP Replay's own counters come from (``Replay.stats``)."""
        self._replay_stats = stats

    def udp_source(self, counts: Callable[[], tuple]) -> None:
        """A UDP socket's (wake-ups, empty wake-ups, dropped replies, standby arms, reading now)
        (``BatchedUdp.counts``)."""
        self._udp_sources.append(counts)

    def _harvest(self) -> None:
        """Count what the Replay answered since the last harvest (``replay_cell``), and read the
        UDP sockets' own counters."""
        if self._udp_sources:
            tot = [sum(x) for x in zip(*(f() for f in self._udp_sources), strict=True)]
            sc = self._scalars
            (sc["udp_wakeups"], sc["udp_empty_wakeups"], sc["udp_dropped"], sc["udp_arms"],
             sc["udp_reading"]) = tot
        if self._replay_stats is not None:
            st = self._replay_stats()
            sc = self._scalars
            sc["replay_hits"], sc["replay_misses"], sc["replay_entries"] = st["hits"], st["misses"], st["entries"]
            sc["replay_bytes"] = st.get("bytes", 0)
        if not self._replay:
            return
        from filterdns.serve._mmsg import take  # cells exist only where the module does

        recent, answered, hs = self._recent, self._answered, self._hist_sum
        nb = len(BUCKETS) + 1
        for (rkey, akey), cell in self._replay.items():
            got = take(cell)
            total = sum(got[:nb])
            if not total:
                continue
            head, tail = rkey[:4], rkey[4:]
            for bucket, n in enumerate(got[:nb]):
                if n:
                    k = head + (bucket,) + tail
                    c = recent.get(k)
                    if c is None:
                        c = self._new_cell(k, recent)
                        recent = self._recent  # _new_cell may have folded
                    c[0] += n
            hs[rkey[0]] = hs.get(rkey[0], 0.0) + got[nb] / 1e9
            if akey is not None:
                c = answered.get(akey)
                if c is None:
                    c = self._new_cell(akey, answered)
                    answered = self._answered
                c[0] += total

    def _new_cell(self, key: tuple, table: dict) -> list[int]:
        """The count of a key new to ``_recent`` or ``_answered`` (a one-item list: incrementing
        it hashes the key once, where ``d[key] += 1`` hashes it twice). A table that holds
        RECENT_MAX keys is folded first."""
        if len(table) >= RECENT_MAX:
            if table is self._recent:
                self._fold()
                table = self._recent
            else:
                self._fold_answers()
                table = self._answered
        cell = table[key] = [0]
        return cell

    def _fold(self) -> None:
        """Add the keys ``query`` counted since the last fold to the exported counters."""
        recent, self._recent = self._recent, {}
        queries, ecs_q, hists = self._queries, self._ecs, self._hist
        requests, sizes, size_sum = self._requests, self._sizes, self._size_sum
        for key, (n,) in recent.items():
            transport, qtype, rcode, ecs, bucket = key[:5]
            k = (transport, QTYPES.get(qtype, "other"), RCODES.get(rcode, "other"))
            queries[k] = queries.get(k, 0) + n
            if ecs:
                ecs_q[transport] = ecs_q.get(transport, 0) + n
            h = hists.get(transport)
            if h is None:
                h = hists[transport] = [0] * (len(BUCKETS) + 1)
            h[bucket] += n
            if len(key) == 5:
                continue
            zone, v6, size_in, size_out = key[5:]
            k = (zone, "2" if v6 else "1", transport)
            requests[k] = requests.get(k, 0) + n
            for kind, size in (("request", size_in), ("response", size_out)):
                k = (kind, transport)
                h = sizes.get(k)
                if h is None:
                    h = sizes[k] = [0] * (_LAST + 1)
                    size_sum[k] = 0
                h[_SIZE_IDX[size] if size < 65536 else _LAST] += n
                size_sum[k] += size * n

    def _fold_answers(self) -> None:
        """Add the answers ``query`` counted since the last fold to the exported counters."""
        answered, self._answered = self._answered, {}
        answers, countries, removed_by = self._answers, self._countries, self._removed
        for ((record, regions, removed), country), (n,) in answered.items():
            for region in regions or ("none",):
                k = (record, region)
                answers[k] = answers.get(k, 0) + n
                if country is not None:
                    k = (country, region)
                    countries[k] = countries.get(k, 0) + n
            for name, count in removed:
                if count:
                    removed_by[name] = removed_by.get(name, 0) + count * n

    def malformed(self, transport: str, reason: str) -> None:
        """A packet that got no normal answer; reason in ``MALFORMED_REASONS``."""
        if reason not in MALFORMED_REASONS:
            reason = "other"
        _add(self._malformed, (transport, reason))

    def ecs_formerr(self) -> None:
        self._scalars["ecs_formerr"] += 1

    def truncated(self) -> None:
        self._scalars["truncated"] += 1

    def servfail_exception(self) -> None:
        self._scalars["servfail_exception"] += 1

    def answer(self, record: str, regions: tuple[str, ...],
               removed: tuple[tuple[str, int], ...] = ()) -> None:
        """One answer for a configured dynamic record, by region ("none" when empty), and the
        candidates each filter removed on the way. The ``query`` call that follows for the same
        query counts it (once, with the client's country)."""
        if self._pending is not None:  # the previous answer's query was not counted: count it now
            self._answer_alone()
        self._pending = (record, regions, removed)

    def _answer_alone(self) -> None:
        k = (self._pending, None)
        self._pending = None
        cell = self._answered.get(k)
        if cell is None:
            cell = self._new_cell(k, self._answered)
        cell[0] += 1

    def filter_removed(self, removed: tuple[tuple[str, int], ...]) -> None:
        """Candidates removed, by filter (outside an ``answer``)."""
        r = self._removed
        for name, count in removed:
            if count:
                r[name] = r.get(name, 0) + count

    def tcp_connections(self, delta: int) -> None:
        self._scalars["tcp_connections"] += delta

    def tcp_refused(self) -> None:
        self._scalars["tcp_refused"] += 1

    def tcp_closed(self, reason: str) -> None:
        """The server closed a TCP connection; reason in ``TCP_CLOSE_REASONS``."""
        _add(self._tcp_closed, reason if reason in TCP_CLOSE_REASONS else "other")

    def rrl(self, cls: str, action: str) -> None:
        """One UDP response through RRL: its answer class and what happened to it."""
        key = (cls, action)
        r = self._rrl
        r[key] = r.get(key, 0) + 1

    def tap_written(self, sink: str, n: int) -> None:
        """``n`` entries written by the query log or dnstap (serve/tap.py; its writer thread)."""
        _add(self._tap, (sink, "written"), n)

    def tap_dropped(self, sink: str, n: int = 1) -> None:
        """Entries dropped because the sink's queue was full (the disk or reader too slow) or
        its collector was away."""
        _add(self._tap, (sink, "dropped"), n)

    def rrl_buckets(self, n: int) -> None:
        self._scalars["rrl_buckets"] = n

    def rrl_eviction(self) -> None:
        self._scalars["rrl_evictions"] += 1

    # -- DNSSEC ----------------------------------------------------------------------------------
    def do_query(self, transport: str) -> None:
        """A query with the DO bit (RFC 3225)."""
        d = self._do
        d[transport] = d.get(transport, 0) + 1

    def dnssec_counts(self, zone: str) -> dict:
        """The counters a zone's signer adds to (``signatures``, ``hits``, ``misses``) and where it
        notes when the DNSKEY RRSIG it serves expires (``dnskey_expires``, Unix time); one dict
        per zone, kept across reloads so the counters only grow."""
        c = self._dnssec.get(zone)
        if c is None:
            c = self._dnssec[zone] = {"signatures": 0, "hits": 0, "misses": 0, "dnskey_expires": 0}
        return c

    # -- operations (control, reload, health, drainer) ------------------------------------------
    def reload_result(self, ok: bool, generation: int, when: float) -> None:
        """A reload attempt; on success the generation and time become current."""
        _add(self._reloads, "success" if ok else "failure")
        if ok:
            self._scalars["config_generation"] = generation
            self._scalars["last_reload_success"] = when

    def config_loaded(self, generation: int, when: float) -> None:
        """The initial load at start-up (not counted as a reload)."""
        self._scalars["config_generation"] = generation
        self._scalars["last_reload_success"] = when

    def drain_action(self, action: str, cause: str) -> None:
        """action: "drain" | "undrain" | "refused"; cause: "operator" | "health"."""
        if cause not in DRAIN_CAUSES:
            cause = "other"
        _add(self._drains, (action, cause))

    def health_probe(self, region: str, service: str, ok: bool) -> None:
        _add(self._probes, (region, service, "success" if ok else "failure"))

    # -- export ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Plain copy of every counter (picklable; merge with ``merge``)."""
        self._harvest()
        self._fold()
        self._fold_answers()
        answers, removed = dict(self._answers), dict(self._removed)
        if self._pending is not None:  # answered, its ``query`` call still to come
            record, regions, pending_removed = self._pending
            for region in regions or ("none",):
                _add(answers, (record, region))
            for name, count in pending_removed:
                if count:
                    _add(removed, name, count)
        return {
            "queries": dict(self._queries),
            "ecs": dict(self._ecs),
            "hist": {t: list(v) for t, v in self._hist.items()},
            "hist_sum": dict(self._hist_sum),
            "malformed": dict(self._malformed),
            "answers": answers,
            "removed": removed,
            "drains": dict(self._drains),
            "probes": dict(self._probes),
            "reloads": dict(self._reloads),
            "tcp_closed": dict(self._tcp_closed),
            "rrl": dict(self._rrl),
            "tap": dict(self._tap),
            "requests": dict(self._requests),
            "sizes": {k: list(v) for k, v in self._sizes.items()},
            "size_sum": dict(self._size_sum),
            "countries": dict(self._countries),
            "scalars": dict(self._scalars),
            "do": dict(self._do),
            "dnssec": {(z, k): v for z, c in self._dnssec.items() for k, v in c.items()},
        }

    def render(self) -> bytes:
        """Text exposition of this instance's registry."""
        return generate_latest(self.registry)

    def _regions(self) -> tuple[Any, Any]:
        """(config State, inventory Status) for the scrape-time gauges; either may be None."""
        state = self._get_state() if self._get_state else None
        status = getattr(self._inventory, "status", None)
        return state, status


#: scalars that are gauges (kept, not summed... except open TCP connections which do add up)
# (rrl_buckets: every worker reads the one shared table, so each reports the same value)
_MAX_SCALARS = frozenset({"config_generation", "last_reload_success", "rrl_buckets"})
#: what a process holds now, not a count: an exited worker holds none of it
_HELD_SCALARS = frozenset({"tcp_connections", "replay_entries", "replay_bytes", "udp_reading"})


def retired(snapshot: dict) -> dict:
    """The snapshot of a worker that exited as it is summed from then on: its counters stay,
    what it held (open connections, replay entries, sockets it was reading) is gone."""
    sc = dict(snapshot.get("scalars", {}))
    for k in _HELD_SCALARS:
        if k in sc:
            sc[k] = 0
    return {**snapshot, "scalars": sc}


def merge(snapshots: Iterable[dict]) -> dict:
    """Add snapshots of several workers together (generation and reload time: the maximum)."""
    out: dict = {}
    for snap in snapshots:
        for name, value in snap.items():
            acc = out.setdefault(name, {})
            for k, v in value.items():
                if isinstance(v, list):  # histogram buckets: added bucket by bucket
                    cur = acc.get(k)
                    acc[k] = list(v) if cur is None else [a + b for a, b in zip(cur, v, strict=True)]
                elif name == "scalars" and k in _MAX_SCALARS:
                    acc[k] = max(acc.get(k, 0), v)
                elif name == "dnssec" and k[1] == "dnskey_expires":
                    # the newest signature: an exited worker's snapshot keeps its last, older one
                    # (and a worker re-signs before serving one older than a quarter of validity)
                    acc[k] = max(acc.get(k, 0), v)
                else:
                    acc[k] = acc.get(k, 0) + v
    return out


def _buckets(bounds: tuple, counts: list[int]) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs from per-bucket counts (the last one is +Inf)."""
    cum, out = 0, []
    for bound, c in zip(bounds, counts[:-1], strict=True):
        cum += c
        out.append((repr(float(bound)) if isinstance(bound, float) else str(float(bound)), cum))
    cum += counts[-1]
    out.append(("+Inf", cum))
    return out


def _counter(name: str, doc: str, labels: list[str], values: Mapping) -> CounterMetricFamily:
    """A labelled counter family from {label value or tuple of them: count}, sorted by labels."""
    f = CounterMetricFamily(name, doc, labels=labels)
    for key, v in sorted(values.items()):
        f.add_metric(list(key) if isinstance(key, tuple) else [key], v)
    return f


class _Collector(Collector):
    """Turns a snapshot (and the bound State/Inventory) into metric families on scrape."""

    def __init__(self, metrics: Metrics, snapshot_fn: Callable[[], dict] | None = None):
        self._m = metrics
        self._snapshot_fn = snapshot_fn or metrics.snapshot

    def collect(self):
        s = self._snapshot_fn()
        sc = s["scalars"]

        yield _build_info()

        yield _counter("filterdns_queries", "Queries answered, by transport, qtype and rcode.", ["transport", "qtype", "rcode"], s["queries"])

        yield _counter("filterdns_ecs_queries", "Queries carrying an EDNS Client Subnet option.", ["transport"], s["ecs"])

        yield CounterMetricFamily("filterdns_ecs_formerr", "Queries with an invalid ECS option (FORMERR).",
                                  value=sc["ecs_formerr"])

        h = HistogramMetricFamily("filterdns_request_duration_seconds",
                                  "Processing time from parsed query to rendered answer.",
                                  labels=["transport"])
        for t, counts in sorted(s["hist"].items()):
            h.add_metric([t], _buckets(BUCKETS, counts), s["hist_sum"].get(t, 0.0))
        yield h

        yield _counter("filterdns_requests", "Queries answered, by served zone (\".\" for none), "
                       "address family (1 IPv4, 2 IPv6) and transport.", ["zone", "family", "proto"],
                       s.get("requests", {}))
        for kind in ("request", "response"):
            h = HistogramMetricFamily(f"filterdns_{kind}_size_bytes", f"Size of the {kind}s in octets "
                                      "(DNS message, without the TCP length), by transport.", labels=["proto"])
            for (k, t), counts in sorted(s.get("sizes", {}).items()):
                if k == kind:
                    h.add_metric([t], _buckets(SIZE_BUCKETS, counts), s["size_sum"].get((k, t), 0))
            yield h

        yield _counter("filterdns_malformed", "Packets that could not be answered normally.", ["transport", "reason"], s["malformed"])

        yield CounterMetricFamily("filterdns_truncated", "Answers truncated (TC set) to fit UDP.",
                                  value=sc["truncated"])
        yield CounterMetricFamily("filterdns_servfail_exceptions",
                                  "SERVFAIL answers caused by an unexpected exception.",
                                  value=sc["servfail_exception"])

        yield _counter("filterdns_answers", "Answers for dynamic records, by record and region.", ["record", "region"], s["answers"])

        yield _counter("filterdns_answers_by_country", "Answers for dynamic records, by the client's "
                       "country (ECS subnet, else resolver; ISO code or unknown) and region.",
                       ["country", "region"], s.get("countries", {}))

        yield _counter("filterdns_filter_removed", "Candidate answers removed, by filter.", ["filter"], s["removed"])

        yield GaugeMetricFamily("filterdns_tcp_connections", "Open TCP client connections.",
                                value=sc["tcp_connections"])
        yield CounterMetricFamily("filterdns_tcp_refused", "TCP connections refused (limit reached).",
                                  value=sc["tcp_refused"])
        yield _counter("filterdns_tcp_closed", "TCP connections closed by the server, by reason.",
                       ["reason"], s.get("tcp_closed", {}))
        yield _counter("filterdns_rrl_responses", "UDP responses through response rate limiting, "
                       "by answer class and action.", ["class", "action"], s.get("rrl", {}))
        tap = s.get("tap", {})
        for what, doc in (("written", "Entries written by the query log and dnstap, by sink."),
                          ("dropped", "Query log and dnstap entries dropped because the sink was "
                                      "too slow (its queue was full), by sink.")):
            f = CounterMetricFamily(f"filterdns_tap_{what}", doc, labels=["sink"])
            for sink in TAP_SINKS:
                f.add_metric([sink], tap.get((sink, what), 0))
            yield f
        yield GaugeMetricFamily("filterdns_rrl_buckets", "Response rate limiting buckets held.",
                                value=sc.get("rrl_buckets", 0))
        yield CounterMetricFamily("filterdns_rrl_evictions", "RRL buckets dropped because the table was full.",
                                  value=sc.get("rrl_evictions", 0))
        c = CounterMetricFamily("filterdns_udp_replay", "UDP queries looked up in the answer Replay: hit "
                                "(answered in C from an answer the policy path marked fixed) or miss.",
                                labels=["result"])
        c.add_metric(["hit"], sc.get("replay_hits", 0))
        c.add_metric(["miss"], sc.get("replay_misses", 0))
        yield c
        yield GaugeMetricFamily("filterdns_udp_replay_entries", "Replayable answers held (all workers).",
                                value=sc.get("replay_entries", 0))
        yield GaugeMetricFamily("filterdns_udp_replay_bytes", "Octets of keys and replies the answer Replay "
                                "holds (all workers).", value=sc.get("replay_bytes", 0))
        c = CounterMetricFamily("filterdns_udp_wakeups", "Times a UDP socket woke a worker: data (it found "
                                "datagrams) or empty (another worker had taken them).", labels=["result"])
        c.add_metric(["data"], sc.get("udp_wakeups", 0) - sc.get("udp_empty_wakeups", 0))
        c.add_metric(["empty"], sc.get("udp_empty_wakeups", 0))
        yield c
        yield CounterMetricFamily("filterdns_udp_replies_dropped", "UDP replies dropped because the socket's "
                                  "send buffer stayed full.", value=sc.get("udp_dropped", 0))
        yield CounterMetricFamily("filterdns_udp_standby_arms", "Times a standby worker started reading a "
                                  "UDP socket because the lead worker did not keep up alone.",
                                  value=sc.get("udp_arms", 0))
        yield GaugeMetricFamily("filterdns_udp_sockets_reading", "(worker, UDP socket) pairs reading now.",
                                value=sc.get("udp_reading", 0))
        yield GaugeMetricFamily("filterdns_config_generation", "Generation of the config being served.",
                                value=sc["config_generation"])
        yield GaugeMetricFamily("filterdns_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last successful config load.",
                                value=sc["last_reload_success"])

        f = CounterMetricFamily("filterdns_reloads", "Reload attempts, by result.", labels=["result"])
        for result in ("success", "failure"):
            f.add_metric([result], s["reloads"].get(result, 0))
        yield f

        for action, name, doc in (
            ("drain", "filterdns_drains", "Drains applied, by cause."),
            ("undrain", "filterdns_undrains", "Undrains applied, by cause."),
            ("refused", "filterdns_drain_refused", "Drains refused by the safety rule, by cause."),
        ):
            f = CounterMetricFamily(name, doc, labels=["cause"])
            for cause in sorted(DRAIN_CAUSES):
                f.add_metric([cause], s["drains"].get((action, cause), 0))
            yield f

        yield _counter("filterdns_health_probes", "Health probes, by region, service and result.", ["region", "service", "result"], s["probes"])

        yield from self._region_families()
        yield from self._store_families()
        yield from self._dnssec_families(s)

    def _dnssec_families(self, s: dict):
        import time

        yield _counter("filterdns_dnssec_do_queries", "Queries with the DNSSEC OK (DO) bit.", ["transport"],
                       s.get("do", {}))
        d = s.get("dnssec", {})
        for key, name, doc in (
            ("signatures", "filterdns_dnssec_signatures", "RRSIGs computed (signing operations), by zone."),
            ("hits", "filterdns_dnssec_signature_cache_hits", "RRsets whose RRSIGs came from the signature cache."),
            ("misses", "filterdns_dnssec_signature_cache_misses", "RRsets that needed new RRSIGs."),
        ):
            yield _counter(name, doc, ["zone"], {z: v for (z, k), v in d.items() if k == key})
        now = time.time()
        exp = GaugeMetricFamily("filterdns_dnssec_dnskey_signature_expiry_seconds",
                                "Seconds until the RRSIG of the DNSKEY RRset being served expires, by zone.",
                                labels=["zone"])
        for (z, k), v in sorted(d.items()):
            if k == "dnskey_expires" and v:
                exp.add_metric([z], v - now)
        yield exp
        state, _ = self._m._regions()
        keys = GaugeMetricFamily("filterdns_dnssec_keys", "DNSSEC keys loaded, by zone, role and state.",
                                 labels=["zone", "role", "state"])
        from filterdns.dns.wire import name_to_text

        for origin, zkeys in sorted((getattr(state, "dnssec", None) or {}).items()):
            counts: dict = {}
            for k in getattr(zkeys, "keys", zkeys):
                st = "active" if k.active else "published" if k.published else "inactive"
                _add(counts, ("ksk" if k.sep else "zsk", st))
            for (role, st), n in sorted(counts.items()):
                keys.add_metric([name_to_text(origin), role, st], n)
        yield keys

    def _store_families(self):
        store = self._m._store
        if store is None:
            return
        d = store.describe()
        yield _labelled("filterdns_state_store_up",
                        "1 while the state store is reachable and the state is current, "
                        "0 while answers come from the last known state.",
                        "kind", d["kind"], 1 if d.get("up") else 0)
        yield GaugeMetricFamily("filterdns_state_store_staleness_seconds",
                                "Seconds since the state store was last known to be current (0 when up).",
                                value=float(d.get("stale_seconds") or 0.0))
        yield GaugeMetricFamily("filterdns_state_store_revision",
                                "Revision of the operator state this instance serves.",
                                value=float(d.get("revision") or 0))
        if "instances" in d:
            yield GaugeMetricFamily("filterdns_fleet_instances",
                                    "Instances of the fleet connected to the state store.",
                                    value=float(d["instances"]))

    def _region_families(self):
        state, status = self._m._regions()
        if status is None:
            return
        yield GaugeMetricFamily("filterdns_inventory_generation",
                                "Generation of the runtime status (drains, health, feeds).",
                                value=status.generation)
        from filterdns.routing.region_state import REASONS, snapshot

        serving = GaugeMetricFamily("filterdns_region_serving",
                                    "1 when DNS sends clients to the region's service (region_state).",
                                    labels=["region", "service"])
        up = GaugeMetricFamily("filterdns_region_up", "Effective up value of a region's service (1 up).",
                               labels=["region", "service"])
        held = GaugeMetricFamily("filterdns_region_held",
                                 "1 when the service fails its health check but the safety rule holds it in DNS.",
                                 labels=["region", "service"])
        rstate = GaugeMetricFamily("filterdns_region_state",
                                   "Effective state of a region's service (1 for the current state).",
                                   labels=["region", "service", "state"])
        drained = GaugeMetricFamily("filterdns_region_drained", "1 if the region's service is drained.",
                                    labels=["region", "service"])
        health = GaugeMetricFamily("filterdns_region_health",
                                   "Health-check state of a region's service (1 for the current state).",
                                   labels=["region", "service", "state"])
        feeds = {key: GaugeMetricFamily(name, doc, labels=["region", "service"])
                 for key, (name, doc) in feed_metrics().items()}
        regions = getattr(state, "regions", None) or {}
        snap = snapshot(state, status)
        known: set = set()
        for rname, region in sorted(regions.items()):
            known.add((rname, None))
            for sname in sorted(region.services):
                known.add((rname, sname))
                st = snap.get(rname, sname)
                if st is not None:
                    serving.add_metric([rname, sname], 1 if st.serving else 0)
                    up.add_metric([rname, sname], 1 if st.up else 0)
                    held.add_metric([rname, sname], 1 if st.held else 0)
                    for reason in REASONS:
                        rstate.add_metric([rname, sname, reason], 1 if reason == st.reason else 0)
                drained.add_metric([rname, sname], 1 if status.drained(rname, sname) else 0)
                h = status.health.get((rname, sname))
                cur = "unknown" if h is None else ("up" if h else "down")
                for st in ("up", "down", "unknown"):
                    health.add_metric([rname, sname, st], 1 if st == cur else 0)
        for (rname, sname), values in sorted(status.feeds.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if (rname, sname) not in known:
                continue  # region/service no longer configured: reported as orphaned elsewhere
            for key, v in sorted(values.items()):
                fam = feeds.get(key)
                if fam is not None and isinstance(v, (bool, int, float)) and math.isfinite(float(v)):
                    fam.add_metric([rname, sname or ""], float(v))
        yield serving
        yield up
        yield held
        yield rstate
        yield drained
        yield health
        yield from feeds.values()
        since = GaugeMetricFamily("filterdns_drain_since_timestamp_seconds",
                                  "Unix time a drain began (service \"\" for a whole region), by cause.",
                                  labels=["region", "service", "cause"])
        for (rname, sname), d in sorted(status.drains.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if (rname, sname) in known:
                since.add_metric([rname, sname or "", d.cause], float(d.since))
        yield since
        orphans = sum(1 for key in status.drains if key not in known)
        yield GaugeMetricFamily("filterdns_drains_orphaned",
                                "Drains whose region or service is no longer in the config.",
                                value=orphans)


def feed_metrics() -> dict[str, tuple[str, str]]:
    """Feed key -> (gauge name, help), one gauge per key of the schema's FEED table, named
    with its unit (``requests`` is a rate: ``filterdns_region_feed_requests_per_second``)."""
    from filterdns.config.schema import FEED

    out = {}
    for key, f in FEED.items():
        unit = getattr(f, "unit", None) or ""
        suffix = "_per_second" if unit == "per second" else ""
        what = "1 up, 0 down" if key == "up" else (f"{unit}" if unit else "")
        doc = f"Data-feed value {key}: {f.doc}" + (f" ({what})" if what else "") + \
            " (service \"\" for the region level)."
        out[key] = (f"filterdns_region_feed_{key}{suffix}", doc)
    return out


class _Processes(Collector):
    """``process_*`` of the whole server: one process, or the supervisor and its workers
    added up (CPU, memory and open files summed; start time the earliest; the file limit the
    lowest), plus ``filterdns_process_cpu_seconds_total{process}`` and
    ``filterdns_process_resident_memory_bytes{process}`` for each when there are several.
    CPU of workers that exited stays counted, so the sum never goes back."""

    SUM = ("process_cpu_seconds_total", "process_resident_memory_bytes",
           "process_virtual_memory_bytes", "process_open_fds")

    def __init__(self, pids: Callable[[], list[tuple[str, Any]]]):
        self._pids = pids  # () -> [(process label, pid or "self")]
        self._last_cpu: dict[Any, float] = {}
        self._gone_cpu = 0.0

    def collect(self):
        procs = self._pids()
        per: dict[str, dict[str, float]] = {}
        for label, pid in procs:
            values = {}
            for fam in ProcessCollector(pid=lambda p=pid: p, registry=None).collect():
                for smp in fam.samples:
                    values[smp.name] = smp.value
            if values:
                per[label] = values
        live = {pid for _, pid in procs}
        for pid in [p for p in self._last_cpu if p not in live]:
            self._gone_cpu += self._last_cpu.pop(pid)
        for label, pid in procs:
            if label in per and "process_cpu_seconds_total" in per[label]:
                self._last_cpu[pid] = per[label]["process_cpu_seconds_total"]
        if not per:
            return
        docs = {
            "process_cpu_seconds_total": (CounterMetricFamily, "Total user and system CPU time spent in seconds."),
            "process_resident_memory_bytes": (GaugeMetricFamily, "Resident memory size in bytes."),
            "process_virtual_memory_bytes": (GaugeMetricFamily, "Virtual memory size in bytes."),
            "process_open_fds": (GaugeMetricFamily, "Number of open file descriptors."),
            "process_max_fds": (GaugeMetricFamily, "Maximum number of open file descriptors."),
            "process_start_time_seconds": (GaugeMetricFamily, "Start time of the process since unix epoch in seconds."),
        }
        for name, (cls, doc) in docs.items():
            vals = [v[name] for v in per.values() if name in v]
            if not vals:
                continue
            if name in self.SUM:
                total = sum(vals) + (self._gone_cpu if name == "process_cpu_seconds_total" else 0.0)
            else:
                total = min(vals)
            base = name[:-len("_total")] if cls is CounterMetricFamily else name
            yield cls(base, doc, value=total)
        if len(procs) > 1:
            cpu = CounterMetricFamily("filterdns_process_cpu_seconds", "CPU seconds of each process "
                                      "of the server (supervisor, worker-N).", labels=["process"])
            rss = GaugeMetricFamily("filterdns_process_resident_memory_bytes", "Resident memory of "
                                    "each process of the server.", labels=["process"])
            for label, v in per.items():
                if "process_cpu_seconds_total" in v:
                    cpu.add_metric([label], v["process_cpu_seconds_total"])
                if "process_resident_memory_bytes" in v:
                    rss.add_metric([label], v["process_resident_memory_bytes"])
            yield cpu
            yield rss


def _build_info() -> GaugeMetricFamily:
    """``filterdns_build_info{version,python}`` = 1 (the Prometheus build_info convention)."""
    import platform

    from filterdns import __version__
    g = GaugeMetricFamily("filterdns_build_info", "The running filterdns: version and Python (always 1).",
                          labels=["version", "python", "implementation"])
    g.add_metric([__version__, platform.python_version(), platform.python_implementation()], 1)
    return g


metrics = Metrics()
metrics.registry.register(_Processes(lambda: [("server", "self")]))


def _labelled(name: str, doc: str, label: str, value_label: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=[label])
    g.add_metric([value_label], value)
    return g


def merged_renderer(get_state: Callable[[], Any], inventory: Any,
                    snapshot_fn: Callable[[], dict], store: Any = None,
                    processes: Callable[[], list[tuple[str, Any]]] | None = None) -> Callable[[], bytes]:
    """A /metrics renderer for counters gathered elsewhere (the sum of worker processes'
    snapshots), with the per-region gauges read from ``get_state`` and ``inventory`` and the
    process metrics of ``processes()`` ([(label, pid)], see ``_Processes``)."""
    gauges = Metrics()
    gauges.bind(get_state, inventory, store=store)
    registry = CollectorRegistry()
    registry.register(_Collector(gauges, snapshot_fn=snapshot_fn))
    if processes is not None:
        registry.register(_Processes(processes))
    return lambda: generate_latest(registry)


def render_latest() -> bytes:
    """Text exposition of the server's metrics (for ``/metrics``)."""
    return metrics.render()


def _bench(n: int = 200_000) -> None:  # pragma: no cover - measurement helper
    """Print per-call costs: prometheus-client objects versus plain counting."""
    import timeit
    from types import SimpleNamespace

    from prometheus_client import Counter, Histogram

    reg = CollectorRegistry()
    c = Counter("bench_total", "b", ["transport", "qtype", "rcode"], registry=reg)
    ecs = Counter("bench_ecs_total", "b", ["transport"], registry=reg)
    hist = Histogram("bench_seconds", "b", ["transport"], buckets=BUCKETS, registry=reg)
    child = c.labels("udp", "A", "NOERROR")
    d: dict = {}
    key = ("udp", "A", "NOERROR")
    m = Metrics()
    q = SimpleNamespace(qname_lower=b"\x03www\x07example\x03com\x00")
    src = ("192.0.2.1", 53)

    def dict_inc():
        d[key] = d.get(key, 0) + 1

    def prom_query():
        c.labels("udp", "A", "NOERROR").inc()
        ecs.labels("udp").inc()
        hist.labels("udp").observe(0.0002)

    rows = [
        ("Counter.labels(...).inc()", lambda: c.labels("udp", "A", "NOERROR").inc()),
        ("bound child .inc()", child.inc),
        ("Histogram.observe()", lambda: hist.labels("udp").observe(0.0002)),
        ("dict increment", dict_inc),
        ("prometheus per query (counter+ecs+histogram)", prom_query),
        ("Metrics.query(...)", lambda: m.query("udp", 1, 0, True, 0.0002)),
        ("Metrics.query(..., query, src, sizes)", lambda: m.query("udp", 1, 0, True, 0.0002, q, src, 60, 80)),
    ]
    for name, fn in rows:
        best = min(timeit.repeat(fn, number=n, repeat=3)) / n
        print(f"{name:48s} {best * 1e9:8.0f} ns")


if __name__ == "__main__":  # pragma: no cover
    _bench()
