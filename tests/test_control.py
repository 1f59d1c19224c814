"""Control API over real HTTP on loopback: auth, validation, drains, feeds, reload, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from types import MappingProxyType, SimpleNamespace

import pytest

from filterdns.ops.api import ControlServer, MetricsServer, TokenError, load_token
from filterdns.routing.inventory import Inventory, Region, Service
from filterdns.ops.metrics import Metrics
from filterdns.ops.controller import Controller

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-token-0123456789"


def make_state(generation=1, names=("fra", "ams")):
    regions = {}
    for i, name in enumerate(names):
        svcs = {s: Service(s, v4=(f"192.0.2.{i * 10 + j + 1}",)) for j, s in enumerate(("wss", "api"))}
        regions[name] = Region(name, services=MappingProxyType(svcs))
    return SimpleNamespace(generation=generation, regions=MappingProxyType(regions), records={}, loaded_at=0.0)


def request(addr, method, path, body=None, token=None, raw=None, headers=None):
    """Blocking HTTP call (run in a thread); returns (status, parsed JSON or text)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{addr[0]}:{addr[1]}{path}", data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            status, text, ctype = r.status, r.read().decode(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, text, ctype = e.code, e.read().decode(), e.headers.get("Content-Type", "")
    return status, (json.loads(text) if ctype.startswith("application/json") else text)


class Harness:
    def __init__(self, tmp_path, token=TOKEN, reload_result=(True, [])):
        self.holder = SimpleNamespace(state=make_state())
        self.inventory = Inventory()
        self.metrics = Metrics()
        self.metrics.bind(lambda: self.holder.state, self.inventory)
        self.is_ready = False
        self.reloads = 0

        async def reload(cause="api"):
            self.reloads += 1
            if reload_result[0]:
                self.holder.state = make_state(generation=self.holder.state.generation + 1)
            return reload_result

        self.controller = Controller(lambda: self.holder.state, self.inventory, reload, tmp_path,
                                     ready=lambda: self.is_ready, metrics=self.metrics)
        self.server = ControlServer(self.controller, "127.0.0.1", 0, token=token,
                                    render_metrics=self.metrics.render)

    async def call(self, *a, **kw):
        return await asyncio.to_thread(request, self.server.address, *a, **kw)


def run(tmp_path, body, **kw):
    async def main():
        h = Harness(tmp_path, **kw)
        await h.server.start()
        try:
            await body(h)
        finally:
            await h.server.stop()
    asyncio.run(main())


def test_health_ready_and_regions(tmp_path):
    async def body(h):
        assert await h.call("GET", "/healthz") == (200, {"status": "ok"})
        status, body = await h.call("GET", "/readyz")
        assert (status, body["ready"]) == (503, False)
        h.is_ready = True
        status, body = await h.call("GET", "/readyz")
        assert (status, body["ready"]) == (200, True)
        assert body["state_store"] == {"kind": "file", "up": True, "stale_seconds": 0.0}
        status, data = await h.call("GET", "/regions")
        assert status == 200 and sorted(data["regions"]) == ["ams", "fra"]
        assert data["regions"]["fra"]["services"]["wss"]["health"] == "unknown"
        assert (await h.call("GET", "/nope"))[0] == 404
        status, data = await h.call("PUT", "/regions")
        assert status == 405 and "not allowed" in data["error"]
    run(tmp_path, body)


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/regions/fra/drain", {"reason": "x"}),
    ("DELETE", "/regions/fra/drain", None),
    ("POST", "/regions/fra/feed", {"values": {"up": False}}),
    ("POST", "/reload", None),
], ids=["drain", "undrain", "feed", "reload"])
@pytest.mark.parametrize("token", [None, "wrong-token-000000000", "s3cret"], ids=["missing", "wrong", "prefix"])
def test_unauthenticated_changes_get_401_and_change_nothing(tmp_path, method, path, body, token):
    async def go(h):
        status, data = await h.call(method, path, body, token=token)
        assert status == 401 and data["code"] == "unauthorized"
        assert h.inventory.status.generation == 0 and h.reloads == 0
    run(tmp_path, go)


