"""TCP under abuse (RFC 7766 §6.2.3): slowloris clients, clients that never read, too many
connections from one source, connections that never end. A real server on loopback; the
attackers use other 127.0.0.x source addresses so the per-source cap is not what saves us."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import urllib.request

import dns.message
import dns.query
import pytest

from conftest import FIXTURES, free_port, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    d = tmp_path_factory.mktemp("chains")
    (d / "empty.yaml").write_text("regions: {}\nrecords: {}\n")
    return d


def serve(tmp_path, chains, *extra):
    mport = free_port()
    sp = start_server(tmp_path, "--metrics", f"127.0.0.1:{mport}", *extra, zones=FIXTURES / "zones",
                      chains=chains, probe="test.example.")
    sp.metrics_port = mport
    return sp


def closed(sp, reason):
    text = urllib.request.urlopen(f"http://127.0.0.1:{sp.metrics_port}/metrics", timeout=5).read().decode()
    m = re.search(r'^filterdns_tcp_closed_total\{reason="%s"\} (\S+)$' % reason, text, re.M)
    return float(m.group(1)) if m else 0.0


def accepted(sp):
    """Connections the server has accepted so far: open + refused + closed by it."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{sp.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for name in ("filterdns_tcp_connections", "filterdns_tcp_refused_total"):
        m = re.search(r"^%s (\S+)$" % name, text, re.M)
        total += float(m.group(1)) if m else 0.0
    closed_per_source = re.search(r'^filterdns_tcp_closed_total\{reason="per_source"\} (\S+)$', text, re.M)
    for m in re.finditer(r'^filterdns_tcp_closed_total\{reason="(\w+)"\} (\S+)$', text, re.M):
        total += float(m.group(2))
    if closed_per_source:  # counted both as refused and as closed
        total -= float(closed_per_source.group(1))
    return total


