"""deploy/grafana/filterdns.json against a real Prometheus scraping a real filterdns.

filterdns serves the bundled config plus one failing health check (so health, drain and probe
series exist) and gets a little of every kind of traffic and an operator drain; /usr/bin/prometheus
scrapes it every second with deploy/prometheus/alerts.yml loaded. Then every PromQL expression of
the dashboard (its panels and its variables), with Grafana's variables filled in, is evaluated
by that Prometheus: it must parse, every metric it names must be in what Prometheus scraped, and
it must return data. The alert rules must evaluate without error there too.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import dns.edns
import dns.message
import dns.query
import pytest

from conftest import ROOT, free_port, start_server, stop_process

pytestmark = pytest.mark.e2e

DASHBOARD = ROOT / "deploy" / "grafana" / "filterdns.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TOKEN = "dashboard-test-token-0123456789"
GRAFANA_VARS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m", "$job": "filterdns",
                "$instance": ".*", "${job}": "filterdns", "${instance}": ".*"}


def expressions(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: unsupported query {q!r}"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def fill(expr: str) -> str:
    for k in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(k, GRAFANA_VARS[k])
    assert "$" not in expr, f"unfilled Grafana variable in {expr}"
    return expr


def api(port, path, **params):
    """A Prometheus HTTP API call; a 503 (Prometheus still starting: "Service Unavailable", not
    JSON) is retried for up to 60 s, every other error body is returned as Prometheus wrote it."""
    url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503 or time.monotonic() > deadline:
                return json.loads(e.read())
        time.sleep(0.5)


def _traffic(port):
    ecs = [dns.edns.ECSOption("81.2.69.0", 24)]
    for name, rdtype, kw in [("wss-primary.example.com.", "A", {"use_edns": 0, "options": ecs}),
                             ("wss-backup.example.com.", "AAAA", {"use_edns": 0, "options": ecs}),
                             ("api.example.com.", "A", {}), ("nope.example.com.", "A", {}),
                             ("example.com.", "SOA", {}), ("example.org.", "A", {}),
                             ("example.com.", "DNSKEY", {"want_dnssec": True})]:
        dns.query.udp(dns.message.make_query(name, rdtype, **kw), "127.0.0.1", port=port, timeout=3)
    dns.query.tcp(dns.message.make_query("example.com.", "NS"), "127.0.0.1", port=port, timeout=3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a malformed packet: counted
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07exa", ("127.0.0.1", port))
    # a malformed ECS option (FORMERR)
    bad = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0,
                                 options=[dns.edns.GenericOption(8, b"\x00\x01\x40\x00\x01")])
    dns.query.udp(bad, "127.0.0.1", port=port, timeout=3)


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    chains = tmp / "chains"
    shutil.copytree(ROOT / "chains", chains)
    closed = free_port()  # nothing listens here: the check fails, the region's wss is drained
    (chains / "health.yaml").write_text(
        "health:\n  checks:\n    - {region: sa-east-1, service: wss, type: tcp, address: 127.0.0.1, "
        f"port: {closed}, interval: 0.2, timeout: 0.1, rise: 1, fall: 1}}\n")
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "token").chmod(0o600)
    mport, cport = free_port(), free_port()
    fd = start_server(tmp, "--metrics", f"127.0.0.1:{mport}", "--control", f"127.0.0.1:{cport}",
                      "--control-token-file", str(tmp / "token"), chains=chains)
    pport = free_port()
    shutil.copy(ALERTS, tmp / "alerts.yml")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: filterdns\n    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n")
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        _traffic(fd.port)
        for path, body in (("/regions/eu-central-1/drain", {"reason": "dashboard test"}),
                           ("/regions/us-east-1/feed", {"service": "wss", "values": {"connections": 1234, "requests": 50,
                                                                            "loadavg": 0.7, "up": True}})):
            req = urllib.request.Request(f"http://127.0.0.1:{cport}{path}", method="POST",
                                         data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200, path
        deadline = time.monotonic() + 90
        while True:  # until a few scrapes of the filterdns target are stored
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                r = api(pport, "/api/v1/query", query='count_over_time(up{job="filterdns"}[1m])')
                if r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= 8:
                    up = api(pport, "/api/v1/query", query='up{job="filterdns"}')["data"]["result"]
                    assert up and up[0]["value"][1] == "1", up
                    break
            except (OSError, KeyError, ValueError):  # ValueError: a 503 "Service Unavailable" while it starts
                pass
            assert time.monotonic() < deadline, (tmp / "prometheus.log").read_text()
            _traffic(fd.port)
            time.sleep(0.5)
        yield pport
    finally:
        stop_process(proc, 20)
        fd.stop()


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "filterdns" and dash["title"] and dash["schemaVersion"] >= 30
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "job", "instance"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]


def test_every_expression_evaluates_on_real_data(prom):
    dash = json.loads(DASHBOARD.read_text())
    exprs = expressions(dash)
    assert len(exprs) >= 25
    scraped = set(api(prom, "/api/v1/label/__name__/values")["data"])
    problems = []
    for where, expr in exprs:
        q = fill(expr)
        for name in set(re.findall(r"\b(filterdns_\w+)", q)):
            if name not in scraped:
                problems.append(f"{where}: metric {name} is not exported")
        r = api(prom, "/api/v1/query", query=q)
        if r.get("status") != "success":
            problems.append(f"{where}: {r.get('errorType')}: {r.get('error')} in {q}")
        elif not r["data"]["result"]:
            problems.append(f"{where}: no data for {q}")
    assert problems == [], "\n".join(problems)


def test_alert_rules_evaluate_on_real_data(prom):
    deadline = time.monotonic() + 30
    while True:
        groups = api(prom, "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert len(rules) >= 8
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    scraped = set(api(prom, "/api/v1/label/__name__/values")["data"])
    for r in rules:
        for name in set(re.findall(r"\b(filterdns_\w+)", r["query"])):
            assert name in scraped, f"alert {r['name']}: metric {name} is not exported"
