"""The control API and metrics endpoint under abuse: idle connections, ambiguous framing,
foreign Host headers (DNS rebinding), deep JSON, a flood of bad requests. Real HTTP on loopback,
raw bytes where a well-behaved client library would refuse to send them."""

from __future__ import annotations

import asyncio
import logging

import pytest

from filterdns.ops.api import HttpServer, MetricsServer, exposure_warning, json_depth_ok
from test_control import TOKEN, Harness

pytestmark = pytest.mark.e2e


async def raw(addr, data: bytes, timeout=5.0) -> tuple[int, bytes]:
    """Send raw bytes, return (status, whole response)."""
    r, w = await asyncio.open_connection(*addr)
    try:
        w.write(data)
        await w.drain()
        out = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    status = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else 0
    return status, out


def get(path="/healthz", host="127.0.0.1", extra=b"", version=b"HTTP/1.1"):
    h = b"Host: " + host.encode() + b"\r\n" if host is not None else b""
    return b"GET " + path.encode() + b" " + version + b"\r\n" + h + extra + b"\r\n"


def post(path, body: bytes, headers=b"", host="127.0.0.1"):
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            + b"Authorization: Bearer " + TOKEN.encode() + b"\r\n" + headers + b"\r\n" + body)


def run_harness(tmp_path, body):
    async def main():
        h = Harness(tmp_path)
        await h.server.start()
        try:
            await body(h, h.server.address)
        finally:
            await h.server.stop()
    asyncio.run(main())


