"""One truth for region state: a table of states (meta at record/region/service level, feeds,
health, drains, fail-open), and for each row every view must agree with the others and with
what a real DNS query over UDP answers: ``Controller.regions()`` (status, ``/regions``), the
``/metrics`` text, ``filterdns explain`` and the answer of the running responder."""

from __future__ import annotations

import asyncio
import random
import re
import threading
from types import MappingProxyType

import dns.message
import dns.query
import pytest

from conftest import ROOT, free_port
from filterdns.config.build import build_state
from filterdns.config.state import StateHolder
from filterdns.dns.responder import Responder
from filterdns.ops.controller import Controller
from filterdns.ops.explain import client_from, explain
from filterdns.ops.metrics import Metrics
from filterdns.routing import region_state
from filterdns.routing.inventory import Drain, Inventory, Status
from filterdns.serve.udp import UdpProtocol

pytestmark = pytest.mark.e2e

ADDR = {"r1": "192.0.2.1", "r2": "192.0.2.2", "r3": "192.0.2.3"}


def write_config(tmp_path, region_meta, service_meta, record_meta):
    """Three regions serving ``web``; record t.example.com runs ``[up]`` (every serving region's
    address is in the answer, so the answer shows exactly which regions DNS serves)."""
    chains = tmp_path / "chains"
    chains.mkdir()
    lines = ["regions:"]
    for i, r in enumerate(("r1", "r2", "r3")):
        rm = region_meta.get(r)
        sm = service_meta.get(r)
        lines.append(f"  {r}:")
        lines.append(f"    country: {('GB', 'IE', 'DE')[i]}")
        if rm is not None:
            lines.append(f"    meta: {rm}")
        lines.append("    services:")
        lines.append("      web:")
        lines.append(f"        v4: [{ADDR[r]}]")
        if sm is not None:
            lines.append(f"        meta: {sm}")
    lines += ["records:", "  t.example.com:", "    service: web", "    types: [A]", "    ttl: 5",
              "    chain: [up]"]
    if record_meta is not None:
        lines.append(f"    meta: {record_meta}")
    (chains / "c.yaml").write_text("\n".join(lines) + "\n")
    return chains


def drain(r, svc, cause):
    return Drain(r, svc, "test", "operator:t" if cause == "operator" else "health", cause, 1000.0)


UP3 = {"r1": "{up: true}", "r2": "{up: true}", "r3": "{up: true}"}

