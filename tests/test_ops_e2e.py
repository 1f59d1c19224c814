"""Operating a real server: metrics after real queries, drains through the CLI seen by dig,
drains surviving a restart, the safety rule, authentication, and reloads (bad config kept out,
a burst of reloads under query load losing nothing)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import dns.edns
import dns.message
import pytest

from conftest import ROOT, free_port, start_server

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789abcdef"
GB = [dns.edns.ECSOption("81.2.69.0", 24)]
LONDON = {"192.0.2.161", "192.0.2.162"}


def addrs(r):
    return {rr.address for rrset in r.answer for rr in rrset}


def ops_server(tmp_path, chains=None):
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    mport, cport = free_port(), free_port()
    sp = start_server(tmp_path, "--metrics", f"127.0.0.1:{mport}", "--control", f"127.0.0.1:{cport}",
                      "--control-token-file", str(tok), chains=chains)
    sp.mport, sp.cport, sp.token_file = mport, cport, str(tok)
    return sp


def cli(sp, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "filterdns", *args, "--control", f"127.0.0.1:{sp.cport}",
                           "--token-file", sp.token_file], capture_output=True, text=True, timeout=30, env=env)


def http(sp, method, path, body=None, token=TOKEN):
    req = urllib.request.Request(f"http://127.0.0.1:{sp.cport}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def gb(sp):
    return addrs(sp.query("wss-primary.example.com.", "A", use_edns=0, options=GB))


@pytest.fixture
def osrv(tmp_path):
    sp = ops_server(tmp_path)
    yield sp
    sp.stop()


def test_metrics_after_real_queries(osrv):
    for _ in range(5):
        gb(osrv)
    osrv.query("nope.example.com.", "A")
    osrv.query("example.com.", "SOA", tcp=True)
    text = urllib.request.urlopen(f"http://127.0.0.1:{osrv.mport}/metrics", timeout=5).read().decode()
    assert 'filterdns_queries_total{qtype="A",rcode="NOERROR",transport="udp"}' in text
    assert 'filterdns_queries_total{qtype="A",rcode="NXDOMAIN",transport="udp"}' in text
    assert 'filterdns_queries_total{qtype="SOA",rcode="NOERROR",transport="tcp"}' in text
    assert 'filterdns_answers_total{record="wss-primary.example.com.",region="eu-west-2"} 5.0' in text
    assert "filterdns_request_duration_seconds_bucket" in text
    assert "filterdns_config_generation 1.0" in text
    assert 'filterdns_region_up{region="eu-west-2",service="wss"} 1.0' in text


def test_drain_and_undrain_through_the_cli(osrv, tmp_path):
    assert gb(osrv) == LONDON
    r = cli(osrv, "drain", "eu-west-2", "--reason", "LB maintenance")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    while gb(osrv) & LONDON:
        assert time.monotonic() - t0 < 1.0
        time.sleep(0.02)
    st = cli(osrv, "status")
    assert st.returncode == 0 and "eu-west-2" in st.stdout and "LB maintenance" in st.stdout
    r = cli(osrv, "undrain", "eu-west-2")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    while gb(osrv) != LONDON:
        assert time.monotonic() - t0 < 1.0
        time.sleep(0.02)
    audit = (tmp_path / "state" / "audit.log").read_text().splitlines()
    actions = [json.loads(line)["action"] for line in audit]
    assert actions[-2:] == ["drain", "undrain"]


def test_drain_survives_restart(tmp_path):
    sp = ops_server(tmp_path)
    try:
        assert cli(sp, "drain", "eu-west-2", "--service", "wss", "--reason", "kept").returncode == 0
    finally:
        sp.stop()
    sp = ops_server(tmp_path)
    try:
        assert gb(sp) and not gb(sp) & LONDON  # drained from the first answer on
        # the api service of the same region was not drained
        r = sp.query("api.example.com.", "A", use_edns=0, options=GB)
        assert addrs(r) == {"198.51.100.161", "198.51.100.162"}
    finally:
        sp.stop()


def test_safety_rule_refuses_last_region(tmp_path):
    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains)
    import yaml
    doc = yaml.safe_load((chains / "regions.yaml").read_text())
    doc["regions"] = {k: v for k, v in doc["regions"].items() if k in ("us-east-1", "eu-west-2")}
    (chains / "regions.yaml").write_text(yaml.safe_dump(doc))
    lat = yaml.safe_load((chains / "latency.yaml").read_text())
    for table in lat["latency"].values():
        for rows in table.values():
            for row in rows.values():
                for region in [r for r in row if r not in doc["regions"]]:
                    del row[region]
    (chains / "latency.yaml").write_text(yaml.safe_dump(lat))
    sp = ops_server(tmp_path, chains=chains)
    try:
        assert cli(sp, "drain", "us-east-1", "--reason", "one").returncode == 0
        r = cli(sp, "drain", "eu-west-2", "--reason", "two")
        assert r.returncode == 1 and "last" in (r.stdout + r.stderr).lower()
        assert gb(sp) == LONDON  # nothing changed
        r = cli(sp, "drain", "eu-west-2", "--reason", "two", "--force")
        assert r.returncode == 0
    finally:
        sp.stop()


def test_unauthenticated_changes_get_401_and_change_nothing(osrv):
    for token in (None, "wrong-token-wrong-token"):
        code, body = http(osrv, "POST", "/regions/eu-west-2/drain", {"reason": "x"}, token=token)
        assert code == 401 and "error" in body
        code, _ = http(osrv, "POST", "/regions/eu-west-2/feed", {"values": {"up": False}}, token=token)
        assert code == 401
        code, _ = http(osrv, "POST", "/reload", {}, token=token)
        assert code == 401
    assert gb(osrv) == LONDON
    code, body = http(osrv, "GET", "/regions", token=None)  # reads need no token
    assert code == 200


def test_bad_requests_are_4xx_and_change_nothing(osrv):
    assert http(osrv, "POST", "/regions/nowhere-1/drain", {"reason": "x"})[0] == 404
    assert http(osrv, "POST", "/regions/eu-west-2/feed", {"values": {"connections": "lots"}})[0] == 400
    assert http(osrv, "POST", "/regions/eu-west-2/drain", {"service": "nope", "reason": "x"})[0] in (400, 404)
    assert gb(osrv) == LONDON


def test_feed_over_high_watermark_sheds_region(osrv):
    code, _ = http(osrv, "POST", "/regions/eu-west-2/feed", {"service": "wss", "values": {"connections": 9000}})
    assert code == 200
    assert gb(osrv) and not gb(osrv) & LONDON
    http(osrv, "POST", "/regions/eu-west-2/feed", {"service": "wss", "values": {"connections": 100}})
    assert gb(osrv) == LONDON


def test_broken_chain_yaml_on_reload_keeps_old_answers(tmp_path):
    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains)
    sp = ops_server(tmp_path, chains=chains)
    try:
        edge = chains / "edge.yaml"
        edge.write_text(edge.read_text().replace("select_first_n: {n: 1}", "select_first_n: {n: 0}", 1))
        r = cli(sp, "reload")
        assert r.returncode == 1
        out = r.stdout + r.stderr
        assert "edge.yaml:" in out and "n" in out
        assert gb(sp) == LONDON
        code, _ = http(sp, "GET", "/regions")
        assert code == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{sp.mport}/metrics", timeout=5).read().decode()
        assert 'filterdns_reloads_total{result="failure"}' in text
        assert "filterdns_config_generation 1.0" in text
    finally:
        sp.stop()


def test_file_change_triggers_reload(tmp_path):
    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains)
    sp = ops_server(tmp_path, chains=chains)
    try:
        edge = chains / "edge.yaml"
        edge.write_text(edge.read_text().replace("ttl: 20\n    chain: wss-primary", "ttl: 7\n    chain: wss-primary"))
        t0 = time.monotonic()
        while True:
            r = sp.query("wss-primary.example.com.", "A", use_edns=0, options=GB)
            if r.answer and r.answer[0].ttl == 7:
                break
            assert time.monotonic() - t0 < 5, sp.log()
            time.sleep(0.1)
    finally:
        sp.stop()


def test_reload_burst_under_query_load_loses_nothing(tmp_path):
    sp = ops_server(tmp_path)
    stop = threading.Event()
    results = {"sent": 0, "ok": 0, "bad": []}

    def load():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        q = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0, options=GB)
        i = 0
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            i += 1
            q.id = i & 0xFFFF
            s.sendto(q.to_wire(), ("127.0.0.1", sp.port))
            results["sent"] += 1
            try:
                r = dns.message.from_wire(s.recv(4096))
            except socket.timeout:
                results["bad"].append("timeout")
                continue
            if r.rcode() == 0 and addrs(r) == LONDON:
                results["ok"] += 1
            else:
                results["bad"].append(r.to_text())
        s.close()

    t = threading.Thread(target=load)
    t.start()
    try:
        for _ in range(20):
            code, body = http(sp, "POST", "/reload", {})
            assert code == 200, body
        os.kill(sp.proc.pid, 1)  # and SIGHUP
        deadline = time.monotonic() + 15  # the SIGHUP reload is asynchronous: poll, don't guess
        while "generation 22" not in sp.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(35)
        sp.stop()
    assert results["sent"] > 100
    assert results["bad"] == [] and results["ok"] == results["sent"]
    assert "generation 22" in sp.log()


def test_explain_live_uses_the_running_servers_drains(osrv):
    assert cli(osrv, "drain", "eu-west-2", "--service", "wss", "--reason", "explain me").returncode == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "filterdns", "explain", "wss-primary.example.com", "--subnet", "81.2.69.0/24",
            "--zones", str(ROOT / "zones"), "--chains", str(ROOT / "chains")]
    offline = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env)
    live = subprocess.run(base + ["--live", f"127.0.0.1:{osrv.cport}"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert offline.returncode == 0 and live.returncode == 0, live.stderr
    assert "answer (A, ttl 20): eu-west-2" in offline.stdout
    assert "eu-west-2: not serving [operator_drain] drained by operator:" in live.stdout
    assert "answer (A, ttl 20): eu-west-1" in live.stdout
