"""Health checks: schema, probes against real loopback targets, rise/fall thresholds, cold start."""

from __future__ import annotations

import asyncio
from types import MappingProxyType, SimpleNamespace

import pytest
import yaml

import filterdns.ops.health as health_mod
from filterdns.errors import ConfigError
from filterdns.ops.health import CheckSpec, HealthChecker, check_against_regions, parse_health_config, probe
from filterdns.routing.inventory import Inventory, Region, Service


@pytest.mark.unit
def test_module_docstring_yaml_example_loads():
    doc = health_mod.__doc__
    block = doc[doc.index("    health:"):doc.index("Metrics:")]
    node = yaml.safe_load("\n".join(line[4:] for line in block.splitlines()))["health"]
    specs = parse_health_config(node, "doc")
    assert [(s.region, s.service, s.type, s.interval, s.rise, s.fall) for s in specs] == [
        ("fra", "wss", "tcp", 5.0, 2, 3), ("fra", "api", "https", 5.0, 2, 3)]
    assert specs[1].expect == (200, 204) and specs[1].host == "api.example.com"


@pytest.mark.unit
def test_defaults_apply():
    [s] = parse_health_config({"checks": [{"region": "r", "service": "s", "port": 80}]}, "f")
    assert s == CheckSpec(region="r", service="s", type="tcp", address=None, port=80, interval=5.0, timeout=2.0,
                          rise=2, fall=3)


@pytest.mark.unit
@pytest.mark.parametrize("check,message", [
    ({"service": "s", "port": 1}, "health.checks[0]: region is required"),
    ({"region": "r", "service": "s", "port": 0}, "port must be an integer in 1..65535, got 0"),
    ({"region": "r", "service": "s", "port": "80"}, "port must be an integer"),
    ({"region": "r", "service": "s", "port": 80, "type": "icmp"}, "type must be one of tcp, http, https"),
    ({"region": "r", "service": "s", "port": 80, "rise": 0}, "rise must be an integer in 1..100"),
    ({"region": "r", "service": "s", "port": 80, "fall": True}, "fall must be an integer in 1..100, got True"),
    ({"region": "r", "service": "s", "port": 80, "address": "example.com"}, "address must be an IP address"),
    ({"region": "r", "service": "s", "port": 80, "timeout": 5, "interval": 1}, "timeout (5) must not exceed interval (1)"),
    ({"region": "r", "service": "s", "port": 80, "type": "http", "expect": [99]}, "expect must be an HTTP status"),
    ({"region": "r", "service": "s", "port": 80, "type": "http", "path": "x"}, "path must start with '/'"),
    ({"region": "r", "service": "s", "port": 80, "path": "/x"}, "apply to http/https checks only"),
    ({"region": "r", "service": "s", "port": 80, "colour": 1}, "health.checks[0].colour: unknown option"),
    ("tcp", "health.checks[0]: must be a mapping"),
], ids=["no-region", "port-0", "port-str", "type", "rise-0", "fall-bool", "address", "timeout>interval",
        "expect", "path", "tcp-with-path", "unknown", "not-mapping"])
def test_bad_checks(check, message):
    with pytest.raises(ConfigError) as e:
        parse_health_config({"checks": [check]}, "chains/edge.yaml")
    assert message in str(e.value) and str(e.value).startswith("chains/edge.yaml: ")


@pytest.mark.unit
def test_all_problems_reported_at_once():
    node = {"defaults": {"rise": 0, "region": "x"}, "checks": [{"port": 1}, {"region": "r", "service": "s"}], "x": 1}
    with pytest.raises(ConfigError) as e:
        parse_health_config(node, "f")
    assert len(e.value.problems) == 6  # unknown key, rise, region default, 2 missing in [0], port in [1]


