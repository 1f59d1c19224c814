"""The UDP transport's two paths over real sockets: batched (recvmmsg/sendmmsg through the native
``filterdns.serve._mmsg``) and plain (the event loop's datagram transport, the fallback).

Both must give every client its own answer, byte for byte what the other path and TCP give:
many clients at once, ECS with its scope, truncation (TC) at the client's size, malformed
packets in the middle of a batch. The fallback is checked three ways: forced by
FILTERDNS_UDP_PLAIN, chosen when the module cannot be imported, and a wheel built without a C
compiler (which must still install and serve).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile

import dns.edns
import dns.flags
import dns.message
import dns.query
import pytest

from conftest import FIXTURES, ROOT, start_server
from filterdns.serve import udp

pytestmark = pytest.mark.e2e
needs_native = pytest.mark.skipif(not udp.native(), reason="filterdns.serve._mmsg not built here")

# (name, type, ECS subnet or None): routed names, static names, a name with a large answer
QUERIES = [
    ("wss-primary.example.com", "A", "81.2.69.0/24"),
    ("wss-primary.example.com", "AAAA", "133.242.0.0/24"),
    ("api.example.com", "A", "8.8.8.0/24"),
    ("api.example.com", "AAAA", "2a02:8010::/56"),
    ("wss-primary.example.com", "A", None),
    ("example.com", "SOA", None),
    ("example.com", "MX", "80.128.0.0/24"),
    ("nope.example.com", "A", None),
    ("big.test.example", "TXT", None),
]


def make(name, rdtype, subnet, qid, payload=1232):
    opts = []
    if subnet is not None:
        addr, plen = subnet.split("/")
        opts = [dns.edns.ECSOption(addr, int(plen))]
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=payload, options=opts)
    q.id = qid
    return q


@pytest.fixture(scope="module")
def zones(tmp_path_factory):
    d = tmp_path_factory.mktemp("zones")
    shutil.copy(ROOT / "zones" / "example.com.zone", d)
    shutil.copy(FIXTURES / "zones" / "test.example.zone", d)
    return d


def serve(tmp_path, zones, plain: bool, *extra):
    env = {"FILTERDNS_UDP_PLAIN": "1"} if plain else {"FILTERDNS_UDP_PLAIN": ""}
    return start_server(tmp_path, *extra, zones=zones, env=env)


def blast(port, clients=20, per_client=9, family=socket.AF_INET, host="127.0.0.1"):
    """Every client socket sends all its queries before any is read (so the server gets them in
    batches), then reads its answers. {(client, id): (query, response wire)}."""
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(clients)]
    sent = {}
    try:
        for c, s in enumerate(socks):
            s.bind((host, 0))
            s.settimeout(5)
            for i in range(per_client):
                name, t, subnet = QUERIES[(c + i) % len(QUERIES)]
                q = make(name, t, subnet, qid=c * 100 + i)
                s.sendto(q.to_wire(), (host, port))
                sent[(c, q.id)] = q
        got = {}
        deadline = time.monotonic() + 20
        for c, s in enumerate(socks):
            while sum(1 for k in got if k[0] == c) < per_client and time.monotonic() < deadline:
                try:
                    data, _ = s.recvfrom(65535)
                except socket.timeout:
                    break
                qid = int.from_bytes(data[:2], "big")
                got[(c, qid)] = data
        return {k: (q, got.get(k)) for k, q in sent.items()}
    finally:
        for s in socks:
            s.close()


def check_answers(port, results):
    """Each answer matches its own query, and is what the same query gets alone over TCP."""
    assert all(raw is not None for _q, raw in results.values()), \
        f"{sum(raw is None for _q, raw in results.values())} of {len(results)} queries unanswered"
    for (_c, qid), (q, raw) in results.items():
        r = dns.message.from_wire(raw)
        assert r.id == qid and r.question == q.question
        tcp = dns.query.tcp(q, "127.0.0.1", port=port, timeout=5)
        tcp.id = r.id
        if r.flags & dns.flags.TC:
            continue  # compared in test_truncation
        assert r.rcode() == tcp.rcode()
        assert sorted(map(str, r.answer)) == sorted(map(str, tcp.answer)), q.question
        # the ECS option echoes the client's address and source prefix; its scope may differ
        # between the two answers, since each worker widens a network's scope a bounded part
        # per query (routing/geo.py), so compare what the transport must carry unchanged
        assert [(o.address, o.srclen) for o in r.options] == [(o.address, o.srclen) for o in tcp.options]


@pytest.mark.parametrize("plain", [False, True], ids=["batched", "plain"])
def test_many_clients_at_once(tmp_path, zones, plain):
    if not plain and not udp.native():
        pytest.skip("filterdns.serve._mmsg not built here")
    sp = serve(tmp_path, zones, plain)
    try:
        assert ("udp 127.0.0.1:%d: %s" % (sp.port, "plain" if plain else "batched")) in sp.log()
        check_answers(sp.port, blast(sp.port))
    finally:
        sp.stop()


@pytest.mark.parametrize("plain", [False, True], ids=["batched", "plain"])
def test_ecs_scope_and_truncation(tmp_path, zones, plain):
    if not plain and not udp.native():
        pytest.skip("filterdns.serve._mmsg not built here")
    sp = serve(tmp_path, zones, plain)
    try:
        r = dns.query.udp(make("wss-primary.example.com", "A", "81.2.69.0/24", 7), "127.0.0.1",
                          port=sp.port, timeout=5)
        ecs = [o for o in r.options if isinstance(o, dns.edns.ECSOption)]
        assert len(ecs) == 1 and ecs[0].address == "81.2.69.0" and ecs[0].scopelen > 0
        # 600 octets of TXT: over a 512-octet client it is truncated (TC, no answers), over
        # 1232 it fits; over TCP it is whole
        small = dns.query.udp(make("big.test.example", "TXT", None, 8, payload=512), "127.0.0.1",
                              port=sp.port, timeout=5)
        assert small.flags & dns.flags.TC and not small.answer
        plain_q = dns.message.make_query("big.test.example", "TXT")  # no EDNS: 512 too
        assert dns.query.udp(plain_q, "127.0.0.1", port=sp.port, timeout=5).flags & dns.flags.TC
        big = dns.query.udp(make("big.test.example", "TXT", None, 9), "127.0.0.1", port=sp.port, timeout=5)
        assert not big.flags & dns.flags.TC and len(big.answer[0]) == 6
    finally:
        sp.stop()


@needs_native
def test_malformed_packets_inside_a_batch(tmp_path, zones):
    sp = serve(tmp_path, zones, False)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            good = [make("example.com", "SOA", None, i) for i in range(10)]
            for i, q in enumerate(good):
                s.sendto(q.to_wire(), ("127.0.0.1", sp.port))
                s.sendto(b"\x00" * (i % 3) + b"\xff" * 5, ("127.0.0.1", sp.port))  # dropped
            ids = set()
            for _ in range(10):
                ids.add(dns.message.from_wire(s.recv(65535)).id)
            assert ids == set(range(10))
        assert sp.proc.poll() is None
    finally:
        sp.stop()


@needs_native
def test_ipv6_clients(tmp_path, zones):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    sp = start_server(tmp_path, "--listen", "[::1]:0", zones=zones, env={"FILTERDNS_UDP_PLAIN": ""})
    try:
        port6 = int(next(line.split("udp ::1:")[1].split(":")[0] for line in sp.log().splitlines()
                         if "udp ::1:" in line))
        res = blast(port6, clients=5, family=socket.AF_INET6, host="::1")
        assert all(raw is not None for _q, raw in res.values())
        for (_c, qid), (q, raw) in res.items():
            r = dns.message.from_wire(raw)
            assert r.id == qid and r.question == q.question
    finally:
        sp.stop()


# -- the native module itself, over real sockets -------------------------------------------------

@needs_native
def test_native_recv_and_send_batch():
    from filterdns.serve import _mmsg

    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
    try:
        assert _mmsg.recv_batch(srv.fileno(), 8) == []  # nothing waiting: EAGAIN, no exception
        for i, c in enumerate(clients):
            c.bind(("127.0.0.1", 0))
            c.settimeout(5)
            for j in range(3):
                c.sendto(bytes([i, j]) * (j + 1), srv.getsockname())
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 15 and time.monotonic() < deadline:
            got += _mmsg.recv_batch(srv.fileno(), 4)  # at most 4 per call
            time.sleep(0.01)
        assert len(got) == 15
        by_addr = {c.getsockname(): i for i, c in enumerate(clients)}
        for data, addr in got:
            assert data[0] == by_addr[addr]  # each datagram with the address it came from
        sent, err = _mmsg.send_batch(srv.fileno(), [(b"re:" + d, a) for d, a in got])
        assert (sent, err) == (15, 0)
        for i, c in enumerate(clients):
            replies = sorted(c.recv(100) for _ in range(3))
            assert replies == sorted(b"re:" + bytes([i, j]) * (j + 1) for j in range(3))
        with pytest.raises(TypeError):
            _mmsg.send_batch(srv.fileno(), [(b"x", "not a tuple")])
        with pytest.raises(ValueError):
            _mmsg.send_batch(srv.fileno(), [(b"x", ("no.such.host", 53))])
        with pytest.raises(ValueError):
            _mmsg.recv_batch(srv.fileno(), 0)
    finally:
        srv.close()
        for c in clients:
            c.close()


@needs_native
def test_native_serve_answers_each_datagram_to_its_own_address():
    """_mmsg.serve: one round (recvmmsg, respond to each in order, sendmmsg). None sends
    nothing; each reply goes to its query's address; when respond raises, the replies made
    before are sent, the rest of the batch is dropped and the exception propagates."""
    from filterdns.serve import _mmsg

    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    seen = []

    def respond(data, addr):
        seen.append((data, addr))
        return None if data.startswith(b"drop") else b"re:" + data

    try:
        assert _mmsg.serve(srv.fileno(), 8, respond) == (0, None)  # nothing waiting
        # the address text is made in C (no inet_ntop): one, two and three digit octets
        for i, (c, host) in enumerate(zip(clients, ("127.0.0.1", "127.10.99.100", "127.255.0.9",
                                                    "127.1.200.254"), strict=True)):
            c.bind((host, 0))
            c.settimeout(5)
            c.sendto(b"q%d" % i, srv.getsockname())
            c.sendto(b"drop%d" % i, srv.getsockname())
        time.sleep(0.1)
        got, unsent = _mmsg.serve(srv.fileno(), 64, respond)
        assert (got, unsent) == (8, None)
        by_addr = {c.getsockname(): i for i, c in enumerate(clients)}
        assert sorted(by_addr[a] for _, a in seen) == [0, 0, 1, 1, 2, 2, 3, 3]
        assert all(d[-1:] == b"%d" % by_addr[a] for d, a in seen)
        for i, c in enumerate(clients):
            assert c.recv(100) == b"re:q%d" % i
        c = clients[0]

        def boom(data, addr):
            if data == b"x2":
                raise RuntimeError("boom")
            return bytearray(b"ok:" + data)  # any bytes-like reply

        for d in (b"x1", b"x2", b"x3"):
            c.sendto(d, srv.getsockname())
        time.sleep(0.1)
        with pytest.raises(RuntimeError, match="boom"):
            _mmsg.serve(srv.fileno(), 8, boom)
        assert c.recv(100) == b"ok:x1"
        c.settimeout(0.3)
        with pytest.raises(socket.timeout):
            c.recv(100)  # x3 was dropped with the exception
        c.sendto(b"y", srv.getsockname())
        time.sleep(0.1)
        with pytest.raises(TypeError):
            _mmsg.serve(srv.fileno(), 8, lambda data, addr: 5)
        with pytest.raises(ValueError):
            _mmsg.serve(srv.fileno(), 65, respond)
    finally:
        srv.close()
        for c in clients:
            c.close()


@needs_native
def test_replies_queue_behind_waiting_ones():
    """While earlier replies wait for the socket to be writable, new replies queue behind them
    (in order) and go out when it is."""
    from collections import deque

    class Loop:  # the event loop's reader/writer registration, recorded
        def __init__(self):
            self.writer = None

        def add_reader(self, fd, cb):
            pass

        def remove_reader(self, fd):
            pass

        def add_writer(self, fd, cb):
            self.writer = cb

        def remove_writer(self, fd):
            self.writer = None

        def call_soon(self, cb, *args):  # the EPOLLEXCLUSIVE step: not with this loop
            pass

    class Echo:
        def respond_udp(self, data, addr):
            return b"re:" + data

        def replay_for(self, factory):  # no Replay: every datagram reaches respond_udp
            return None

    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.settimeout(5)
    loop = Loop()
    u = udp.BatchedUdp(srv, Echo(), loop=loop)
    try:
        u.pending = deque([(b"earlier", c.getsockname())])
        for d in (b"a", b"b"):
            c.sendto(d, srv.getsockname())
        time.sleep(0.1)
        u._readable()
        assert list(u.pending) == [(b"earlier", c.getsockname()), (b"re:a", c.getsockname()),
                                   (b"re:b", c.getsockname())]
        loop.add_writer(u.fd, u._writable)
        loop.writer()
        assert not u.pending and loop.writer is None
        assert [c.recv(100) for _ in range(3)] == [b"earlier", b"re:a", b"re:b"]
    finally:
        u.close()
        c.close()


def test_fallback_when_the_module_cannot_be_imported():
    code = ("import sys; sys.modules['filterdns.serve._mmsg'] = None\n"
            "from filterdns.serve import udp\n"
            "assert not udp.native() and udp.mode() == 'plain', udp.mode()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FILTERDNS_UDP_PLAIN="")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to compare")
def test_wheel_builds_with_and_without_a_compiler(tmp_path):
    """`pip install .` builds the extension where a compiler is, and still succeeds without."""
    def wheel(out, **env):
        e = dict(os.environ, **env)
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(out), str(ROOT)], env=e, capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        (whl,) = out.glob("filterdns-*.whl")
        return [n for n in zipfile.ZipFile(whl).namelist() if "_mmsg" in n]

    shutil.rmtree(ROOT / "build", ignore_errors=True)  # no object files left from another build
    assert any(n.endswith(".so") for n in wheel(tmp_path / "with"))
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert not any(n.endswith(".so") for n in wheel(tmp_path / "without", CC="/bin/false"))


def _watch(fd: int) -> list[int]:
    """The events mask each epoll of this process registers for ``fd`` (/proc/self/fdinfo)."""
    out = []
    for epfd in udp._epolls_watching(fd):
        with open(f"/proc/self/fdinfo/{epfd}") as f:
            for line in f:
                parts = line.split()
                if parts[:2] == ["tfd:", str(fd)]:
                    out.append(int(parts[3], 16) & ~0x18)  # less EPOLLERR|EPOLLHUP, always set
    return out


@needs_native
@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_the_socket_is_exclusive_in_the_loops_epoll_and_standby_reads_only_when_needed(loop_kind):
    """The reader is registered with EPOLLEXCLUSIVE in the running loop's own epoll (uvloop's
    or asyncio's), a waiting writer uses another descriptor, a standby socket is in no epoll
    until its queue stays non-empty, then reads, and leaves the epoll once the queue is quiet."""
    import asyncio
    import select

    class Echo:
        def respond_udp(self, data, addr):
            return b"re:" + data

        def replay_for(self, factory):
            return None

    async def reply(c, want: bytes, why: str) -> None:  # within a second
        for _ in range(100):
            await asyncio.sleep(0.01)
            try:
                assert c.recv(100) == want
                return
            except BlockingIOError:
                continue
        raise AssertionError(why)

    async def main():
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", 0))
        lead = udp.BatchedUdp(srv, Echo())
        for _ in range(50):
            await asyncio.sleep(0.01)
            if lead.exclusive is not None:
                break
        assert lead.exclusive is True
        assert _watch(lead.fd) == [select.EPOLLIN | select.EPOLLEXCLUSIVE]
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind(("127.0.0.1", 0))
        c.setblocking(False)
        c.sendto(b"q", srv.getsockname())
        await reply(c, b"re:q", "no reply from the lead socket")
        lead._queue([(b"late", c.getsockname())], 0)  # a reply waiting: the writer on the duplicate
        await asyncio.sleep(0.05)
        assert c.recv(100) == b"late"
        assert _watch(lead.fd) == [select.EPOLLIN | select.EPOLLEXCLUSIVE]
        lead.close()

        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", 0))
        sb = udp.BatchedUdp(srv, Echo(), standby=True)
        await asyncio.sleep(0.1)
        assert not sb.armed and _watch(sb.fd) == []
        c.sendto(b"w", srv.getsockname())  # nobody else reads: the queue stays non-empty
        await reply(c, b"re:w", "the standby socket never read")
        assert sb.armed and sb.arms == 1
        await asyncio.sleep(udp.TICK * (udp.QUIET_TICKS + 20))
        assert not sb.armed and _watch(sb.fd) == []
        sb.close()
        c.close()

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
