"""Response rate limiting (dns/rrl.py): buckets per prefix and answer class, slip, window,
exemptions, log-only, the bounded table; then a real flood against a real server."""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.request

import dns.edns
import dns.flags
import dns.message
import pytest

from conftest import FIXTURES, ask, free_port, start_server
from filterdns.dns.rrl import Rrl, RrlConfig, classify, slipped


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def wire_of(responder, name="test.example.", rdtype="SOA", **kw):
    _, raw = ask(responder, dns.message.make_query(name, rdtype, **kw))
    return raw


def run(rrl, msg, src, n):
    out = {"passed": 0, "slipped": 0, "dropped": 0}
    for _ in range(n):
        r = rrl.limit(msg, src)
        if r is None:
            out["dropped"] += 1
        elif r is msg:
            out["passed"] += 1
        else:
            out["slipped"] += 1
    return out


@pytest.mark.unit
def test_classes(responder):
    assert classify(wire_of(responder)) == "response"
    assert classify(wire_of(responder, "nope.test.example.")) == "nxdomain"
    assert classify(wire_of(responder, "test.example.", "SRV")) == "nodata"
    assert classify(wire_of(responder, "www.sub.test.example.", "A")) == "referral"
    assert classify(wire_of(responder, "example.org.")) == "error"  # REFUSED


@pytest.mark.unit
def test_flood_gets_rate_plus_slips_other_prefix_unaffected(responder):
    clock = Clock()
    rrl = Rrl(RrlConfig.build(rate=5, slip=2), clock=clock)
    msg = wire_of(responder)
    flood = run(rrl, msg, ("192.0.2.7", 53), 100)
    assert flood == {"passed": 5, "slipped": 47, "dropped": 48}
    # the same /24 shares the bucket; the next /24 does not
    assert run(rrl, msg, ("192.0.2.200", 53), 4)["passed"] == 0
    assert run(rrl, msg, ("192.0.3.1", 53), 5)["passed"] == 5
    # a second of flooding later: still limited (in debt), nothing more than the rate passes
    clock.t += 1
    assert run(rrl, msg, ("192.0.2.7", 53), 100)["passed"] == 0


@pytest.mark.unit
def test_window_forgives_after_quiet(responder):
    clock = Clock()
    rrl = Rrl(RrlConfig.build(rate=10, window=3), clock=clock)
    msg = wire_of(responder)
    run(rrl, msg, ("192.0.2.7", 53), 1000)  # deep in debt: capped at window * rate
    clock.t += 2.9
    assert run(rrl, msg, ("192.0.2.7", 53), 1)["passed"] == 0
    clock.t += 1.2  # window seconds of silence and a bit: credit again, at most one second's
    assert run(rrl, msg, ("192.0.2.7", 53), 20)["passed"] == 10


@pytest.mark.unit
def test_names_and_classes_have_their_own_buckets(responder):
    rrl = Rrl(RrlConfig.build(rate=3, class_rates=["nxdomain=1"], slip=0), clock=Clock())
    src = ("198.51.100.1", 53)
    a = wire_of(responder)
    b = wire_of(responder, "test.example.", "NS")
    assert run(rrl, a, src, 10)["passed"] == 3
    assert run(rrl, b, src, 10)["passed"] == 3  # another name/type: its own bucket
    # NXDOMAIN for random names shares one bucket per prefix, at its own rate
    nx = [wire_of(responder, f"r{i}.test.example.") for i in range(10)]
    assert sum(rrl.limit(m, src) is not None for m in nx) == 1


@pytest.mark.unit
def test_ipv6_prefix_56_and_mapped_v4(responder):
    rrl = Rrl(RrlConfig.build(rate=2, slip=0), clock=Clock())
    msg = wire_of(responder)
    assert run(rrl, msg, ("2001:db8:0:ab::1", 53, 0, 0), 5)["passed"] == 2
    assert run(rrl, msg, ("2001:db8:0:ff::9", 53, 0, 0), 5)["passed"] == 0  # same /56
    assert run(rrl, msg, ("2001:db8:0:100::1", 53, 0, 0), 5)["passed"] == 2  # next /56
    assert run(rrl, msg, ("::ffff:203.0.113.5", 53, 0, 0), 5)["passed"] == 2
    assert run(rrl, msg, ("203.0.113.77", 53), 5)["passed"] == 0  # the same /24 as mapped