def wait_for(pred, timeout=15.0):
    """Poll ``pred`` until true; a poll that fails (the metrics endpoint slow to answer on a
    loaded machine) is a no, not an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def connect(port, src="127.0.0.1", rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((src, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def framed(name, rdtype="SOA"):
    w = dns.message.make_query(name, rdtype).to_wire()
    return struct.pack("!H", len(w)) + w


def legit_query(port):
    q = dns.message.make_query("test.example.", "SOA")
    return dns.query.tcp(q, "127.0.0.1", port=port, timeout=3)


def answered_within(port, deadline_s):
    """(answered, attempts): a new client that retries, as a resolver does, until answered
    or ``deadline_s`` has passed."""
    end = time.monotonic() + deadline_s
    attempts = 0
    while time.monotonic() < end:
        attempts += 1
        try:
            r = legit_query(port)
            if r.rcode() == 0 and r.answer:
                return True, attempts
        except Exception:  # noqa: BLE001 - refused, reset or slow: retry
            pass
        time.sleep(0.2)
    return False, attempts


def is_closed(s, timeout=0.05):
    s.settimeout(timeout)
    try:
        return s.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_slowloris_and_non_readers_do_not_lock_out_new_clients(tmp_path, chains):
    """Every slot held by attackers that would stay minutes on their own (the timeouts are
    long here, so only displacing them lets new clients in): each of 40 new clients, retrying
    as a resolver does, is answered within 20 s however loaded the machine is."""
    # defaults otherwise: 256 connections, 32 per source
    sp = serve(tmp_path, chains, "--tcp-idle-timeout", "300", "--tcp-message-timeout", "300",
               "--tcp-max-lifetime", "300")
    socks, stop = [], threading.Event()
    try:
        big = framed("big.test.example.", "TXT") * 200
        for i in range(1000):
            src = f"127.0.{1 + i // 250}.{2 + i % 250}"
            try:
                if i % 2:
                    s = connect(sp.port, src, rcvbuf=4096)
                    s.setblocking(False)
                    try:
                        s.send(big)  # pipelined queries for a big answer, never read
                    except OSError:
                        pass
                else:
                    s = connect(sp.port, src)
                    s.setblocking(False)
                    try:
                        s.send(b"\xff")  # a length of 65k+, then a trickle that never ends it
                    except OSError:
                        pass
                socks.append((i % 2, s))
            except OSError:
                pass

        def trickle():
            while not stop.wait(2.0):
                for kind, s in socks:
                    if not kind:
                        try:
                            s.send(b"\x1c")
                        except OSError:
                            pass

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        # the server has taken every attacker from its accept queue (admitted, refused or
        # displaced by a later one), however loaded the machine is
        assert wait_for(lambda: accepted(sp) >= len(socks), 60), (accepted(sp), len(socks))
        t0 = time.monotonic()
        answered = tries = 0
        for _ in range(40):
            ok, n = answered_within(sp.port, 20)
            tries += n
            if not ok:
                break
            answered += 1
        took = time.monotonic() - t0
        assert answered == 40, f"{answered}/40 new TCP clients answered ({tries} tries, {took:.1f} s)"
        assert closed(sp, "evicted") >= 1  # the slots were all taken by attackers
        assert sp.proc.poll() is None
    finally:
        stop.set()
        for _, s in socks:
            s.close()
        sp.stop()


def test_trickling_bytes_do_not_extend_the_message_deadline(tmp_path, chains):
    sp = serve(tmp_path, chains, "--tcp-message-timeout", "1", "--tcp-idle-timeout", "30")
    try:
        s = connect(sp.port, "127.0.0.7")
        t0 = time.monotonic()
        s.send(b"\x00")
        gone = False
        while time.monotonic() - t0 < 8:
            time.sleep(0.3)
            try:
                s.send(b"\x1c")
            except OSError:
                gone = True
                break
            if is_closed(s):
                gone = True
                break
        assert gone and time.monotonic() - t0 < 4
        assert closed(sp, "read_deadline") == 1
        assert legit_query(sp.port).answer
    finally:
        sp.stop()


def test_idle_timeout_counts_from_the_last_answer(tmp_path, chains):
    sp = serve(tmp_path, chains, "--tcp-idle-timeout", "1")
    try:
        s = connect(sp.port, "127.0.0.8")
        s.sendall(framed("test.example."))
        s.settimeout(3)
        assert len(s.recv(4096)) > 2
        t0 = time.monotonic()
        assert wait_for(lambda: is_closed(s), 6)
        assert 0.8 < time.monotonic() - t0 < 4
        assert closed(sp, "idle") == 1
    finally:
        sp.stop()


def test_per_source_cap(tmp_path, chains):
    sp = serve(tmp_path, chains, "--tcp-max-per-source", "4")
    try:
        mine = [connect(sp.port, "127.0.0.9") for _ in range(4)]
        extra = connect(sp.port, "127.0.0.9")
        assert wait_for(lambda: is_closed(extra), 5)
        for s in mine:
            s.sendall(framed("test.example."))
            s.settimeout(3)
            assert len(s.recv(4096)) > 2  # the first four are served
        assert legit_query(sp.port).answer  # another source is not affected
        assert closed(sp, "per_source") == 1
    finally:
        sp.stop()


def test_lifetime_closes_a_busy_connection(tmp_path, chains):
    sp = serve(tmp_path, chains, "--tcp-max-lifetime", "2")
    try:
        s = connect(sp.port, "127.0.0.10")
        t0 = time.monotonic()
        gone = False
        while time.monotonic() - t0 < 8 and not gone:
            try:
                s.sendall(framed("test.example."))
                s.settimeout(2)
                gone = s.recv(4096) == b""
            except OSError:
                gone = True
            time.sleep(0.2)
        assert gone and 1.8 < time.monotonic() - t0 < 5
        assert closed(sp, "lifetime") == 1
    finally:
        sp.stop()


def test_non_reader_is_paused_then_cut_off(tmp_path, chains):
    sp = serve(tmp_path, chains, "--tcp-idle-timeout", "1", "--tcp-max-unsent", "70000")
    try:
        s = connect(sp.port, "127.0.0.11", rcvbuf=4096)
        s.setblocking(False)
        sent = 0
        payload = framed("big.test.example.", "TXT") * 50
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2:
            try:
                sent += s.send(payload)
            except BlockingIOError:
                time.sleep(0.05)  # the server stopped reading: our send buffer is full
            except OSError:
                break
        # the server held back: far less was taken than 2 s of a loopback firehose
        assert sent < 5_000_000, sent
        assert wait_for(lambda: closed(sp, "write_stall") == 1, 10)
        assert legit_query(sp.port).answer
    finally:
        sp.stop()

