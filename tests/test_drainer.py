"""Edge PoP Drain: health verdicts drive drains and undrains, under the safety rule."""

from __future__ import annotations

import asyncio
import json
import socket
from types import MappingProxyType, SimpleNamespace

import pytest

from filterdns.ops.drainer import Drainer
from filterdns.ops.health import CheckSpec, HealthChecker
from filterdns.routing.inventory import Inventory, Region, Service
from filterdns.ops.metrics import Metrics
from filterdns.ops.controller import Controller


def make_state(names=("fra", "ams", "iad")):
    regions = {n: Region(n, meta=MappingProxyType({"up": True}),
                         services=MappingProxyType({"wss": Service("wss", v4=("127.0.0.1",)),
                                                    "api": Service("api", v4=("127.0.0.1",))}))
               for n in names}
    # one record per service whose chain reads `up`, as in the bundled config
    records = {f"{s}.example.com.": SimpleNamespace(name=f"{s}.example.com.", service=s,
                                                    meta=MappingProxyType({}), uses_up=True)
               for s in ("wss", "api")}
    return SimpleNamespace(generation=1, regions=MappingProxyType(regions), records=records)


def setup(tmp_path, names=("fra", "ams", "iad"), **kw):
    state = make_state(names)
    inv = Inventory()
    m = Metrics()
    c = Controller(lambda: state, inv, None, tmp_path, metrics=m, **kw)
    return c, inv, m, Drainer(c)


async def settle():
    for _ in range(3):
        await asyncio.sleep(0)


def audit(tmp_path):
    return [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]


@pytest.mark.unit
def test_drain_on_failure_and_undrain_on_recovery(tmp_path):
    async def main():
        c, inv, m, d = setup(tmp_path)
        d.start()
        inv.set_health("fra", "wss", False)
        await settle()
        dr = inv.status.drains[("fra", "wss")]
        assert (dr.cause, dr.actor) == ("health", "health")
        assert inv.status.drained("fra", "api") is None
        inv.set_health("fra", "wss", True)
        await settle()
        assert ("fra", "wss") not in inv.status.drains
        lines = audit(tmp_path)
        assert [(x["action"], x["cause"], x["actor"], x["region"], x["service"]) for x in lines] == [
            ("drain", "health", "health", "fra", "wss"), ("undrain", "health", "health", "fra", "wss")]
        snap = m.snapshot()["drains"]
        assert snap[("drain", "health")] == 1 and snap[("undrain", "health")] == 1
    asyncio.run(main())


@pytest.mark.unit
def test_last_region_never_drained_automatically(tmp_path):
    async def main():
        c, inv, m, d = setup(tmp_path)
        d.start()
        for region in ("fra", "ams", "iad"):
            inv.set_health(region, "wss", False)
            await settle()
        assert {k for k in inv.status.drains} == {("fra", "wss"), ("ams", "wss")}  # sorted: iad stays
        # every further change retries, but the refusal is audited and counted once
        inv.set_health("fra", "api", True)
        await settle()
        inv.set_health("ams", "api", True)
        await settle()
        assert m.snapshot()["drains"][("refused", "health")] == 1
        held = [x for x in audit(tmp_path) if x["action"] == "held"]
        assert len(held) == 1 and held[0]["state"] == "failing, held in DNS by the safety rule"
        assert c.regions()["regions"]["iad"]["services"]["wss"]["reason"] == "held"
        # when another region recovers, the refused one can now be drained
        inv.set_health("fra", "wss", True)
        await settle()
        assert ("fra", "wss") not in inv.status.drains
        assert ("iad", "wss") in inv.status.drains
    asyncio.run(main())


@pytest.mark.unit
def test_share_limit(tmp_path):
    async def main():
        c, inv, m, d = setup(tmp_path, names=("a", "b", "c", "d"), max_drain_share=0.25)
        d.start()
        inv.set_health("a", "wss", False)
        inv.set_health("b", "wss", False)
        await settle()
        assert set(inv.status.drains) == {("a", "wss")}
    asyncio.run(main())


@pytest.mark.unit
def test_operator_drain_wins(tmp_path):
    async def main():
        c, inv, m, d = setup(tmp_path)
        d.start()
        await c.drain("fra", "wss", reason="maintenance", actor="operator:alice")
        inv.set_health("fra", "wss", False)
        await settle()
        inv.set_health("fra", "wss", True)
        await settle()
        dr = inv.status.drains[("fra", "wss")]
        assert dr.cause == "operator" and dr.reason == "maintenance"
        # an operator undrain of a health drain stands until the verdict changes again
        inv.set_health("ams", "wss", False)
        await settle()
        assert inv.status.drains[("ams", "wss")].cause == "health"
        await c.undrain("ams", "wss", actor="operator:bob")
        await settle()
        assert ("ams", "wss") not in inv.status.drains
        inv.set_health("ams", "wss", True)
        await settle()
        inv.set_health("ams", "wss", False)
        await settle()
        assert inv.status.drains[("ams", "wss")].cause == "health"
    asyncio.run(main())


@pytest.mark.unit
def test_forgotten_check_undrains(tmp_path):
    async def main():
        c, inv, m, d = setup(tmp_path)
        d.start()
        inv.set_health("fra", "wss", False)
        await settle()
        assert ("fra", "wss") in inv.status.drains
        inv.set_health("fra", "wss", None)
        await settle()
        assert ("fra", "wss") not in inv.status.drains
    asyncio.run(main())


@pytest.mark.e2e
def test_end_to_end_with_real_target_and_thresholds(tmp_path):
    """A TCP target on loopback stops -> drained after `fall` probes; starts -> undrained after `rise`."""
    async def main():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        c, inv, m, d = setup(tmp_path, names=("fra", "ams"))
        d.start()
        spec = CheckSpec("fra", "wss", "tcp", "127.0.0.1", port, interval=0.05, timeout=0.5, rise=2, fall=2)
        hc = HealthChecker([spec], inv, metrics=m, jitter=False)
        target = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        hc.start()

        async def wait_for(pred):
            for _ in range(200):
                if pred():
                    return True
                await asyncio.sleep(0.02)
            return False

        try:
            assert await wait_for(lambda: inv.status.health.get(("fra", "wss")) is True)
            assert ("fra", "wss") not in inv.status.drains
            target.close()
            await target.wait_closed()
            assert await wait_for(lambda: ("fra", "wss") in inv.status.drains)
            target = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
            assert await wait_for(lambda: ("fra", "wss") not in inv.status.drains)
        finally:
            await hc.stop()
            target.close()
        assert m.snapshot()["probes"][("fra", "wss", "failure")] >= 2
        assert [x["action"] for x in audit(tmp_path)] == ["drain", "undrain"]
    asyncio.run(main())