def test_no_token_configured_refuses_changes_with_403(tmp_path):
    async def go(h):
        status, data = await h.call("POST", "/regions/fra/drain", {"reason": "x"}, token=TOKEN)
        assert status == 403 and "--control-token-file" in data["error"] and "FILTERDNS_CONTROL_TOKEN" in data["error"]
        assert h.inventory.status.generation == 0
        assert (await h.call("GET", "/regions"))[0] == 200  # reads still work
    run(tmp_path, go, token=None)


def test_drain_undrain_over_http(tmp_path):
    async def go(h):
        status, data = await h.call("POST", "/regions/fra/drain", {"service": "wss", "reason": "maint", "actor": "alice"},
                                    token=TOKEN)
        assert status == 200 and data["changed"] and data["drain"]["actor"] == "operator:alice"
        assert h.inventory.status.drained("fra", "wss") is not None
        # the last region serving wss is refused, with the reason; force overrides
        status, data = await h.call("POST", "/regions/ams/drain?service=wss", {"reason": "x"}, token=TOKEN)
        assert status == 409 and data["code"] == "refused" and "is the last region of wss that is serving and up" in data["error"]
        assert h.inventory.status.drained("ams", "wss") is None
        status, data = await h.call("POST", "/regions/ams/drain?service=wss&force=true", {"reason": "x"}, token=TOKEN)
        assert status == 200 and data["changed"]
        status, data = await h.call("DELETE", "/regions/ams/drain", {"service": "wss"}, token=TOKEN)
        assert status == 200 and data["changed"]
        status, data = await h.call("DELETE", "/regions/ams/drain", {"service": "wss"}, token=TOKEN)
        assert status == 200 and not data["changed"]
        lines = (tmp_path / "audit.log").read_text().splitlines()
        assert [json.loads(x)["action"] for x in lines] == ["drain", "refused", "drain", "undrain"]
    run(tmp_path, go)


