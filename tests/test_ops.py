"""Controller: validation, safety rule, audit log, persistence across a restart, orphans."""

from __future__ import annotations

import asyncio
import json
from types import MappingProxyType, SimpleNamespace

import pytest

from filterdns.routing.inventory import Inventory, Region, Service
from filterdns.ops.metrics import Metrics
from filterdns.ops.controller import BadRequest, Controller, NotFound, Refused
from filterdns.ops.store import StateUnreadable

pytestmark = pytest.mark.unit


def make_state(generation=1, names=("fra", "ams", "iad"), services=("wss", "api")):
    regions = {}
    for i, name in enumerate(names):
        svcs = {s: Service(s, v4=(f"192.0.2.{i * 10 + j + 1}",)) for j, s in enumerate(services)}
        regions[name] = Region(name, code=name.upper(), services=MappingProxyType(svcs),
                               meta=MappingProxyType({"up": True}))
    # one record per service whose chain reads `up`, as in the bundled config
    records = {f"{s}.example.com.": SimpleNamespace(name=f"{s}.example.com.", service=s,
                                                    meta=MappingProxyType({}), uses_up=True)
               for s in services}
    return SimpleNamespace(generation=generation, regions=MappingProxyType(regions), records=records,
                           loaded_at=0.0)


def make(tmp_path, state=None, **kw):
    holder = SimpleNamespace(state=state or make_state())
    inv = Inventory()
    m = Metrics()
    c = Controller(lambda: holder.state, inv, kw.pop("reload", None), tmp_path, metrics=m, clock=lambda: 1000.0, **kw)
    return c, inv, m, holder


def run(coro):
    return asyncio.run(coro)


def audit(tmp_path):
    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


def test_drain_then_undrain_audits_and_counts(tmp_path):
    c, inv, m, _ = make(tmp_path)
    r = run(c.drain("fra", "wss", reason="LB swap", actor="operator:alice"))
    assert r.changed and "DNS now: wss: 2 of 3 region(s) serving" in r.message
    assert inv.status.drained("fra", "wss").actor == "operator:alice"
    assert inv.status.drained("fra", "api") is None
    r = run(c.undrain("fra", "wss", actor="operator:bob"))
    assert r.changed and inv.status.drained("fra", "wss") is None
    lines = audit(tmp_path)
    assert [(x["action"], x["region"], x["service"], x["actor"], x["cause"]) for x in lines] == [
        ("drain", "fra", "wss", "operator:alice", "operator"),
        ("undrain", "fra", "wss", "operator:bob", "operator"),
    ]
    assert lines[0]["reason"] == "LB swap" and lines[0]["time"] == 1000.0
    snap = m.snapshot()["drains"]
    assert snap[("drain", "operator")] == 1 and snap[("undrain", "operator")] == 1


@pytest.mark.parametrize("region,service,exc", [
    ("nope", None, NotFound),
    ("fra", "smtp", NotFound),
    (7, None, NotFound),
], ids=["unknown-region", "unknown-service", "not-a-string"])
def test_drain_rejects_unknown_targets_and_changes_nothing(tmp_path, region, service, exc):
    c, inv, _, _ = make(tmp_path)
    with pytest.raises(exc):
        run(c.drain(region, service, reason="x"))
    assert inv.status.generation == 0
    assert not (tmp_path / "audit.log").exists()


def test_bad_reason_and_force_types(tmp_path):
    c, inv, _, _ = make(tmp_path)
    with pytest.raises(BadRequest):
        run(c.drain("fra", None, reason=12))
    with pytest.raises(BadRequest):
        run(c.drain("fra", None, reason="x", force="yes"))
    with pytest.raises(BadRequest):
        run(c.drain("fra", None, reason="a\x00b"))
    assert inv.status.generation == 0


def test_safety_rule_refuses_last_region_unless_forced(tmp_path):
    c, inv, m, _ = make(tmp_path)
    run(c.drain("fra", None, reason="a"))
    run(c.drain("ams", "wss", reason="b"))
    with pytest.raises(Refused) as e:
        run(c.drain("iad", "wss", reason="c"))
    assert "is the last region of wss that is serving and up" in e.value.message
    assert "DNS answers NODATA" in e.value.message  # what DNS would do
    assert inv.status.drained("iad", "wss") is None
    # a region-level drain is checked for every service: api still has ams and iad
    with pytest.raises(Refused):
        run(c.drain("iad", None, reason="c"))
    r = run(c.drain("iad", "wss", reason="c", force=True))
    assert r.changed and "forced past" in r.message
    assert m.snapshot()["drains"][("refused", "operator")] == 2
    actions = [x["action"] for x in audit(tmp_path)]
    assert actions == ["drain", "drain", "refused", "refused", "drain"]


def test_max_drain_share(tmp_path):
    c, inv, _, _ = make(tmp_path, state=make_state(names=("a", "b", "c", "d")), max_drain_share=0.5)
    run(c.drain("a", "wss", reason="1"))
    run(c.drain("b", "wss", reason="2"))
    with pytest.raises(Refused) as e:
        run(c.drain("c", "wss", reason="3"))
    assert "3 of 4" in e.value.message
    # draining an already drained key is not a new drain for the share
    assert run(c.drain("a", "wss", reason="again")).changed


def test_health_drain_does_not_replace_operator_drain(tmp_path):
    c, inv, _, _ = make(tmp_path)
    run(c.drain("fra", "wss", reason="op", actor="operator:alice"))
    r = run(c.drain("fra", "wss", reason="hc", actor="health", cause="health"))
    assert not r.changed
    assert inv.status.drains[("fra", "wss")].cause == "operator"
    # and an automation undrain leaves it alone
    assert not run(c.undrain("fra", "wss", actor="health", cause="health", only_cause="health")).changed
    assert ("fra", "wss") in inv.status.drains


