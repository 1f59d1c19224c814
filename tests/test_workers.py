"""serve --workers N: several processes on the same sockets under one supervisor. Drains and
feeds reach every worker, reloads too, metrics are summed, and a dead worker comes back."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import dns.edns
import dns.message
import pytest

from conftest import free_port, start_server
from test_ops_e2e import GB, LONDON, TOKEN, addrs, cli, http

pytestmark = pytest.mark.e2e

N_SOCKETS = 24  # queries from many source ports, so every worker answers some


@pytest.fixture
def wsrv(tmp_path):
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    tok.chmod(0o600)
    mport, cport = free_port(), free_port()
    sp = start_server(tmp_path, "--workers", "2", "--metrics", f"127.0.0.1:{mport}",
                      "--control", f"127.0.0.1:{cport}", "--control-token-file", str(tok))
    sp.mport, sp.cport, sp.token_file = mport, cport, str(tok)
    t0 = time.monotonic()
    while len(worker_pids(sp)) < 2 or "worker 1 ready" not in sp.log() or "worker 0 ready" not in sp.log():
        assert time.monotonic() - t0 < 15, sp.log()
        time.sleep(0.05)
    yield sp
    sp.stop()
    assert worker_pids(sp) == [], "workers outlived the supervisor"


def worker_pids(sp):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == sp.proc.pid:
                out.append(int(d))
    return sorted(out)


def ask_all(sp):
    """The same GB query from many source ports; the set of answers each got."""
    q = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0, options=GB)
    seen = []
    for _ in range(N_SOCKETS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(q.to_wire(), ("127.0.0.1", sp.port))
        seen.append(frozenset(addrs(dns.message.from_wire(s.recv(4096)))))
        s.close()
    return seen


def scrape(sp):
    return urllib.request.urlopen(f"http://127.0.0.1:{sp.mport}/metrics", timeout=5).read().decode()


def test_two_workers_answer(wsrv):
    assert len(worker_pids(wsrv)) == 2
    assert set(ask_all(wsrv)) == {frozenset(LONDON)}


def test_drain_reaches_every_worker_within_a_second(wsrv):
    assert cli(wsrv, "drain", "eu-west-2", "--reason", "w").returncode == 0
    t0 = time.monotonic()
    while any(s & LONDON for s in ask_all(wsrv)):
        assert time.monotonic() - t0 < 1.0
    assert cli(wsrv, "undrain", "eu-west-2").returncode == 0
    t0 = time.monotonic()
    while set(ask_all(wsrv)) != {frozenset(LONDON)}:
        assert time.monotonic() - t0 < 1.0


def test_metrics_are_summed_over_workers(wsrv):
    ask_all(wsrv)
    time.sleep(1.3)  # workers push their counters every second
    m = re.search(r'filterdns_answers_total\{record="wss-primary.example.com.",region="eu-west-2"\} (\S+)',
                  scrape(wsrv))
    assert m and float(m.group(1)) == N_SOCKETS


def test_reload_reaches_every_worker(wsrv):
    code, body = http(wsrv, "POST", "/reload", {})
    assert code == 200, body
    assert wsrv.log().count("[worker 0]: generation 2 in service") == 1 and wsrv.log().count("[worker 1]: generation 2 in service") == 1


def test_dead_worker_is_restarted(wsrv):
    victim = worker_pids(wsrv)[0]
    ask_all(wsrv)
    time.sleep(1.3)
    before = float(re.search(r'filterdns_queries_total\{qtype="A",rcode="NOERROR",transport="udp"\} (\S+)',
                             scrape(wsrv)).group(1))
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    while True:
        pids = worker_pids(wsrv)
        if len(pids) == 2 and victim not in pids and wsrv.log().count("ready (pid") >= 3:
            break
        assert time.monotonic() - t0 < 10, wsrv.log()
        time.sleep(0.1)
    assert "exited with status -9" in wsrv.log()
    assert set(ask_all(wsrv)) == {frozenset(LONDON)}
    time.sleep(1.3)
    after = float(re.search(r'filterdns_queries_total\{qtype="A",rcode="NOERROR",transport="udp"\} (\S+)',
                            scrape(wsrv)).group(1))
    assert after >= before  # the dead worker's counts are kept


def lead_pid(sp) -> int:
    """The pid of worker 0 (the UDP lead), from the supervisor's log: its latest start."""
    return int(re.findall(r"worker 0 ready \(pid (\d+)\)", sp.log())[-1])


def gauge(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_the_lead_worker_alone_reads_udp_at_a_moderate_rate(wsrv):
    """At a moderate rate one worker reads the shared socket and the other stands by: no
    wake-up of a worker that then finds nothing (serve/udp.py, EPOLLEXCLUSIVE and standby)."""
    q = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0, options=GB).to_wire()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(300):
        s.sendto(q, ("127.0.0.1", wsrv.port))
        s.recv(4096)
        time.sleep(0.002)
    s.close()
    time.sleep(1.3)
    text = scrape(wsrv)
    assert gauge(text, "filterdns_udp_sockets_reading") == 1
    assert gauge(text, 'filterdns_udp_wakeups_total\\{result="data"\\}') >= 300
    assert gauge(text, 'filterdns_udp_wakeups_total\\{result="empty"\\}') <= 3


def test_a_standby_worker_answers_while_the_lead_is_stalled(wsrv):
    """SIGSTOP the lead worker: the standby one sees the queue stay non-empty and reads it;
    every query is answered, none later than a fraction of a second."""
    lead = lead_pid(wsrv)
    assert lead in worker_pids(wsrv)
    q = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0, options=GB)
    os.kill(lead, signal.SIGSTOP)
    try:
        worst = 0.0
        for i in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            t0 = time.monotonic()
            s.sendto(q.to_wire(), ("127.0.0.1", wsrv.port))
            assert addrs(dns.message.from_wire(s.recv(4096))) == LONDON, i
            worst = max(worst, time.monotonic() - t0)
            s.close()
            time.sleep(0.01 if i % 10 else 0.7)  # now and then a gap: the standby stops and starts again
        assert worst < 0.25, worst
    finally:
        os.kill(lead, signal.SIGCONT)
    time.sleep(1.3)
    assert gauge(scrape(wsrv), "filterdns_udp_standby_arms_total") >= 2
