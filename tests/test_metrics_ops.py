"""The metrics the deploy kit's alerts and dashboard read: filterdns_build_info and
filterdns_drain_since_timestamp_seconds (one sample per drain of a configured region)."""

from __future__ import annotations

import platform
from types import MappingProxyType, SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from filterdns import __version__
from filterdns.ops.metrics import Metrics
from filterdns.routing.inventory import Inventory, Region, Service

pytestmark = pytest.mark.unit


def samples(m: Metrics) -> dict:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_build_info():
    s = samples(Metrics())
    key = ("filterdns_build_info", tuple(sorted({"version": __version__, "python": platform.python_version(),
                                                  "implementation": platform.python_implementation()}.items())))
    assert s[key] == 1


def test_drain_since_per_drain():
    svcs = MappingProxyType({"wss": Service("wss"), "api": Service("api")})
    state = SimpleNamespace(regions={"fra": Region("fra", services=svcs), "ams": Region("ams", services=svcs)})
    inv = Inventory()
    m = Metrics()
    m.bind(lambda: state, inv)
    inv.drain("fra", None, "maintenance", "operator")
    inv.drain("ams", "wss", "failing", "health")
    inv.drain("gone", None, "r", "operator")  # not in the config: not exported here
    drains = inv.status.drains
    got = {labels: v for (name, labels), v in samples(m).items()
           if name == "filterdns_drain_since_timestamp_seconds"}
    assert got == {
        (("cause", drains[("fra", None)].cause), ("region", "fra"), ("service", "")): drains[("fra", None)].since,
        (("cause", drains[("ams", "wss")].cause), ("region", "ams"), ("service", "wss")): drains[("ams", "wss")].since,
    }