def test_undrain_not_drained_is_a_noop(tmp_path):
    c, inv, _, _ = make(tmp_path)
    r = run(c.undrain("fra", None))
    assert not r.changed and inv.status.generation == 0
    with pytest.raises(NotFound):
        run(c.undrain("nope", None))


@pytest.mark.parametrize("values,ok", [
    ({"up": False}, True),
    ({"up": 1, "loadavg": 0}, True),
    ({"up": 2}, False),
    ({"loadavg": 0.5, "connections": 10, "requests": 3}, True),
    ({"up": "false"}, False),
    ({"loadavg": -1}, False),
    ({"loadavg": float("nan")}, False),
    ({"connections": True}, False),
    ({"cpu": 1}, False),
    ({}, False),
    ([1], False),
], ids=["up", "up-1-0", "up-2", "numbers", "up-string", "negative", "nan", "bool-number", "unknown-key", "empty", "list"])
def test_feed_validation(tmp_path, values, ok):
    c, inv, _, _ = make(tmp_path)
    if ok:
        r = run(c.feed("fra", "wss", values))
        assert dict(inv.status.feeds[("fra", "wss")]) == {k: (v if isinstance(v, bool) else float(v))
                                                          for k, v in values.items()}
        assert r.changed
    else:
        with pytest.raises(BadRequest):
            run(c.feed("fra", "wss", values))
        assert inv.status.generation == 0


def test_persistence_across_restart(tmp_path):
    c, inv, _, holder = make(tmp_path)
    run(c.drain("fra", "wss", reason="maint", actor="operator:alice"))
    run(c.feed("ams", None, {"loadavg": 2.5}))
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["drains"][0]["region"] == "fra"
    assert not list(tmp_path.glob(".state.json.*"))  # temp file renamed away
    # "restart": a new inventory and controller over the same state dir
    inv2 = Inventory()
    c2 = Controller(lambda: holder.state, inv2, None, tmp_path)
    assert c2.restore()
    d = inv2.status.drained("fra", "wss")
    assert d is not None and d.reason == "maint" and d.actor == "operator:alice" and d.since == 1000.0
    assert dict(inv2.status.feeds[("ams", None)]) == {"loadavg": 2.5}


def test_restore_missing_and_corrupt(tmp_path):
    c, inv, _, _ = make(tmp_path)
    assert not c.restore()
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StateUnreadable, match="not valid JSON.*--discard-state"):
        c.restore()
    assert (tmp_path / "state.json").exists()  # left in place for the operator
    assert not c.restore(discard=True)
    assert c.restore_error and "moved to state.json.corrupt-1000" in c.restore_error
    assert (tmp_path / "state.json.corrupt-1000").exists()
    assert c.regions()["restore_error"] == c.restore_error


def test_orphaned_drain_is_reported_not_lost(tmp_path, caplog):
    c, inv, _, holder = make(tmp_path)
    run(c.drain("iad", "api", reason="keep me"))
    holder.state = make_state(generation=2, names=("fra", "ams"))
    orphans = c.report_orphans()
    assert orphans == [{"kind": "drain", "region": "iad", "service": "api", "reason": "keep me",
                        "actor": "operator", "cause": "operator", "since": 1000.0}]
    assert "no longer in the config" in caplog.text
    assert c.regions()["orphans"] == orphans
    assert ("iad", "api") in inv.status.drains
    # it can still be removed
    assert run(c.undrain("iad", "api")).changed
    assert c.regions()["orphans"] == []


def test_regions_view(tmp_path):
    c, inv, _, _ = make(tmp_path)
    run(c.drain("fra", None, reason="all of fra"))
    inv.set_health("ams", "wss", False)
    run(c.feed("iad", "api", {"loadavg": 1.0}))
    v = c.regions()
    fra = v["regions"]["fra"]
    assert fra["drain"]["reason"] == "all of fra"
    assert fra["services"]["wss"]["drained"] and fra["services"]["wss"]["drain"] is None
    assert fra["services"]["wss"]["serving"] is False and fra["services"]["wss"]["reason"] == "operator_drain"
    assert v["regions"]["ams"]["services"]["wss"]["health"] == "down"
    # a failing check with no drain (the automation is not running here) is held in DNS
    assert v["regions"]["ams"]["services"]["wss"]["serving"] is True
    assert v["regions"]["ams"]["services"]["wss"]["reason"] == "held"
    assert v["regions"]["ams"]["services"]["api"]["health"] == "unknown"
    assert v["regions"]["iad"]["services"]["api"]["feeds"] == {"loadavg": 1.0}
    assert v["regions"]["iad"]["services"]["api"]["v4"] == ["192.0.2.22"]
    json.dumps(v)


def test_reload_counts_and_reports(tmp_path):
    results = [(True, []), (False, ["chains/edge.yaml:3:1: bad"])]

    async def reload(cause="api"):
        return results.pop(0)

    c, inv, m, holder = make(tmp_path, reload=reload)

    async def go():
        return await c.reload(actor="operator:x"), await c.reload()

    (ok1, r1), (ok2, r2) = asyncio.run(go())
    assert ok1 and not ok2 and r2 == ["chains/edge.yaml:3:1: bad"]
    snap = m.snapshot()
    assert snap["reloads"] == {"success": 1, "failure": 1}
    assert snap["scalars"]["config_generation"] == 1
    assert [x["action"] for x in audit(tmp_path)] == ["reload", "reload"]
    assert audit(tmp_path)[1]["detail"]["reasons"] == r2


def test_bad_max_share(tmp_path):
    with pytest.raises(ValueError):
        make(tmp_path, max_drain_share=0)