@pytest.mark.unit
def test_exempt_and_log_only(responder):
    from filterdns.ops.metrics import Metrics

    m = Metrics()
    rrl = Rrl(RrlConfig.build(rate=1, exempt=["10.1.0.0/16"]), metrics=m, clock=Clock())
    msg = wire_of(responder)
    assert run(rrl, msg, ("10.1.2.3", 53), 50)["passed"] == 50
    assert m.snapshot()["rrl"][("response", "exempt")] == 50
    lo = Rrl(RrlConfig.build(rate=1, log_only=True), metrics=m, clock=Clock())
    assert run(lo, msg, ("10.2.2.3", 53), 50)["passed"] == 50
    assert m.snapshot()["rrl"][("response", "logged")] == 49


@pytest.mark.unit
def test_table_is_bounded(responder):
    from filterdns.ops.metrics import Metrics

    m = Metrics()
    rrl = Rrl(RrlConfig.build(rate=5, table_size=1000), metrics=m, clock=Clock())
    msg = wire_of(responder)
    for i in range(5000):
        rrl.limit(msg, (f"10.{i // 256 % 256}.{i % 256}.1", 53))
    assert rrl.buckets() == 1000
    assert m.snapshot()["scalars"]["rrl_evictions"] == 4000


@pytest.mark.unit
def test_workers_share_one_table(responder):
    """Two limiters on two mappings of one shared table (as two workers): one source's
    responses, spread over both, get the rate once, not once per worker."""
    from filterdns.dns.rrl import RrlTable

    clock = Clock()
    cfg = RrlConfig.build(rate=5, slip=0)
    shared = RrlTable.create(cfg.table_size)
    a = Rrl(cfg, clock=clock, table=shared)
    b = Rrl(cfg, clock=clock, table=RrlTable.attach(os.dup(shared.fd), cfg.table_size))
    msg = wire_of(responder)
    passed = 0
    for _ in range(50):
        passed += run(a, msg, ("192.0.2.7", 53), 1)["passed"] + run(b, msg, ("192.0.2.9", 53), 1)["passed"]
    assert passed == 5
    assert a.buckets() == b.buckets() == 1
    clock.t += 20  # the debt forgiven: the next second's worth, again shared
    assert run(b, msg, ("192.0.2.7", 53), 10)["passed"] + run(a, msg, ("192.0.2.7", 53), 10)["passed"] == 5
    # private tables (one each) would have let each through at the rate
    c, d = Rrl(cfg, clock=clock), Rrl(cfg, clock=clock)
    assert run(c, msg, ("192.0.2.7", 53), 10)["passed"] + run(d, msg, ("192.0.2.7", 53), 10)["passed"] == 10
    for r in (a, b):
        r.table.close()


@pytest.mark.unit
def test_slipped_reply_is_truncated_and_keeps_opt_and_ecs(responder):
    msg = wire_of(responder, use_edns=0, options=[dns.edns.ECSOption("81.2.69.0", 24)])
    r = dns.message.from_wire(slipped(msg))
    assert r.flags & dns.flags.TC and not r.answer and not r.authority
    assert r.edns == 0 and r.options[0].address == "81.2.69.0"
    assert r.question[0].name.to_text() == "test.example." and r.rcode() == 0
    r = dns.message.from_wire(slipped(wire_of(responder, "nope.test.example.")))
    assert r.flags & dns.flags.TC and r.edns == -1 and not r.authority and r.rcode() == 3