@pytest.mark.unit
def test_duplicates_and_cross_check():
    c = {"region": "fra", "service": "wss", "port": 443}
    with pytest.raises(ConfigError, match="duplicate"):
        parse_health_config({"checks": [c, dict(c)]}, "f")
    specs = parse_health_config({"checks": [c, {"region": "x", "service": "wss", "port": 1},
                                            {"region": "fra", "service": "smtp", "port": 1}]}, "f")
    regions = {"fra": Region("fra", services=MappingProxyType({"wss": Service("wss", v4=("192.0.2.1",))}))}
    probs = [p.message for p in check_against_regions(specs, regions, "f")]
    assert probs == ["health.checks[1]: unknown region 'x'", "health.checks[2]: region fra has no service 'smtp'"]


@pytest.mark.unit
def test_empty_health_section():
    assert parse_health_config(None, "f") == []
    assert parse_health_config({}, "f") == []


# -- probes against real loopback targets -----------------------------------------------------------

async def _serve_http(status: int):
    async def handle(r, w):
        await r.readuntil(b"\r\n\r\n")
        w.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await w.drain()
        w.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_probes():
    async def main():
        srv = await _serve_http(200)
        port = srv.sockets[0].getsockname()[1]
        bad = await _serve_http(503)
        bad_port = bad.sockets[0].getsockname()[1]
        try:
            tcp = CheckSpec("r", "s", "tcp", "127.0.0.1", port, timeout=1)
            assert (await probe(tcp, "127.0.0.1"))[0]
            http = CheckSpec("r", "s", "http", "127.0.0.1", port, path="/hc", timeout=1)
            assert await probe(http, "127.0.0.1") == (True, "HTTP 200")
            http_bad = CheckSpec("r", "s", "http", "127.0.0.1", bad_port, timeout=1)
            assert await probe(http_bad, "127.0.0.1") == (False, "HTTP 503")
            http_503_ok = CheckSpec("r", "s", "http", "127.0.0.1", bad_port, expect=(503,), timeout=1)
            assert (await probe(http_503_ok, "127.0.0.1"))[0]
        finally:
            srv.close()
            bad.close()
        closed = CheckSpec("r", "s", "tcp", "127.0.0.1", _free_port(), timeout=1)
        ok, detail = await probe(closed, "127.0.0.1")
        assert not ok and "Error" in detail

        # a listener that accepts but never answers HTTP: timeout
        async def silent(r, w):
            await asyncio.sleep(5)
        s2 = await asyncio.start_server(silent, "127.0.0.1", 0)
        try:
            slow = CheckSpec("r", "s", "http", "127.0.0.1", s2.sockets[0].getsockname()[1], timeout=0.2)
            assert await probe(slow, "127.0.0.1") == (False, "timeout after 0.2s")
        finally:
            s2.close()
    asyncio.run(main())


def _state(port_addr="127.0.0.1"):
    svcs = {"wss": Service("wss", v4=(port_addr,))}
    return SimpleNamespace(generation=1, regions={"fra": Region("fra", services=MappingProxyType(svcs))})


@pytest.mark.e2e
def test_thresholds_with_a_real_target_started_and_stopped():
    """fall=3 failures to go down, rise=2 successes to come back; unknown (up) until then."""
    async def main():
        port = _free_port()
        inv = Inventory()
        spec = CheckSpec("fra", "wss", "tcp", None, port, interval=0.05, timeout=0.5, rise=2, fall=3)
        hc = HealthChecker([spec], inv, get_state=_state, jitter=False)
        check = hc.checks[0]

        async def target():
            return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)

        server = await target()
        await hc.run_once(check)
        assert inv.status.health.get(("fra", "wss")) is None  # cold start: unknown until rise
        assert ("fra", "wss") not in inv.status.health  # unknown takes nothing out of DNS
        await hc.run_once(check)
        assert inv.status.health[("fra", "wss")] is True
        server.close()
        await server.wait_closed()
        for expected in (True, True, False):  # fall=3
            await hc.run_once(check)
            assert inv.status.health[("fra", "wss")] is expected
        server = await target()
        await hc.run_once(check)
        assert inv.status.health[("fra", "wss")] is False  # one success is not enough
        await hc.run_once(check)
        assert inv.status.health[("fra", "wss")] is True
        server.close()
        # the background loop reaches the same verdict on its own
        hc.start()
        for _ in range(100):
            if inv.status.health[("fra", "wss")] is False:
                break
            await asyncio.sleep(0.02)
        await hc.stop()
        assert inv.status.health[("fra", "wss")] is False
    asyncio.run(main())


