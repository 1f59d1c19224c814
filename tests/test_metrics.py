"""Metrics: counting, bounded labels, exposition, region gauges, snapshot/merge."""

from __future__ import annotations

import timeit
from types import MappingProxyType, SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from filterdns.ops import metrics as metrics_mod
from filterdns.routing.inventory import Inventory, Region, Service
from filterdns.ops.metrics import BUCKETS, Metrics, merge

pytestmark = pytest.mark.unit


def samples(m: Metrics) -> dict:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def S(name, **labels):
    return (name, tuple(sorted(labels.items())))


@pytest.mark.parametrize("qtype,rcode,label_q,label_r", [
    (1, 0, "A", "NOERROR"),
    (28, 3, "AAAA", "NXDOMAIN"),
    (65, 0, "HTTPS", "NOERROR"),
    (99, 2, "other", "SERVFAIL"),
    (65535, 4000, "other", "other"),
], ids=["A", "AAAA-nx", "HTTPS", "rare-type", "unknown-rcode"])
def test_query_labels_are_bounded(qtype, rcode, label_q, label_r):
    m = Metrics()
    m.query("udp", qtype, rcode, False, 0.001)
    assert samples(m)[S("filterdns_queries_total", transport="udp", qtype=label_q, rcode=label_r)] == 1


def test_histogram_and_ecs():
    m = Metrics()
    for secs in (0.00001, 0.0001, 0.0003, 2.0):
        m.query("tcp", 1, 0, True, secs)
    s = samples(m)
    assert s[S("filterdns_ecs_queries_total", transport="tcp")] == 4
    assert s[S("filterdns_request_duration_seconds_bucket", transport="tcp", le="5e-05")] == 1
    assert s[S("filterdns_request_duration_seconds_bucket", transport="tcp", le="0.0001")] == 2  # le is inclusive
    assert s[S("filterdns_request_duration_seconds_bucket", transport="tcp", le="0.0005")] == 3
    assert s[S("filterdns_request_duration_seconds_bucket", transport="tcp", le="1.0")] == 3
    assert s[S("filterdns_request_duration_seconds_bucket", transport="tcp", le="+Inf")] == 4
    assert s[S("filterdns_request_duration_seconds_count", transport="tcp")] == 4
    assert s[S("filterdns_request_duration_seconds_sum", transport="tcp")] == pytest.approx(2.00041)
    assert len(BUCKETS) == len(sorted(set(BUCKETS)))


def test_other_counters():
    m = Metrics()
    m.malformed("udp", "short")
    m.malformed("udp", "made-up reason")
    m.ecs_formerr()
    m.truncated()
    m.truncated()
    m.servfail_exception()
    m.answer("wss", ("fra", "ams"))
    m.answer("wss", ())
    m.filter_removed((("up", 2), ("shed_load", 0), ("up", 1)))
    m.tcp_connections(1)
    m.tcp_connections(1)
    m.tcp_connections(-1)
    m.tcp_refused()
    m.reload_result(True, 7, 1700000000.0)
    m.reload_result(False, 8, 1700000001.0)
    s = samples(m)
    expected = {
        S("filterdns_malformed_total", transport="udp", reason="short"): 1,
        S("filterdns_malformed_total", transport="udp", reason="other"): 1,
        S("filterdns_ecs_formerr_total"): 1,
        S("filterdns_truncated_total"): 2,
        S("filterdns_servfail_exceptions_total"): 1,
        S("filterdns_answers_total", record="wss", region="fra"): 1,
        S("filterdns_answers_total", record="wss", region="none"): 1,
        S("filterdns_filter_removed_total", filter="up"): 3,
        S("filterdns_tcp_connections"): 1,
        S("filterdns_tcp_refused_total"): 1,
        S("filterdns_config_generation"): 7,
        S("filterdns_config_last_reload_success_timestamp_seconds"): 1700000000.0,
        S("filterdns_reloads_total", result="success"): 1,
        S("filterdns_reloads_total", result="failure"): 1,
    }
    for key, value in expected.items():
        assert s[key] == value, key
    assert S("filterdns_filter_removed_total", filter="shed_load") not in s