@pytest.mark.parametrize("method,path,raw,status", [
    ("POST", "/regions/nope/drain", b'{"reason": "x"}', 404),
    ("POST", "/regions/fra/drain", b'{"service": "smtp"}', 404),
    ("POST", "/regions/fra/drain", b'{"reason": ', 400),
    ("POST", "/regions/fra/drain", b'[1, 2]', 400),
    ("POST", "/regions/fra/drain", b'{"bogus": 1}', 400),
    ("POST", "/regions/fra/drain", b'{"force": "maybe"}', 400),
    ("POST", "/regions/fra/drain?force=maybe", b'', 400),
    ("POST", "/regions/fra/drain", b'{"actor": "a b"}', 400),
    ("POST", "/regions/fra/feed", b'{"values": {"up": "no"}}', 400),
    ("POST", "/regions/fra/feed", b'{"values": {"loadavg": -2}}', 400),
    ("POST", "/regions/fra/feed", b'{"values": {"cpu": 1}}', 400),
    ("POST", "/regions/fra/feed", b'{"service": "smtp", "values": {"up": true}}', 404),
    ("POST", "/regions/fra/feed", b'{}', 400),
    ("GET", "/regions/fra/feed", None, 405),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_requests_change_nothing(tmp_path, method, path, raw, status):
    async def go(h):
        got, data = await h.call(method, path, token=TOKEN, raw=raw,
                                 headers={"Content-Type": "application/json"})
        assert got == status, data
        assert isinstance(data, dict) and data["error"]
        assert h.inventory.status.generation == 0
    run(tmp_path, go)


def test_feed_over_http(tmp_path):
    async def go(h):
        status, data = await h.call("POST", "/regions/fra/feed",
                                    {"service": "wss", "values": {"up": False, "loadavg": 3}}, token=TOKEN)
        assert status == 200 and data["values"] == {"up": False, "loadavg": 3.0}
        _, regions = await h.call("GET", "/regions")
        assert regions["regions"]["fra"]["services"]["wss"]["up"] is False
        saved = json.loads((tmp_path / "state.json").read_text())
        assert saved["feeds"] == [{"region": "fra", "service": "wss", "values": {"up": False, "loadavg": 3.0}}]
    run(tmp_path, go)


def test_reload_ok_and_rejected(tmp_path):
    async def ok(h):
        status, data = await h.call("POST", "/reload", token=TOKEN)
        assert status == 200 and data == {"ok": True, "generation": 2, "reasons": []}
    run(tmp_path, ok)

    async def bad(h):
        status, data = await h.call("POST", "/reload", token=TOKEN)
        assert status == 422 and not data["ok"] and data["reasons"] == ["chains/x.yaml:1: boom"]
        assert "still serving generation 1" in data["error"]
        _, text = await h.call("GET", "/metrics")
        assert 'filterdns_reloads_total{result="failure"} 1.0' in text
    run(tmp_path, bad, reload_result=(False, ["chains/x.yaml:1: boom"]))


def test_metrics_endpoint_and_region_gauges(tmp_path):
    async def go(h):
        h.metrics.query("udp", 1, 0, False, 0.0001)
        await h.call("POST", "/regions/fra/drain", {"service": "api", "reason": "m"}, token=TOKEN)
        status, text = await h.call("GET", "/metrics")
        assert status == 200
        assert 'filterdns_queries_total{qtype="A",rcode="NOERROR",transport="udp"} 1.0' in text
        assert 'filterdns_region_drained{region="fra",service="api"} 1.0' in text
        assert 'filterdns_region_up{region="fra",service="api"} 0.0' in text
        assert 'filterdns_drains_total{cause="operator"} 1.0' in text
    run(tmp_path, go)


def test_framing_limits(tmp_path):
    async def go(h):
        host, port = h.server.address

        async def raw(data: bytes) -> bytes:
            r, w = await asyncio.open_connection(host, port)
            w.write(data)
            await w.drain()
            out = await asyncio.wait_for(r.read(), 5)
            w.close()
            return out

        assert (await raw(b"GARBAGE\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await raw(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
        big = b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 999999\r\n\r\n"
        assert (await raw(big)).startswith(b"HTTP/1.1 413")
        chunked = b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        assert (await raw(chunked)).startswith(b"HTTP/1.1 501")
        ok = await raw(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200") and b'"ok"' in ok
    run(tmp_path, go)


def test_slow_client_times_out(tmp_path):
    async def go(h):
        h.server.http.read_timeout = 0.2
        r, w = await asyncio.open_connection(*h.server.address)
        w.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes the headers
        await w.drain()
        out = await asyncio.wait_for(r.read(), 5)
        assert out.startswith(b"HTTP/1.1 408")
        w.close()
    run(tmp_path, go)


def test_metrics_server(tmp_path):
    async def main():
        m = Metrics()
        m.truncated()
        s = MetricsServer("127.0.0.1", 0, render=m.render)
        await s.start()
        try:
            status, text = await asyncio.to_thread(request, s.address, "GET", "/metrics")
            assert status == 200 and "filterdns_truncated_total 1.0" in text
            status, _ = await asyncio.to_thread(request, s.address, "POST", "/metrics", {})
            assert status == 405
        finally:
            await s.stop()
    asyncio.run(main())


def test_load_token(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    os.chmod(f, 0o600)
    assert load_token(f, env={}) == TOKEN
    assert load_token(None, env={"FILTERDNS_CONTROL_TOKEN": TOKEN}) == TOKEN
    assert load_token(None, env={}) is None
    f.write_text("short\n")
    with pytest.raises(TokenError, match="too short"):
        load_token(f, env={})
    f.write_text("")
    with pytest.raises(TokenError):
        load_token(f, env={})
    with pytest.raises(TokenError, match="cannot read"):
        load_token(tmp_path / "missing", env={})