# id, region meta, service meta, record meta, feeds, health, drains, expected {region: reason}
ROWS = [
    ("all-up-region-meta", UP3, {}, None, [], {}, [],
     {"r1": "up", "r2": "up", "r3": "up"}),
    ("service-meta-beats-region-feed", {}, {"r1": "{up: true}", "r2": "{up: 1}", "r3": "{up: true}"}, None,
     [("r1", None, {"up": False})], {}, [],
     {"r1": "up", "r2": "up", "r3": "up"}),
    ("no-up-meta-on-one", {"r2": "{up: true}", "r3": "{up: true}"}, {}, None, [], {}, [],
     {"r1": "no_up_meta", "r2": "up", "r3": "up"}),
    ("no-up-meta-anywhere-fails-open", {}, {}, None, [], {}, [],
     {"r1": "fail_open", "r2": "fail_open", "r3": "fail_open"}),
    ("record-meta-up", {}, {}, "{up: true}", [], {}, [],
     {"r1": "up", "r2": "up", "r3": "up"}),
    ("region-meta-beats-record-meta", {"r2": "{up: 0}"}, {}, "{up: true}", [], {}, [],
     {"r1": "up", "r2": "meta_down", "r3": "up"}),
    ("service-feed-down-as-0", UP3, {}, None, [("r1", "web", {"up": 0})], {}, [],
     {"r1": "feed_down", "r2": "up", "r3": "up"}),
    ("service-feed-beats-region-feed", UP3, {}, None,
     [("r1", None, {"up": False}), ("r1", "web", {"up": True})], {}, [],
     {"r1": "up", "r2": "up", "r3": "up"}),
    ("region-feed-beats-region-meta", UP3, {}, None, [("r3", None, {"up": False})], {}, [],
     {"r1": "up", "r2": "up", "r3": "feed_down"}),
    ("operator-drain-hard", UP3, {}, None, [], {}, [("r1", None, "operator")],
     {"r1": "operator_drain", "r2": "up", "r3": "up"}),
    ("health-drain-soft", UP3, {}, None, [], {"r2": False}, [("r2", "web", "health")],
     {"r1": "up", "r2": "health_drain", "r3": "up"}),
    ("failing-not-drained-is-held", UP3, {}, None, [], {"r1": False}, [],
     {"r1": "held", "r2": "up", "r3": "up"}),
    ("all-feed-down-fails-open", UP3, {}, None,
     [(r, "web", {"up": False}) for r in ("r1", "r2", "r3")], {}, [],
     {"r1": "fail_open", "r2": "fail_open", "r3": "fail_open"}),
    ("fail-open-never-brings-back-operator-drain", UP3, {}, None,
     [("r2", "web", {"up": False}), ("r3", "web", {"up": False})], {}, [("r1", "web", "operator")],
     {"r1": "operator_drain", "r2": "fail_open", "r3": "fail_open"}),
    ("health-drains-fail-open", UP3, {}, None, [("r3", None, {"up": False})], {"r1": False, "r2": False},
     [("r1", "web", "health"), ("r2", "web", "health")],
     {"r1": "fail_open", "r2": "fail_open", "r3": "fail_open"}),
    ("all-operator-drained-nodata", UP3, {}, None, [], {},
     [("r1", None, "operator"), ("r2", "web", "operator"), ("r3", None, "operator")],
     {"r1": "operator_drain", "r2": "operator_drain", "r3": "operator_drain"}),
]


