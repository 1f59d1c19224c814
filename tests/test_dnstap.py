"""--dnstap: a real server writes AUTH_QUERY/AUTH_RESPONSE dnstap in Frame Streams; BIND's
dnstap-read (Debian bind9-dnsutils) reads it back (filterdns/dns/dnstap.py, serve/tap.py)."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import time

import dns.edns
import dns.message
import dns.query
import pytest
import yaml

from conftest import free_port, start_server
from filterdns.dns import dnstap

DNSTAP_READ = shutil.which("dnstap-read") or "/usr/bin/dnstap-read"


def _read(path, *flags) -> str:
    out = subprocess.run([DNSTAP_READ, *flags, str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _wait_file(path, timeout=20.0):
    t0 = time.monotonic()
    while not (path.exists() and path.stat().st_size > 0):
        assert time.monotonic() - t0 < timeout, f"{path} not written"
        time.sleep(0.1)


def _query(port, name, rdtype, sport, tcp=False, host="127.0.0.1", subnet=None):
    opts = [dns.edns.ECSOption(subnet, 24)] if subnet else []
    q = dns.message.make_query(name, rdtype, use_edns=0, options=opts)
    if tcp:
        return q, dns.query.tcp(q, host, port=port, timeout=5, source_port=sport)
    for _ in range(5):
        try:
            return q, dns.query.udp(q, host, port=port, timeout=3, source_port=sport)
        except dns.exception.Timeout:
            continue
    raise AssertionError("no answer")


@pytest.mark.unit
@pytest.mark.parametrize("n,encoded", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                       (300, b"\xac\x02"), (2**32, b"\x80\x80\x80\x80\x10")])
def test_varint(n, encoded):
    assert dnstap._varint(n) == encoded


@pytest.mark.unit
def test_control_frames_round_trip():
    ctype, types = dnstap.read_control(dnstap.control_frame(dnstap.READY))
    assert (ctype, types) == (dnstap.READY, [b"protobuf:dnstap.Dnstap"])
    assert dnstap.read_control(dnstap.control_frame(dnstap.STOP, None)) == (dnstap.STOP, [])
    # START with the content type: escape 0, length 34, type 2, field 1 of 22 octets
    assert dnstap.control_frame(dnstap.START) == struct.pack("!IIIII", 0, 34, 2, 1, 22) + b"protobuf:dnstap.Dnstap"


@pytest.mark.e2e
def test_real_server_dnstap_file_read_by_dnstap_read(tmp_path):
    tap = tmp_path / "filterdns.dnstap"
    sp = start_server(tmp_path, "--dnstap", str(tap), "--server-id", "edge-1")
    udp_port, tcp_port = free_port(), free_port()
    try:
        q1, r1 = _query(sp.port, "wss-primary.example.com.", "A", udp_port, subnet="81.2.69.0")
        q2, r2 = _query(sp.port, "example.com.", "SOA", tcp_port, tcp=True)
    finally:
        sp.stop()  # flushes and writes the STOP frame
    _wait_file(tap)
    text = _read(tap)
    lines = [x for x in text.splitlines() if "wss-primary" in x or "example.com/IN/SOA" in x]
    assert any(f" AQ 127.0.0.1:{udp_port} -> 127.0.0.1:{sp.port} UDP " in x and
               x.endswith("wss-primary.example.com/IN/A") for x in lines), text
    assert any(f" AR 127.0.0.1:{udp_port} <- 127.0.0.1:{sp.port} UDP " in x for x in lines), text
    assert any(f" AQ 127.0.0.1:{tcp_port} -> 127.0.0.1:{sp.port} TCP " in x and
               x.endswith("example.com/IN/SOA") for x in lines), text
    assert any(f" AR 127.0.0.1:{tcp_port} <- 127.0.0.1:{sp.port} TCP " in x for x in lines), text

    docs = [d for d in yaml.safe_load_all(_read(tap, "-y")) if d]
    ours = [d for d in docs if d["message"].get("query_port") in (udp_port, tcp_port)]
    assert [d["message"]["type"] for d in ours] == ["AUTH_QUERY", "AUTH_RESPONSE"] * 2, ours
    for d in ours:
        m = d["message"]
        assert d["type"] == "MESSAGE" and d["identity"] == "edge-1" and d["version"].startswith("filterdns ")
        assert m["socket_family"] == "INET" and m["query_address"] == "127.0.0.1"
        assert m["response_address"] == "127.0.0.1" and m["response_port"] == sp.port
        assert m["socket_protocol"] == ("UDP" if m["query_port"] == udp_port else "TCP")
        assert ("query_time" if m["type"] == "AUTH_QUERY" else "response_time") in m
    aq, ar = ours[0]["message"], ours[1]["message"]
    assert aq["query_message_data"]["QUESTION_SECTION"] == ["wss-primary.example.com. IN A"]
    assert aq["query_message_data"]["id"] == q1.id and "CLIENT-SUBNET" in str(aq["query_message_data"])
    answer = ar["response_message_data"]["ANSWER_SECTION"]
    assert sorted(x.split()[-1] for x in answer) == sorted(a.address for a in r1.answer[0])
    assert ar["response_message_data"]["id"] == q1.id and "response_time" in ar
    assert ar["message_size"] == f"{len(r1.to_wire())}b"
    assert ours[3]["message"]["response_message_data"]["ANSWER_SECTION"][0].split()[3] == "SOA"


@pytest.mark.e2e
def test_ipv6_client(tmp_path):
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    tap = tmp_path / "v6.dnstap"
    port = free_port()
    sp = start_server(tmp_path, "--listen", f"[::1]:{port}", "--listen", "127.0.0.1:0", "--dnstap", str(tap),
                      wait=False)
    sport = free_port()
    try:
        t0 = time.monotonic()
        while True:
            try:
                _query(port, "example.com.", "SOA", sport, host="::1")
                break
            except OSError:
                assert time.monotonic() - t0 < 20, sp.log()
                time.sleep(0.2)
    finally:
        sp.stop()
    _wait_file(tap)
    docs = [d for d in yaml.safe_load_all(_read(tap, "-y")) if d]
    m = [d["message"] for d in docs if d["message"].get("query_port") == sport]
    assert m and all(x["socket_family"] == "INET6" and x["query_address"] == "::1"
                     and x["response_address"] == "::1" and x["response_port"] == port for x in m), m


class Collector:
    """A dnstap collector on a Unix socket (the bidirectional Frame Streams handshake); writes
    what it receives as a Frame Streams file for dnstap-read."""

    def __init__(self, path, out, hang_up_after=None):
        self.path, self.out = str(path), out
        self.hang_up_after = hang_up_after  # data frames, then close without FINISH
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(4)
        self.frames: list[bytes] = []
        self.events: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _recv(self, c, n):
        buf = b""
        while len(buf) < n:
            chunk = c.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _run(self):
        c, _ = self.srv.accept()
        c.settimeout(30)
        try:
            while True:
                (n,) = struct.unpack("!I", self._recv(c, 4))
                if n:
                    self.frames.append(self._recv(c, n))
                    if self.hang_up_after is not None and len(self.frames) >= self.hang_up_after:
                        break
                    continue
                (clen,) = struct.unpack("!I", self._recv(c, 4))
                body = self._recv(c, clen)
                ctype, types = dnstap.read_control(struct.pack("!II", 0, clen) + body)
                self.events.append(ctype)
                if ctype == dnstap.READY:
                    assert dnstap.CONTENT_TYPE in types
                    c.sendall(dnstap.control_frame(dnstap.ACCEPT))
                elif ctype == dnstap.STOP:
                    c.sendall(dnstap.control_frame(dnstap.FINISH, None))
                    break
        except EOFError:
            pass
        finally:
            c.close()
            with open(self.out, "wb") as f:
                f.write(dnstap.control_frame(dnstap.START))
                f.write(b"".join(dnstap.data_frame(x) for x in self.frames))
                f.write(dnstap.control_frame(dnstap.STOP, None))


@pytest.mark.e2e
def test_dnstap_to_a_unix_socket_collector(tmp_path):
    sock = tmp_path / "dnstap.sock"
    out = tmp_path / "collected.dnstap"
    col = Collector(sock, out)
    sp = start_server(tmp_path, "--dnstap", f"unix:{sock}")
    sport = free_port()
    try:
        _query(sp.port, "api.example.com.", "AAAA", sport, subnet="81.2.69.0")
    finally:
        sp.stop()
    col.thread.join(20)
    assert col.events == [dnstap.READY, dnstap.START, dnstap.STOP], col.events
    text = _read(out)
    assert f" AQ 127.0.0.1:{sport} -> 127.0.0.1:{sp.port} UDP " in text and "api.example.com/IN/AAAA" in text, text
    assert f" AR 127.0.0.1:{sport} <- 127.0.0.1:{sp.port} UDP " in text, text


@pytest.mark.e2e
def test_each_worker_writes_its_own_file(tmp_path):
    tap = tmp_path / "w.dnstap"
    sp = start_server(tmp_path, "--dnstap", str(tap), "--workers", "2")
    try:
        for _ in range(40):  # from many source ports, so both workers answer some
            _query(sp.port, "example.com.", "SOA", free_port())
    finally:
        sp.stop()
    total = 0
    for i in (0, 1):
        _wait_file(tmp_path / f"w.dnstap.{i}")
        total += _read(tmp_path / f"w.dnstap.{i}").count(" AQ ")
    assert total >= 40 and not tap.exists()


@pytest.mark.e2e
def test_dnstap_reconnects_when_the_collector_comes_back(tmp_path):
    sock = tmp_path / "dnstap.sock"
    first = Collector(sock, tmp_path / "first.dnstap", hang_up_after=2)
    sp = start_server(tmp_path, "--dnstap", f"unix:{sock}")
    try:
        first.thread.join(20)  # it hung up after the start-up probe's query and response
        assert len(first.frames) == 2
        first.srv.close()
        sock.unlink()
        second = Collector(sock, tmp_path / "second.dnstap")
        t0 = time.monotonic()
        while not second.frames:  # the server notices on a write, then retries every 2 s
            _query(sp.port, "example.com.", "SOA", free_port())
            assert time.monotonic() - t0 < 30, sp.log()
            time.sleep(0.2)
        assert "dnstap: connected again" in sp.log()
    finally:
        sp.stop()
    second.thread.join(20)
    assert second.events == [dnstap.READY, dnstap.START, dnstap.STOP]
    assert " AQ 127.0.0.1:" in _read(tmp_path / "second.dnstap")
