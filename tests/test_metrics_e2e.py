"""/metrics of a real server, one process and with workers: `promtool check metrics` is clean;
requests by zone/family/proto, request/response sizes (byte-exact) and the process metrics
of the whole server (ops/metrics.py)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import urllib.request

import dns.edns
import dns.message
import dns.query
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, start_server

pytestmark = pytest.mark.e2e

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def scrape(port) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def values(text) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def V(vals, name, **labels):
    return vals.get((name, tuple(sorted(labels.items()))), 0.0)


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_of_a_real_server(tmp_path, workers):
    mport = free_port()
    v6 = _ipv6()
    port6 = free_port()
    extra = ["--listen", f"[::1]:{port6}"] if v6 else []
    sp = start_server(tmp_path, "--metrics", f"127.0.0.1:{mport}", "--workers", workers, *extra)
    try:
        if workers == "2":
            t0 = time.monotonic()
            while "worker 1 ready" not in sp.log() or "worker 0 ready" not in sp.log():
                assert time.monotonic() - t0 < 20, sp.log()
                time.sleep(0.1)
        time.sleep(1.2)  # the workers' start-up counts have reached the supervisor
        before = values(scrape(mport))
        sent_udp = sent_tcp = 0
        queries = [dns.message.make_query("example.com.", "SOA"),
                   dns.message.make_query("wss-primary.example.com.", "A", use_edns=0),
                   dns.message.make_query("example.com.", "DNSKEY", want_dnssec=True),
                   dns.message.make_query("example.org.", "A")]
        got_udp = got_tcp = 0
        for q in queries * 3:
            r = dns.query.udp(q, "127.0.0.1", port=sp.port, timeout=5)
            sent_udp += len(q.to_wire())
            got_udp += len(r.to_wire())
        gb = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0,
                                    options=[dns.edns.ECSOption("81.2.69.0", 24)])  # London
        for _ in range(2):
            r = dns.query.udp(gb, "127.0.0.1", port=sp.port, timeout=5)
            sent_udp += len(gb.to_wire())
            got_udp += len(r.to_wire())
        q = dns.message.make_query("example.com.", "NS")
        r = dns.query.tcp(q, "127.0.0.1", port=sp.port, timeout=5)
        sent_tcp += len(q.to_wire())
        got_tcp += len(r.to_wire())
        if v6:
            q = dns.message.make_query("example.com.", "SOA")
            r = dns.query.udp(q, "::1", port=port6, timeout=5)
            sent_udp += len(q.to_wire())
            got_udp += len(r.to_wire())

        def delta(vals, name, **labels):
            return V(vals, name, **labels) - V(before, name, **labels)

        want = {("filterdns_request_size_bytes_sum", "udp"): sent_udp,
                ("filterdns_request_size_bytes_sum", "tcp"): sent_tcp,
                ("filterdns_response_size_bytes_sum", "udp"): got_udp,
                ("filterdns_response_size_bytes_sum", "tcp"): got_tcp}
        t0 = time.monotonic()
        while True:  # with workers, counts arrive with their next push (every second)
            text = scrape(mport)
            after = values(text)
            got = {k: delta(after, k[0], proto=k[1]) for k in want}
            if v6:
                got["v6"] = delta(after, "filterdns_requests_total", zone="example.com.", family="2", proto="udp")
                want["v6"] = 1
            if got == want:
                break
            assert time.monotonic() - t0 < 20, (got, want)
            time.sleep(0.3)
        # byte-exact sizes (above); counts by zone, family and transport
        assert delta(after, "filterdns_requests_total", zone="example.com.", family="1", proto="udp") == 11
        assert delta(after, "filterdns_requests_total", zone=".", family="1", proto="udp") == 3  # example.org: refused
        assert delta(after, "filterdns_requests_total", zone="example.com.", family="1", proto="tcp") == 1
        assert delta(after, "filterdns_request_size_bytes_count", proto="udp") == 14 + (1 if v6 else 0)
        assert delta(after, "filterdns_request_size_bytes_bucket", proto="udp", le="+Inf") == 14 + (1 if v6 else 0)
        # answers by client country -> region: the ECS subnet's country (London -> eu-west-2),
        # the resolver's (loopback: unknown) without ECS
        assert delta(after, "filterdns_answers_by_country_total", country="GB", region="eu-west-2") == 2
        assert sum(v - V(before, k[0], **dict(k[1])) for k, v in after.items()
                   if k[0] == "filterdns_answers_by_country_total" and dict(k[1])["country"] == "unknown") == 3
        assert delta(after, "filterdns_dnssec_do_queries_total", transport="udp") == 3
        # process metrics of the whole server
        assert V(after, "process_cpu_seconds_total") > 0 and V(after, "process_resident_memory_bytes") > 10e6
        assert V(after, "process_open_fds") > 0 and V(after, "process_start_time_seconds") > 1.7e9
        if workers == "2":
            procs = {dict(k[1])["process"]: v for k, v in after.items() if k[0] == "filterdns_process_resident_memory_bytes"}
            assert set(procs) == {"supervisor", "worker-0", "worker-1"}, procs
            assert V(after, "process_resident_memory_bytes") == sum(procs.values())
        else:
            assert not any(k[0].startswith("filterdns_process_") for k in after)
        # the exposition passes promtool's lint
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr
        assert not re.search(r"^filterdns_region_feed\{", text, re.M)
    finally:
        sp.stop()
