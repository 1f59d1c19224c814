"""The query log (--query-log, --query-log-sample): JSON lines of what each sampled query got,
written off the query path; a slow sink drops entries and counts them (serve/tap.py)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request

import dns.edns
import dns.message
import dns.query
import pytest

from conftest import free_port, start_server
from filterdns.ops.metrics import Metrics
from filterdns.serve.tap import Sink


def _ask(port, name, rdtype="A", subnet=None, tcp=False):
    opts = [dns.edns.ECSOption(subnet, 24)] if subnet else []
    q = dns.message.make_query(name, rdtype, use_edns=0, options=opts)
    fn = dns.query.tcp if tcp else dns.query.udp
    for _ in range(5):
        try:
            return fn(q, "127.0.0.1", port=port, timeout=3)
        except dns.exception.Timeout:
            continue
    raise AssertionError("no answer")


def _lines(path, done, timeout=20.0):
    """The log's lines once ``done(lines)`` (each process's writer flushes on its own)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(x) for x in text.splitlines()]
        if done(lines):
            return lines
        time.sleep(0.1)
    raise AssertionError(f"not all expected lines in {path}:\n{text}")


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_query_logged_with_its_answer(tmp_path, workers):
    qlog = tmp_path / "queries.jsonl"
    sp = start_server(tmp_path, "--query-log", str(qlog), "--query-log-sample", "1", "--workers", workers)
    try:
        subnets = [f"81.2.{i}.0" for i in range(60, 90)]  # many distinct /24s (81.2.69.0: London)
        sent = {}
        for s in subnets:
            r = _ask(sp.port, "wss-primary.example.com.", subnet=s)
            (ecs,) = [o for o in r.options if o.otype == dns.edns.ECS]
            sent[f"{s}/24"] = (sorted(a.address for a in r.answer[0]), ecs.scopelen)
        _ask(sp.port, "example.com.", "SOA", tcp=True)
        _ask(sp.port, "nope.example.com.", "A")
        lines = _lines(qlog, lambda ls: sum(1 for x in ls if x["ecs"]) == len(subnets)
                       and any(x["transport"] == "tcp" for x in ls)
                       and any(x["name"] == "nope.example.com." for x in ls))
        keys = {"time", "client", "port", "transport", "ecs", "name", "type", "rcode", "region",
                "scope", "addresses", "latency_ms", "size"}
        assert all(set(x) == keys for x in lines), lines[0]
        routed = [x for x in lines if x["ecs"]]
        assert sorted(x["ecs"] for x in routed) == sorted(f"{s}/24" for s in subnets)
        for x in routed:
            assert x["name"] == "wss-primary.example.com." and x["type"] == "A" and x["rcode"] == "NOERROR"
            assert (sorted(x["addresses"]), x["scope"]) == sent[x["ecs"]]  # what the client got
            assert len(x["region"]) == 1 and (x["ecs"] != "81.2.69.0/24" or x["region"] == ["eu-west-2"])
            assert x["client"] == "127.0.0.1" and x["transport"] == "udp" and x["latency_ms"] >= 0
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", x["time"])
        soa = [x for x in lines if x["type"] == "SOA" and x["transport"] == "tcp"]
        assert soa and soa[0]["region"] == [] and soa[0]["scope"] is None and soa[0]["ecs"] is None
        assert [x["rcode"] for x in lines if x["name"] == "nope.example.com."] == ["NXDOMAIN"]
    finally:
        sp.stop()


@pytest.mark.e2e
def test_sampling_writes_about_that_share(tmp_path):
    qlog = tmp_path / "queries.jsonl"
    sp = start_server(tmp_path, "--query-log", str(qlog), "--query-log-sample", "0.25")
    try:
        for _ in range(400):
            _ask(sp.port, "example.com.", "SOA")
        time.sleep(1.5)  # the writer thread wakes at least every 0.5 s
        n = len(qlog.read_text().splitlines()) if qlog.exists() else 0
        assert 40 <= n <= 170, n  # 100 expected; the bounds are ~6 standard deviations away
    finally:
        sp.stop()


@pytest.mark.e2e
def test_query_log_to_stdout(tmp_path):
    sp = start_server(tmp_path, "--query-log", "-", "--query-log-sample", "1")
    try:
        _ask(sp.port, "api.example.com.", "AAAA", subnet="81.2.69.0")
        t0 = time.monotonic()
        while '"name":"api.example.com."' not in sp.log():
            assert time.monotonic() - t0 < 20, sp.log()
            time.sleep(0.1)
        line = next(x for x in sp.log().splitlines() if '"name":"api.example.com."' in x)
        assert json.loads(line)["type"] == "AAAA"
    finally:
        sp.stop()


@pytest.mark.unit
def test_sink_drops_and_counts_when_the_writer_is_stuck():
    entered, release = threading.Event(), threading.Event()
    out = []

    class Slow:
        def write(self, data):
            entered.set()
            release.wait(20)
            out.append(data)

        def flush(self):
            pass

        def close(self):
            pass

    m = Metrics()
    sink = Sink("query_log", Slow, m, capacity=10)
    sink.put(b"first\n")
    assert entered.wait(10)  # the writer holds "first" and is stuck in write()
    t0 = time.perf_counter()
    for _ in range(25):
        sink.put(b"x\n")
    put_seconds = time.perf_counter() - t0
    assert sink.dropped == 15  # 10 queued, the rest dropped: put never waits
    assert put_seconds < 1.0
    release.set()
    sink.close()
    assert b"".join(out).count(b"\n") == 11
    snap = m.snapshot()["tap"]
    assert snap[("query_log", "dropped")] == 15 and snap[("query_log", "written")] == 11


@pytest.mark.e2e
def test_a_stuck_query_log_reader_costs_drops_not_answers(tmp_path):
    fifo = tmp_path / "qlog.fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that never reads: the pipe fills
    mport = free_port()
    sp = start_server(tmp_path, "--query-log", str(fifo), "--query-log-sample", "1",
                      "--metrics", f"127.0.0.1:{mport}", env={"FILTERDNS_TEST_TAP_QUEUE": "50"})
    try:
        for _ in range(600):  # ~300 octets a line: 600 lines are well over a 64 KiB pipe + 50
            assert _ask(sp.port, "example.com.", "SOA").answer
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        dropped = float(re.search(r'filterdns_tap_dropped_total\{sink="query_log"\} (\S+)', text).group(1))
        written = float(re.search(r'filterdns_tap_written_total\{sink="query_log"\} (\S+)', text).group(1))
        assert dropped > 0 and written > 0 and dropped + written <= 601, (dropped, written)
    finally:
        sp.stop()
        os.close(rfd)


@pytest.mark.unit
@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_bad_sample_is_refused(value, capsys):
    from filterdns.cli import main
    assert main(["serve", "--query-log", "-", "--query-log-sample", value]) == 2
    assert "--query-log-sample" in capsys.readouterr().err