@pytest.mark.unit
def test_flapping_target_does_not_flip_verdict():
    async def main():
        inv = Inventory()
        results = iter([True, True, False, True, False, False, True, False, False, True])

        async def fake(spec, address):
            return next(results), "fake"

        hc = HealthChecker([CheckSpec("fra", "wss", "tcp", "127.0.0.1", 1, rise=2, fall=3)], inv,
                           probe_fn=fake, jitter=False)
        seen = []
        for _ in range(10):
            await hc.run_once(hc.checks[0])
            seen.append(inv.status.health.get(("fra", "wss")))
        assert seen == [None] + [True] * 9
    asyncio.run(main())


@pytest.mark.unit
def test_several_checks_per_service_and_replace():
    async def main():
        inv = Inventory()
        verdict = {1: True, 2: True}

        async def fake(spec, address):
            return verdict[spec.port], "fake"

        specs = [CheckSpec("fra", "wss", "tcp", "127.0.0.1", p, rise=1, fall=1) for p in (1, 2)]
        hc = HealthChecker(specs, inv, probe_fn=fake, jitter=False)
        for c in hc.checks:
            await hc.run_once(c)
        assert inv.status.health[("fra", "wss")] is True
        verdict[2] = False
        await hc.run_once(hc.checks[1])
        assert inv.status.health[("fra", "wss")] is False  # any down -> down
        await hc.replace([])
        assert ("fra", "wss") not in inv.status.health  # forgotten: unknown counts as up
    asyncio.run(main())


@pytest.mark.unit
def test_missing_address_counts_as_failure():
    async def main():
        inv = Inventory()
        state = SimpleNamespace(regions={"fra": Region("fra", services=MappingProxyType({"wss": Service("wss")}))})
        hc = HealthChecker([CheckSpec("fra", "wss", "tcp", None, 1, rise=1, fall=1)], inv,
                           get_state=lambda: state, jitter=False)
        await hc.run_once(hc.checks[0])
        assert inv.status.health[("fra", "wss")] is False
        assert "no address" in hc.describe()[0]["detail"]
    asyncio.run(main())


@pytest.mark.unit
def test_replace_keeps_unchanged_checks_and_follows_state_swaps():
    async def main():
        inv = Inventory()

        async def fake(spec, address):
            return spec.port != 2, "fake"

        a = CheckSpec("fra", "wss", "tcp", "127.0.0.1", 1, rise=1, fall=1)
        b = CheckSpec("ams", "wss", "tcp", "127.0.0.1", 2, rise=1, fall=1)
        hc = HealthChecker([a], inv, probe_fn=fake, jitter=False)
        await hc.run_once(hc.checks[0])
        kept = hc.checks[0]
        hc.on_state_swap(SimpleNamespace(health=(a,)), SimpleNamespace(health=(a, b)))
        await hc._pending
        assert hc.checks[0] is kept and kept.verdict is True and len(hc.checks) == 2
        await hc.run_once(hc.checks[1])
        assert inv.status.health[("ams", "wss")] is False
        hc.on_state_swap(SimpleNamespace(health=(a, b)), SimpleNamespace(health=(a,)))
        await hc._pending
        assert ("ams", "wss") not in inv.status.health and inv.status.health[("fra", "wss")] is True
    asyncio.run(main())