@pytest.mark.unit
@pytest.mark.parametrize("kw,msg", [
    ({"rate": -1}, "--rrl-rate"),
    ({"slip": 11}, "--rrl-slip"),
    ({"window": 0}, "--rrl-window"),
    ({"ipv4_prefix": 33}, "--rrl-ipv4-prefix"),
    ({"ipv6_prefix": 129}, "--rrl-ipv6-prefix"),
    ({"exempt": ["10.0.0.300/8"]}, "--rrl-exempt"),
    ({"class_rates": ["bogus=1"]}, "unknown class"),
    ({"class_rates": ["nxdomain"]}, "CLASS=N"),
    ({"table_size": 5}, "--rrl-table-size"),
])
def test_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RrlConfig.build(**kw)


def resolve(sock, port, deadline_s=10.0):
    """Ask as a stub resolver does: resend after a second without an answer, until
    ``deadline_s``. A flood can overflow the server's socket buffer, and the kernel then drops
    any datagram, the other client's too; RRL must not be what keeps it unanswered."""
    q = dns.message.make_query("test.example.", "SOA")
    end = time.monotonic() + deadline_s
    sock.settimeout(1.0)
    while time.monotonic() < end:
        sock.sendto(q.to_wire(), ("127.0.0.1", port))
        try:
            while True:
                r = dns.message.from_wire(sock.recv(2048))
                if r.id == q.id:
                    return r
        except socket.timeout:
            continue
    return None


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_flood_against_a_live_server(tmp_path, workers):
    """One source floods at full speed with RRL on: it gets at most its rate of full answers
    for the whole server, however many workers share its datagrams (plus truncated slips),
    while a client in another /24 is answered every time."""
    chains = tmp_path / "chains"
    chains.mkdir()
    (chains / "empty.yaml").write_text("regions: {}\nrecords: {}\n")
    mport = free_port()
    rate = 20
    sp = start_server(tmp_path, "--workers", str(workers), "--rrl-rate", str(rate), "--rrl-slip", "2", "--metrics",
                      f"127.0.0.1:{mport}", zones=FIXTURES / "zones", chains=chains,
                      probe="test.example.")
    try:
        time.sleep(1.1)  # let the probe's bucket refill (the probe came from 127.0.0.1)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.2", 0))
        attacker.setblocking(False)
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.1.1", 0))
        q = dns.message.make_query("test.example.", "SOA")
        q.id = 1
        wire = q.to_wire()
        full = tc = other_ok = other_asked = rounds = 0
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < 3.0:
            rounds += 1
            for _ in range(50):
                try:
                    attacker.sendto(wire, ("127.0.0.1", sp.port))
                    sent += 1
                except BlockingIOError:
                    pass
            while True:
                try:
                    data = attacker.recv(2048)
                except BlockingIOError:
                    break
                r = dns.message.from_wire(data)
                if r.flags & dns.flags.TC:
                    tc += 1
                else:
                    full += 1
            if rounds % 10 == 0:
                other_asked += 1
                r = resolve(other, sp.port)
                other_ok += r is not None and r.rcode() == 0 and bool(r.answer) and not r.flags & dns.flags.TC
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        attacker.settimeout(0.3)
        while True:  # the replies still in flight
            try:
                r = dns.message.from_wire(attacker.recv(2048))
            except socket.timeout:
                break
            tc += bool(r.flags & dns.flags.TC)
            full += not r.flags & dns.flags.TC
        assert sent > 20 * rate * elapsed  # a real flood
        # one table for the server (docs/rrl.md): a flood far above the rate puts the bucket in
        # debt after its one-second burst, so about ``rate`` full answers in all (a table per
        # worker would give each worker's burst: 2 * rate), plus slack for two workers'
        # updates landing at the same instant
        assert 0 < full <= rate * 1.5 + 2 * workers, (full, sent)
        assert tc > sent / 4  # about every second limited response slips
        assert other_ok >= 3 and other_ok == other_asked  # never limited, never truncated
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        dropped = re.search(r'filterdns_rrl_responses_total\{action="dropped",class="response"\} (\S+)', text)
        assert dropped and float(dropped.group(1)) > sent / 4
        assert "rrl: response responses to 127.0.0.0/24" in sp.log()
    finally:
        sp.stop()
