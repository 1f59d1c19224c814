"""Drains that hold, over a real server, with the answers checked by dnspython:

* operator drains are hard and the safety rule counts effective state (issue: feed up:false to
  11 of 13 regions, then drain the 2 left; and a service with no up metadata at all);
* health drains are soft and capped by --max-drain-share: a failing region the cap holds stays
  in DNS, shown as held in status, /regions, metrics and the audit log, and is drained as soon
  as the cap allows;
* drain --for, feed --ttl and feed --clear, each audited."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import dns.edns
import pytest

from conftest import free_port, start_server
from test_ops_e2e import TOKEN, cli, http

from filterdns.routing.geo import COUNTRY_DB

pytestmark = pytest.mark.e2e

GB = [dns.edns.ECSOption("81.2.69.0", 24)]
# 13 regions; from a GB client the nearest are lon, then dub (on the country database, which puts
# it at GB's centroid: these tests are about drains, not about where in GB the client is)
REGIONS = [("lon", "GB", 51.5, -0.12), ("dub", "IE", 53.35, -6.26), ("ams", "NL", 52.37, 4.9),
           ("par", "FR", 48.86, 2.35), ("fra", "DE", 50.11, 8.68), ("mad", "ES", 40.42, -3.7),
           ("mil", "IT", 45.46, 9.19), ("sto", "SE", 59.33, 18.07), ("waw", "PL", 52.23, 21.01),
           ("iad", "US", 38.95, -77.45), ("sin", "SG", 1.35, 103.82), ("syd", "AU", -33.87, 151.21),
           ("nrt", "JP", 35.68, 139.69)]
ADDR = {name: f"192.0.2.{i + 1}" for i, (name, *_rest) in enumerate(REGIONS)}
NAME = {a: n for n, a in ADDR.items()}


def write_chains(tmp_path, health: str = "") -> str:
    d = tmp_path / "chains"
    d.mkdir()
    lines = ["default_region: iad", "regions:"]
    for i, (name, cc, lat, lon) in enumerate(REGIONS):
        lines += [f"  {name}:", f"    country: {cc}", f"    lat: {lat}", f"    lon: {lon}", "    services:",
                  "      wss:", f"        v4: [{ADDR[name]}]", "        meta: {up: true}",
                  # api: no up metadata at any level
                  "      api:", f"        v4: [198.51.100.{i + 1}]"]
    lines += ["chains:", "  nearest: [up, geotarget_country, {select_first_n: {n: 1}}]",
              "records:",
              "  wss.example.com: {service: wss, types: [A], ttl: 5, chain: nearest}",
              "  api.example.com: {service: api, types: [A], ttl: 5, chain: nearest}"]
    (d / "c.yaml").write_text("\n".join(lines) + "\n" + health)
    return str(d)


def serve(tmp_path, *extra, health=""):
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    mport, cport = free_port(), free_port()
    sp = start_server(tmp_path, "--metrics", f"127.0.0.1:{mport}", "--control", f"127.0.0.1:{cport}",
                      "--control-token-file", str(tok), "--geoip", str(COUNTRY_DB), *extra,
                      chains=write_chains(tmp_path, health))
    sp.mport, sp.cport, sp.token_file = mport, cport, str(tok)
    return sp


def gb(sp, name="wss.example.com."):
    r = sp.query(name, "A", use_edns=0, options=GB)
    return {NAME.get(rr.address, rr.address) for rrset in r.answer for rr in rrset}


def wait_for(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def audit(sp):
    path = sp.args_dir / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def metrics(sp):
    return urllib.request.urlopen(f"http://127.0.0.1:{sp.mport}/metrics", timeout=10).read().decode()


@pytest.fixture
def srv(tmp_path):
    sp = serve(tmp_path)
    sp.args_dir = tmp_path / "state"
    yield sp
    sp.stop()


def test_feed_down_eleven_then_drain_the_two_left(srv):
    for name, *_ in REGIONS[2:]:
        code, _ = http(srv, "POST", f"/regions/{name}/feed", {"service": "wss", "values": {"up": False}})
        assert code == 200
    assert gb(srv) == {"lon"}
    r = cli(srv, "drain", "dub", "--service", "wss", "--reason", "LB swap")
    assert r.returncode == 0, r.stderr
    assert "DNS now: wss: 1 of 13 region(s) serving; out: 1 drained by an operator (dub), 11 feed up=false" \
        in r.stdout
    # the last region that is up: refused, and the reply says what DNS would do
    r = cli(srv, "drain", "lon", "--service", "wss", "--reason", "LB swap")
    assert r.returncode == 1
    assert "is the last region of wss that is serving and up" in r.stderr
    assert "DNS fails open to 11 region(s) believed down" in r.stderr
    assert gb(srv) == {"lon"}
    # forced: both drained regions stay out; fail-open serves the nearest region believed down
    r = cli(srv, "drain", "lon", "--service", "wss", "--reason", "LB swap", "--force")
    assert r.returncode == 0 and "no region is up; DNS fails open to 11 region(s)" in r.stdout
    for _ in range(20):
        got = gb(srv)
        assert got and not got & {"lon", "dub"}, got
    assert gb(srv) == {"ams"}
    code, view = http(srv, "GET", "/regions")
    assert view["regions"]["lon"]["services"]["wss"]["reason"] == "operator_drain"
    assert view["regions"]["ams"]["services"]["wss"]["reason"] == "fail_open"
    assert view["regions"]["ams"]["services"]["wss"]["serving"] is True


def test_service_without_up_metadata_cannot_be_drained_to_nothing(srv):
    # api has no up at any level: the up filter fails open over every region; a drain that takes
    # one of them out leaves nothing up, so it is refused
    code, data = http(srv, "POST", "/regions/lon/drain", {"service": "api", "reason": "x"})
    assert code == 409, data
    assert "would leave no region of api serving and up" in data["error"]
    assert data["services"]["api"]["up"] == 0
    code, view = http(srv, "GET", "/regions")
    assert view["regions"]["lon"]["services"]["api"]["reason"] == "fail_open"
    assert "no region is up" in view["services"]["api"]
    assert gb(srv, "api.example.com.") == {"198.51.100.1"}  # lon, served by fail-open
    text = metrics(srv)
    assert 'filterdns_region_state{region="lon",service="api",state="fail_open"} 1.0' in text
    assert 'filterdns_region_up{region="lon",service="api"} 0.0' in text
    assert 'filterdns_region_serving{region="lon",service="api"} 1.0' in text


class Port:
    """A loopback TCP listener a health check can reach, opened and closed by the test."""

    def __init__(self):
        self.port = free_port()
        self.sock = None
        self.open()

    def open(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.sock = s

    def close(self):
        self.sock.close()
        self.sock = None


def test_max_drain_share_holds_a_failing_region_in_dns(tmp_path):
    lon, dub = Port(), Port()
    health = ("health:\n  defaults: {interval: 0.1, timeout: 0.05, rise: 1, fall: 1}\n  checks:\n"
              f"    - {{region: lon, service: wss, type: tcp, address: 127.0.0.1, port: {lon.port}}}\n"
              f"    - {{region: dub, service: wss, type: tcp, address: 127.0.0.1, port: {dub.port}}}\n")
    sp = serve(tmp_path, "--max-drain-share", "0.1", health=health)
    sp.args_dir = tmp_path / "state"
    try:
        assert gb(sp) == {"lon"}
        lon.close()
        dub.close()
        # 0.1 of 13 regions: one may be out. The first to fail is drained, the other is held
        wait_for(lambda: {x["action"] for x in audit(sp) if x["cause"] == "health"} >= {"drain", "held"})
        drained = next(x["region"] for x in audit(sp) if x["action"] == "drain")
        kept = ({"lon", "dub"} - {drained}).pop()
        ports = {"lon": lon, "dub": dub}
        held = next(x for x in audit(sp) if x["action"] == "held")
        assert held["region"] == kept and held["cause"] == "health"
        assert held["state"] == "failing, held in DNS by the safety rule"
        assert "more than the allowed share 0.1" in held["detail"][0]
        for _ in range(10):
            assert gb(sp) == {kept}  # held in DNS: its clients did not move
        code, view = http(sp, "GET", "/regions")
        row = view["regions"][kept]["services"]["wss"]
        assert (row["health"], row["reason"], row["serving"], row["held"]) == ("down", "held", True, True)
        assert view["regions"][drained]["services"]["wss"]["reason"] == "health_drain"
        st = cli(sp, "status")
        line = next(x for x in st.stdout.splitlines() if x.startswith(f"{kept} ") and " wss " in x)
        assert " held " in line and "failing, held in DNS by the safety rule" in line
        text = metrics(sp)
        assert f'filterdns_region_held{{region="{kept}",service="wss"}} 1.0' in text
        assert f'filterdns_region_state{{region="{drained}",service="wss",state="health_drain"}} 1.0' in text
        assert 'filterdns_drain_refused_total{cause="health"} 1.0' in text
        # the drained one recovers: it is undrained, and the held one is drained as soon as the cap allows
        ports[drained].open()
        wait_for(lambda: ("drain", kept) in {(x["action"], x["region"]) for x in audit(sp)})
        wait_for(lambda: gb(sp) == {drained})
        code, view = http(sp, "GET", "/regions")
        assert view["regions"][kept]["services"]["wss"]["reason"] == "health_drain"
        assert view["regions"][drained]["services"]["wss"]["reason"] == "up"
    finally:
        sp.stop()
        lon.sock and lon.close()
        dub.sock and dub.close()


def test_drain_for_expires_and_is_audited(srv):
    r = cli(srv, "drain", "lon", "--service", "wss", "--reason", "kernel upgrade", "--for", "2s")
    assert r.returncode == 0 and "until " in r.stdout, r.stderr
    assert gb(srv) == {"dub"}
    code, view = http(srv, "GET", "/regions")
    assert view["regions"]["lon"]["services"]["wss"]["drain"]["until"] > time.time()
    wait_for(lambda: gb(srv) == {"lon"}, timeout=15)
    exp = [x for x in audit(srv) if x["action"] == "expire"]
    assert len(exp) == 1 and exp[0]["region"] == "lon" and exp[0]["reason"] == "kernel upgrade"
    assert exp[0]["dns"]["wss"] == "13 of 13 region(s) serving"
    # over the API, in seconds; bad durations are refused and change nothing
    code, data = http(srv, "POST", "/regions/lon/drain", {"service": "wss", "reason": "x", "for": "soon"})
    assert code == 400 and "duration" in data["error"]
    code, data = http(srv, "POST", "/regions/lon/drain", {"service": "wss", "reason": "x", "for": 1.5})
    assert code == 200 and data["drain"]["until"] - data["drain"]["since"] == pytest.approx(1.5)


def test_feed_ttl_and_clear(srv):
    r = cli(srv, "feed", "lon", "--service", "wss", "--up", "0", "--ttl", "2s")
    assert r.returncode == 0, r.stderr
    assert gb(srv) == {"dub"}
    wait_for(lambda: gb(srv) == {"lon"}, timeout=15)
    exp = [x for x in audit(srv) if x["action"] == "expire"]
    assert exp and exp[0]["detail"] == {"key": "up", "value": False}
    code, view = http(srv, "GET", "/regions")
    assert view["regions"]["lon"]["services"]["wss"]["feeds"] == {}
    # clear: by CLI and by DELETE on the feed
    assert cli(srv, "feed", "lon", "--service", "wss", "--up", "false", "--loadavg", "2").returncode == 0
    assert gb(srv) == {"dub"}
    r = cli(srv, "feed", "lon", "--service", "wss", "--clear", "up", "--reason", "feeder is dead")
    assert r.returncode == 0 and "cleared up" in r.stdout, r.stderr
    assert gb(srv) == {"lon"}
    code, view = http(srv, "GET", "/regions")
    assert view["regions"]["lon"]["services"]["wss"]["feeds"] == {"loadavg": 2.0}
    code, data = http(srv, "DELETE", "/regions/lon/feed", {"service": "wss"})
    assert code == 200 and data["cleared"] == {"loadavg": 2.0}
    code, data = http(srv, "DELETE", "/regions/lon/feed", {"service": "wss"})
    assert code == 200 and data["changed"] is False
    clears = [x for x in audit(srv) if x["action"] == "feed_clear"]
    assert [c["detail"]["cleared"] for c in clears] == [{"up": False}, {"loadavg": 2.0}]
    assert clears[0]["reason"] == "feeder is dead"