# (id, request bytes, expected status)
BAD = [
    ("cl-superscript-two", post("/regions/fra/feed", b"{}", b"Content-Length: \xc2\xb2\r\n"), 400),
    ("cl-superscript-two-latin1", post("/regions/fra/feed", b"{}", b"Content-Length: \xb2\r\n"), 400),
    ("cl-arabic-digit", post("/regions/fra/feed", b"{}", "Content-Length: ٢\r\n".encode()), 400),
    ("cl-negative", post("/regions/fra/feed", b"{}", b"Content-Length: -2\r\n"), 400),
    ("cl-plus", post("/regions/fra/feed", b"{}", b"Content-Length: +2\r\n"), 400),
    ("cl-conflicting", post("/regions/fra/feed", b"{}", b"Content-Length: 2\r\nContent-Length: 5\r\n"), 400),
    ("cl-duplicate-equal", post("/regions/fra/feed", b"{}", b"Content-Length: 2\r\nContent-Length: 2\r\n"), 400),
    ("cl-list", post("/regions/fra/feed", b"{}", b"Content-Length: 2, 2\r\n"), 400),
    ("transfer-encoding", post("/regions/fra/feed", b"0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"), 501),
    ("host-foreign", get(host="evil.example"), 421),
    ("host-foreign-with-port", get(host="attacker.test:9154"), 421),
    ("host-foreign-ip", get(host="192.0.2.1"), 421),
    ("host-missing-1.1", get(host=None), 400),
    ("host-duplicate", get(extra=b"Host: 127.0.0.1\r\n"), 400),
    ("host-empty", get(host=""), 421),
    ("obs-fold", get(extra=b"X-A: 1\r\n continued\r\n"), 400),
    ("space-before-colon", get(extra=b"X-A : 1\r\n"), 400),
    ("control-char-in-value", get(extra=b"X-A: a\x01b\r\n"), 400),
    ("bare-lf-in-value", get(extra=b"X-A: a\nb\r\n"), 400),
    ("request-line-extra-space", b"GET  /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("request-line-absolute", b"GET http://x/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("version-2", get(version=b"HTTP/2.0"), 400),
    ("method-not-token", b"G(T /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("json-deep-array", post("/regions/fra/feed", b"[" * 50000, b"Content-Length: 50000\r\n"), 400),
    ("json-deep-object", post("/regions/fra/feed", b'{"a":' * 5000 + b"1" + b"}" * 5000,
                              b"Content-Length: %d\r\n" % (5 * 5000 + 1 + 5000)), 400),
    ("body-too-big", post("/regions/fra/feed", b"", b"Content-Length: 70000\r\n"), 413),
]
GOOD = [
    ("host-loopback-port", get(host="127.0.0.1:9154"), 200),
    ("host-localhost", get(host="localhost"), 200),
    ("host-localhost-port", get(host="localhost:9154"), 200),
    ("host-v6-loopback", get(host="[::1]:9154"), 200),
    ("host-missing-1.0", get(host=None, version=b"HTTP/1.0"), 200),
    ("json-depth-32", post("/regions/fra/feed", b'{"values": {"up": false}, "service": "wss"}',
                           b"Content-Length: 43\r\n"), 200),
]


@pytest.mark.parametrize("data,status", [c[1:] for c in BAD + GOOD], ids=[c[0] for c in BAD + GOOD])
def test_request_shapes(tmp_path, caplog, data, status):
    async def body(h, addr):
        with caplog.at_level(logging.INFO, logger="filterdns.ops.api"):
            got, out = await raw(addr, data)
        assert got == status, out[:300]
        assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    run_harness(tmp_path, body)


def test_json_depth_scanner():
    assert json_depth_ok(b"[" * 32 + b"]" * 32)
    assert not json_depth_ok(b"[" * 33)
    assert json_depth_ok(b'"' + b"[" * 100 + b'"')  # brackets inside a string do not count
    assert json_depth_ok(b'["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]')


def test_thousand_idle_connections_do_not_lock_out_calls(tmp_path):
    async def body(h, addr):
        idle = []
        for _ in range(1000):
            idle.append(await asyncio.open_connection(*addr))
            if len(idle) % 200 == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        ok = 0
        for _ in range(20):
            status, _ = await raw(addr, get())
            ok += status == 200
        status, _ = await raw(addr, post("/regions/fra/drain", b'{"reason": "x"}',
                                         b"Content-Length: 15\r\n"))
        assert ok == 20 and status == 200
        assert h.server.http.evicted >= 1000 - 256
        for _, w in idle:
            w.close()
    run_harness(tmp_path, body)


def test_slow_request_gets_408_and_frees_its_slot(tmp_path):
    async def main():
        calls = []

        async def handler(req):
            calls.append(req.path)
            return 200, {}, b"ok"

        srv = HttpServer("127.0.0.1", 0, handler, max_connections=2, read_timeout=0.5)
        await srv.start()
        try:
            r, w = await asyncio.open_connection(*srv.address)
            w.write(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finish
            out = await asyncio.wait_for(r.read(), 5)
            assert out.startswith(b"HTTP/1.1 408 ")
            assert (await raw(srv.address, get("/y")))[0] == 200 and calls == ["/y"]
        finally:
            await srv.stop()
    asyncio.run(main())


def test_a_flood_of_bad_requests_logs_no_tracebacks(tmp_path, caplog):
    async def main():
        n = 0

        async def handler(req):
            nonlocal n
            n += 1
            raise RuntimeError("handler bug")

        srv = HttpServer("127.0.0.1", 0, handler)
        await srv.start()
        try:
            with caplog.at_level(logging.INFO, logger="filterdns.ops.api"):
                for i in range(300):
                    bad = BAD[i % len(BAD)][1]
                    await raw(srv.address, bad)
                for _ in range(50):  # a failing handler: one traceback, then one line each
                    assert (await raw(srv.address, get("/boom")))[0] == 500
        finally:
            await srv.stop()
        assert n >= 50
        # one traceback per kind of failure (two kinds reach this handler), not one per request
        assert sum(1 for r in caplog.records if r.exc_info) == 2
        assert len(caplog.text) < 20_000
    asyncio.run(main())


def test_metrics_endpoint_has_the_same_guards(tmp_path):
    async def main():
        srv = MetricsServer("127.0.0.1", 0, render=lambda: b"x 1\n", allow_hosts=("prom.internal",))
        await srv.start()
        try:
            assert (await raw(srv.address, get("/metrics", host="evil.example")))[0] == 421
            assert (await raw(srv.address, get("/metrics", host="prom.internal:9153")))[0] == 200
            assert (await raw(srv.address, get("/metrics")))[0] == 200
        finally:
            await srv.stop()
    asyncio.run(main())


@pytest.mark.parametrize("host,warns", [("127.0.0.1", False), ("::1", False), ("0.0.0.0", True),
                                         ("::", True), ("192.0.2.10", True)])
def test_non_loopback_bind_warns(host, warns):
    assert (exposure_warning(host) is not None) == warns
