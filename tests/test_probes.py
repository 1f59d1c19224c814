"""Probes an orchestrator can reach: the metrics listener answers /healthz and /readyz
(read-only), so a kubelet or Docker's HEALTHCHECK need not reach the loopback control API."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from conftest import free_port, start_server
from filterdns.ops.api import MetricsServer


def _get(port, path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.e2e
def test_readyz_follows_readiness_on_the_metrics_listener():
    async def main():
        ready = {"v": False}
        srv = MetricsServer("127.0.0.1", 0, render=lambda: b"# empty\n", ready=lambda: ready["v"])
        await srv.start()
        try:
            port = srv.address[1]
            status, body = await asyncio.to_thread(_get, port, "/readyz")
            assert (status, json.loads(body)) == (503, {"ready": False})
            ready["v"] = True
            status, body = await asyncio.to_thread(_get, port, "/readyz")
            assert (status, json.loads(body)) == (200, {"ready": True})
            assert (await asyncio.to_thread(_get, port, "/healthz"))[0] == 200
            assert (await asyncio.to_thread(_get, port, "/readyz", "POST"))[0] == 405
            assert (await asyncio.to_thread(_get, port, "/regions"))[0] == 404  # nothing else is exposed
        finally:
            await srv.stop()
    asyncio.run(main())


@pytest.mark.e2e
def test_served_readyz_on_metrics_port(tmp_path):
    mport = free_port()
    sp = start_server(tmp_path, "--metrics", f"127.0.0.1:{mport}")
    try:
        status, body = _get(mport, "/readyz")
        assert status == 200 and json.loads(body) == {"ready": True}
        status, text = _get(mport, "/metrics")
        assert status == 200 and "filterdns_queries_total" in text
    finally:
        sp.stop()
