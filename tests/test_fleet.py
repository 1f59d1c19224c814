"""A fleet of filterdns instances on a real 3-member etcd cluster (issue 9 "Fleet state on etcd").

Drains propagate to every instance within a second (checked with dig), concurrent drains are
compare-and-swap, one etcd member down changes nothing, all down: last state kept, changes
refused, metrics stale, then resync including what changed while an instance was cut off;
health verdicts from several vantage points under quorum and any.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from conftest import ROOT
from fleet_helpers import EtcdCluster, Proxy, api, metrics, reduced_chains, start_instance, wait_for
from test_ops_e2e import GB, LONDON, addrs

pytestmark = pytest.mark.e2e

if not shutil.which("etcd"):
    pytest.skip("etcd not installed (tests/run.sh installs etcd-server)", allow_module_level=True)


def gb(sp):
    return addrs(sp.query("wss-primary.example.com.", "A", use_edns=0, options=GB, timeout=1.0))


def dig_gb(sp) -> set[str]:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(sp.port), "+short", "+subnet=81.2.69.0/24",
                          "+tries=1", "+time=2", "wss-primary.example.com", "A"],
                         capture_output=True, text=True, timeout=10).stdout
    return {x for x in out.split() if x[0].isdigit()}


@pytest.fixture
def etcd(tmp_path):
    c = EtcdCluster(tmp_path / "etcd", 3)
    (tmp_path / "etcd").mkdir()
    c.start()
    yield c
    c.stop()


@pytest.fixture
def fleet(tmp_path, etcd):
    started = []

    def start(n=3, *extra, chains=None, urls=None):
        for i in range(n):
            url = urls[i] if urls else etcd.url()
            started.append(start_instance(tmp_path, f"i{len(started) + 1}", url, *extra,
                                          chains=chains[i] if isinstance(chains, list) else chains))
        return started[-n:]

    yield start
    for sp in started:
        sp.stop()


def drain(sp, region, service="wss", force=False):
    return api(sp, "POST", f"/regions/{region}/drain",
               {"service": service, "reason": "test", "actor": "alice", "force": force})


def undrain(sp, region, service="wss"):
    return api(sp, "DELETE", f"/regions/{region}/drain", {"service": service, "actor": "alice"})


def test_drain_on_one_instance_is_seen_by_dig_on_the_others_within_1s(fleet):
    i1, i2, i3 = fleet(3)
    for sp in (i1, i2, i3):
        assert gb(sp) == LONDON
    status, body = drain(i1, "eu-west-2")
    assert status == 200, body
    t_ack = time.monotonic()
    for sp in (i2, i3):
        wait_for(lambda sp=sp: not gb(sp) & LONDON, 1.0, f"{sp.name} still answers the drained region")
        assert dig_gb(sp) and not dig_gb(sp) & LONDON
    assert time.monotonic() - t_ack < 2.0  # both (checked one after the other)
    # undrain and feed values propagate the same way
    assert undrain(i2, "eu-west-2")[0] == 200
    for sp in (i1, i3):
        wait_for(lambda sp=sp: gb(sp) == LONDON, 1.0, f"{sp.name} did not see the undrain")
    status, body = api(i3, "POST", "/regions/eu-west-2/feed", {"service": "wss", "values": {"up": False}})
    assert status == 200, body
    for sp in (i1, i2):
        wait_for(lambda sp=sp: not gb(sp) & LONDON, 1.0, f"{sp.name} did not see the feed value")
    # the audit log is the fleet's: every instance shows who did what where
    status, body = api(i1, "GET", "/audit", token=None)
    actions = [(e["action"], e["instance"], e["actor"]) for e in body["entries"] if e["action"] != "reload"]
    assert actions[:2] == [("drain", "i1", "operator:alice"), ("undrain", "i2", "operator:alice")]
    out = subprocess.run(["python3", "-m", "filterdns", "audit", "--control", f"127.0.0.1:{i3.cport}"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0 and "i1" in out.stdout and "drain" in out.stdout, out.stderr
    # and status shows the fleet
    out = subprocess.run(["python3", "-m", "filterdns", "status", "--control", f"127.0.0.1:{i2.cport}"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in ("i1", "i2", "i3"):
        assert name in out.stdout
    assert "etcd" in out.stdout and "generation" in out.stdout


def test_concurrent_drains_exactly_one_succeeds(tmp_path, fleet):
    chains = reduced_chains(tmp_path / "chains")
    i1, i2 = fleet(2, chains=chains)
    for round_ in range(5):
        barrier = threading.Barrier(2)
        results = {}

        def go(sp, region, barrier=barrier, results=results):
            barrier.wait()
            results[region] = drain(sp, region)

        ts = [threading.Thread(target=go, args=(i1, "us-east-1")),
              threading.Thread(target=go, args=(i2, "eu-west-2"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        codes = sorted(s for s, _ in results.values())
        assert codes == [200, 409], results
        won = next(r for r, (s, _) in results.items() if s == 200)
        for sp in (i1, i2):  # and every instance still answers wss from the other region
            wait_for(lambda sp=sp, won=won: api(sp, "GET", "/regions", token=None)[1]["regions"][won]
                     ["services"]["wss"]["drained"], 2.0, f"{sp.name}: drain of {won} not seen")
            assert gb(sp)
        assert undrain(i1 if round_ % 2 else i2, won)[0] == 200
        for sp in (i1, i2):
            wait_for(lambda sp=sp, won=won: not api(sp, "GET", "/regions", token=None)[1]["regions"][won]["services"]
                     ["wss"]["drained"], 2.0, "undrain not seen")


def test_etcd_outage_keeps_last_state_refuses_changes_and_resyncs(tmp_path, etcd, fleet):
    proxy = Proxy(etcd.client_ports[0])
    try:
        urls = [etcd.url(), etcd.url(), f"etcd://127.0.0.1:{proxy.port}/filterdns"]
        i1, i2, i3 = fleet(3, urls=urls)
        assert drain(i1, "eu-west-2")[0] == 200
        for sp in (i2, i3):
            wait_for(lambda sp=sp: not gb(sp) & LONDON, 1.0, "drain not seen")
        # one member down: nothing changes, changes still work
        etcd.kill(1)
        time.sleep(1.0)
        for sp in (i1, i2, i3):
            assert not gb(sp) & LONDON
            assert "filterdns_state_store_up{kind=\"etcd\"} 1.0" in metrics(sp)
        assert drain(i2, "eu-west-1")[0] == 200
        wait_for(lambda: api(i1, "GET", "/regions", token=None)[1]["regions"]["eu-west-1"]["services"]["wss"]
                 ["drained"], 2.0, "drain with one member down not seen")
        etcd.start(1)
        # i3 is cut off from etcd; a change made meanwhile reaches it when it is back
        proxy.cut()
        wait_for(lambda: "filterdns_state_store_up{kind=\"etcd\"} 0.0" in metrics(i3), 10, "i3 not stale")
        assert undrain(i1, "eu-west-2")[0] == 200
        wait_for(lambda: gb(i2) == LONDON, 1.0, "undrain not seen on i2")
        assert not gb(i3) & LONDON  # still the last state it knew
        status, body = drain(i3, "us-east-1")
        assert status == 503 and "etcd unreachable" in body["error"], body
        proxy.restore()
        wait_for(lambda: gb(i3) == LONDON, 10, "i3 did not resync the undrain made while cut off")
        # every member down: last state kept, mutations refused, metrics stale
        for j in range(3):
            etcd.kill(j)
        for sp in (i1, i2, i3):
            wait_for(lambda sp=sp: "filterdns_state_store_up{kind=\"etcd\"} 0.0" in metrics(sp), 10, f"{sp.name} not stale")
        time.sleep(1.5)
        for sp in (i1, i2, i3):
            assert gb(sp) == LONDON  # eu-west-2 undrained, eu-west-1 still drained: unchanged
            status, body = drain(sp, "us-east-1")
            assert status == 503 and "refuses changes until etcd is back" in body["error"], body
            text = metrics(sp)
            stale = float(next(x.split()[1] for x in text.splitlines()
                               if x.startswith("filterdns_state_store_staleness_seconds")))
            assert stale >= 1.0
            regions = api(sp, "GET", "/regions", token=None)[1]
            assert regions["store"]["up"] is False and regions["regions"]["eu-west-1"]["services"]["wss"]["drained"]
        assert "state store etcd unreachable" in i1.log()
        # a cold start with etcd down serves the local snapshot
        i2.stop()
        i2b = start_instance(tmp_path, "i2", etcd.url())
        try:
            regions = api(i2b, "GET", "/regions", token=None)[1]
            assert regions["regions"]["eu-west-1"]["services"]["wss"]["drained"] is True
            assert regions["store"]["up"] is False
            etcd.start()
            for sp in (i1, i3, i2b):
                wait_for(lambda sp=sp: "filterdns_state_store_up{kind=\"etcd\"} 1.0" in metrics(sp), 20, f"{sp.name} not back")
            assert undrain(i2b, "eu-west-1")[0] == 200
            for sp in (i1, i3):
                wait_for(lambda sp=sp: not api(sp, "GET", "/regions", token=None)[1]["regions"]["eu-west-1"]
                         ["services"]["wss"]["drained"], 1.0, "undrain after the outage not seen")
        finally:
            i2b.stop()
    finally:
        proxy.close()


def _health_chains(tmp_path, name, port):
    chains = tmp_path / f"chains-{name}"
    shutil.copytree(ROOT / "chains", chains)
    (chains / "health.yaml").write_text(
        "health:\n"
        "  defaults: {interval: 0.2, timeout: 0.2, rise: 2, fall: 2}\n"
        "  checks:\n"
        f"    - {{region: eu-west-2, service: wss, type: tcp, address: 127.0.0.1, port: {port}}}\n")
    return chains


@pytest.mark.parametrize("policy,drained", [("quorum", False), ("any", True)])
def test_health_from_several_vantage_points(tmp_path, fleet, policy, drained):
    import socket
    # one "load balancer" with a port per instance: i1 probes port A, i2 and i3 probe port B
    lb_a, lb_b = socket.socket(), socket.socket()
    for s in (lb_a, lb_b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
    try:
        a, b = lb_a.getsockname()[1], lb_b.getsockname()[1]
        chains = [_health_chains(tmp_path, "i1", a), _health_chains(tmp_path, "i2", b),
                  _health_chains(tmp_path, "i3", b)]
        i1, i2, i3 = fleet(3, "--health-policy", policy, chains=chains)

        def verdicts():
            fleet_view = api(i2, "GET", "/regions", token=None)[1]["fleet"]
            return {n: v["verdicts"].get("eu-west-2/wss") for n, v in fleet_view["instances"].items()}
        wait_for(lambda: verdicts() == {"i1": "up", "i2": "up", "i3": "up"}, 15, "verdicts not published")
        lb_a.close()  # only i1 loses its path to the load balancer
        wait_for(lambda: verdicts() == {"i1": "down", "i2": "up", "i3": "up"}, 15, "i1's verdict not down")
        if drained:
            for sp in (i1, i2, i3):
                wait_for(lambda sp=sp: not gb(sp) & LONDON, 5, f"{sp.name}: not drained under any")
        else:
            time.sleep(1.5)
            for sp in (i1, i2, i3):
                assert gb(sp) == LONDON
        time.sleep(0.5)
        entries = api(i1, "GET", "/audit", token=None)[1]["entries"]
        health_drains = [e for e in entries if e["cause"] == "health" and e["action"] == "drain"]
        assert len(health_drains) == (1 if drained else 0), health_drains  # once for the fleet
        status = api(i3, "GET", "/regions", token=None)[1]
        assert len({v["config_hash"] for v in status["fleet"]["instances"].values()}) == 2
        assert status["fleet"]["effective_health"]["eu-west-2/wss"] == ("down" if drained else "up")
    finally:
        lb_a.close()
        lb_b.close()