class UdpServer:
    """The real responder behind the real UDP transport, on a loopback port, in a thread."""

    def __init__(self, responder):
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.transport, _ = self.loop.run_until_complete(self.loop.create_datagram_endpoint(
                lambda: UdpProtocol(responder), local_addr=("127.0.0.1", self.port)))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self):
        self.loop.call_soon_threadsafe(self.transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def metric(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    assert m, (name, labels)
    return float(m.group(1))


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_every_view_agrees_with_dns(tmp_path, row):
    _id, rmeta, smeta, recmeta, feeds, health, drains, expected = row
    state = build_state(ROOT / "zones", write_config(tmp_path, rmeta, smeta, recmeta))
    status = Status(
        generation=1,
        drains=MappingProxyType({(r, s): drain(r, s, c) for r, s, c in drains}),
        health=MappingProxyType({(r, "web"): ok for r, ok in health.items()}),
        feeds=MappingProxyType({(r, s): MappingProxyType(v) for r, s, v in feeds}),
    )
    inv = Inventory(status)
    holder = StateHolder(state)
    controller = Controller(lambda: holder.state, inv, None, tmp_path / "state")
    metrics = Metrics()
    metrics.bind(lambda: holder.state, inv)
    text = metrics.render().decode()
    view = controller.regions()["regions"]
    serving = {r for r, reason in expected.items() if reason in ("up", "held", "fail_open", "no_up_filter")}

    # the one function
    snap = region_state.snapshot(state, status)
    assert {r: snap.get(r, "web").reason for r in expected} == expected
    for r, reason in expected.items():
        # status and /regions
        svc = view[r]["services"]["web"]
        assert (svc["reason"], svc["serving"]) == (reason, r in serving), r
        # metrics
        assert metric(text, "filterdns_region_serving", region=r, service="web") == (r in serving)
        assert metric(text, "filterdns_region_state", region=r, service="web", state=reason) == 1
        assert metric(text, "filterdns_region_held", region=r, service="web") == (reason == "held")

    # explain (the --live path runs this with the server's Status)
    out = explain(state, "t.example.com", "A", client_from(subnet="81.2.69.0/24"), status, random.Random(0))
    for r, reason in expected.items():
        line = f"  {r}: {'serving' if r in serving else 'not serving'} [{reason}]"
        assert (line in out) == (reason != "up"), (line, out)
    if serving:
        m = re.search(r"^answer \(A, ttl 5\): (.*)$", out, re.M)
        assert m and set(m.group(1).split(", ")) == serving, out
    else:
        assert "answer: NODATA (no region selected)" in out

    # a real query over UDP to the responder
    srv = UdpServer(Responder(holder, inv))
    try:
        q = dns.message.make_query("t.example.com.", "A")
        r = dns.query.udp(q, "127.0.0.1", port=srv.port, timeout=5)
    finally:
        srv.stop()
    got = {rr.address for rrset in r.answer for rr in rrset}
    assert got == {ADDR[x] for x in serving}
    if not serving:
        assert r.rcode() == 0 and r.authority, "NODATA with the SOA"


def test_check_drain_is_pure_and_counts_effective_state(tmp_path):
    """The safety rule needs nothing but (config State, Status): fleet stores call it on the state
    they are about to commit."""
    state = build_state(ROOT / "zones", write_config(tmp_path, UP3, {}, None))
    st = Status(feeds=MappingProxyType({("r2", "web"): MappingProxyType({"up": False}),
                                        ("r3", None): MappingProxyType({"up": False})}))
    verdict = region_state.check_drain(state, st, drain("r1", None, "operator"))
    assert not verdict.allowed
    assert "r1 is the last region of web that is serving and up" in verdict.problems[0]
    assert "DNS fails open to 2 region(s) believed down (r2, r3)" in verdict.problems[0]
    # draining a region that is already out changes nothing DNS does: allowed
    assert region_state.check_drain(state, st, drain("r2", "web", "operator")).allowed
    # health: the share counts every region out or down, not only drains
    ok = Status()
    assert region_state.check_drain(state, ok, drain("r1", "web", "health"), max_share=0.34).allowed
    assert not region_state.check_drain(state, st.__class__(feeds=MappingProxyType(
        {("r3", None): MappingProxyType({"up": False})})), drain("r1", "web", "health"), max_share=0.34).allowed


def test_records_that_see_a_region_differently_are_listed(tmp_path):
    """Two records of one service: one reads `up`, one has no `up` filter. The service view is
    that of the first by name; the other record's differing states are listed in /regions."""
    chains = write_config(tmp_path, {"r2": "{up: true}", "r3": "{up: true}"}, {}, None)
    with open(chains / "c.yaml", "a") as f:
        f.write("  u.example.com:\n    service: web\n    types: [A]\n    chain: [geotarget_country]\n")
    state = build_state(ROOT / "zones", chains)
    inv = Inventory(Status())
    controller = Controller(lambda: state, inv, None, tmp_path / "state")
    row = controller.regions()["regions"]["r1"]["services"]["web"]
    # t.example.com (reads up) is the service's view: r1 has no up value, so it is out
    assert (row["serving"], row["reason"]) == (False, "no_up_meta")
    assert row["records"] == {"u.example.com.": region_state.RegionState(
        "r1", "web", True, "no_up_filter",
        "no up value at record, region or service level (unset counts as down); served anyway: "
        "no enabled up filter in the chain", None, "", False, None, None).to_json()}
    # and DNS agrees: u answers r1 (the nearest for a GB client), t never does
    out_u = explain(state, "u.example.com", "A", client_from(subnet="81.2.69.0/24"), inv.status)
    out_t = explain(state, "t.example.com", "A", client_from(subnet="81.2.69.0/24"), inv.status)
    assert re.search(r"^answer \(A, ttl 30\): r1, ", out_u, re.M), out_u
    assert "r1" not in re.search(r"^answer \(A, ttl 5\): (.*)$", out_t, re.M).group(1)