def test_region_gauges_from_state_and_inventory():
    svcs = MappingProxyType({"wss": Service("wss"), "api": Service("api")})
    state = SimpleNamespace(regions={"fra": Region("fra", services=svcs), "ams": Region("ams", services=svcs)})
    inv = Inventory()
    m = Metrics()
    m.bind(lambda: state, inv)
    inv.drain("fra", None, "r", "operator")
    inv.set_health("ams", "wss", False)
    inv.feed("ams", "api", {"loadavg": 1.5, "up": True})
    inv.feed("ams", None, {"connections": 10.0})
    inv.drain("gone", None, "r", "operator")  # not in config
    s = samples(m)
    assert s[S("filterdns_region_drained", region="fra", service="wss")] == 1
    assert s[S("filterdns_region_up", region="fra", service="api")] == 0
    assert s[S("filterdns_region_up", region="ams", service="wss")] == 0
    assert s[S("filterdns_region_up", region="ams", service="api")] == 1
    assert s[S("filterdns_region_health", region="ams", service="wss", state="down")] == 1
    assert s[S("filterdns_region_health", region="ams", service="api", state="unknown")] == 1
    inv.feed("ams", "wss", {"requests": 250.0})
    s = samples(m)
    # one gauge per feed key, named with its unit
    assert s[S("filterdns_region_feed_loadavg", region="ams", service="api")] == 1.5
    assert s[S("filterdns_region_feed_up", region="ams", service="api")] == 1
    assert s[S("filterdns_region_feed_connections", region="ams", service="")] == 10
    assert s[S("filterdns_region_feed_requests_per_second", region="ams", service="wss")] == 250
    assert not any(name == "filterdns_region_feed" for name, _ in s)
    assert s[S("filterdns_drains_orphaned")] == 1
    assert s[S("filterdns_inventory_generation")] == inv.status.generation
    assert not any(labels and dict(labels).get("region") == "gone" for _, labels in s)


def test_snapshot_and_merge():
    a, b = Metrics(), Metrics()
    a.query("udp", 1, 0, False, 0.0001)
    b.query("udp", 1, 0, True, 0.0001)
    b.query("tcp", 28, 0, False, 0.5)
    a.tcp_connections(2)
    b.tcp_connections(3)
    a.reload_result(True, 3, 10.0)
    b.reload_result(True, 4, 20.0)
    merged = merge([a.snapshot(), b.snapshot()])
    assert merged["queries"][("udp", "A", "NOERROR")] == 2
    assert merged["queries"][("tcp", "AAAA", "NOERROR")] == 1
    assert merged["hist"]["udp"] == [x + y for x, y in zip(a.snapshot()["hist"]["udp"], b.snapshot()["hist"]["udp"], strict=True)]
    assert merged["scalars"]["tcp_connections"] == 5
    assert merged["scalars"]["config_generation"] == 4
    assert merged["reloads"]["success"] == 2
    # a snapshot is a copy
    snap = a.snapshot()
    a.query("udp", 1, 0, False, 0.0001)
    assert snap["queries"][("udp", "A", "NOERROR")] == 1


def test_module_singleton_renders():
    text = metrics_mod.render_latest().decode()
    assert "# TYPE filterdns_queries_total counter" in text
    assert "# TYPE filterdns_request_duration_seconds histogram" in text


def test_hot_path_is_cheap():
    """Metrics.query must stay well under prometheus-client's per-call cost (same machine, same run)."""
    from prometheus_client import CollectorRegistry, Counter

    c = Counter("t_total", "t", ["transport", "qtype", "rcode"], registry=CollectorRegistry())
    m = Metrics()
    n = 20000
    ours = min(timeit.repeat(lambda: m.query("udp", 1, 0, False, 0.0002), number=n, repeat=3))
    theirs = min(timeit.repeat(lambda: c.labels("udp", "A", "NOERROR").inc(), number=n, repeat=3))
    assert ours < theirs, (ours / n, theirs / n)
