"""deploy/compose/: the compose file holds together without a Docker engine - every mounted file
exists, Unbound's stub zone and ECS target are filterdns' address and port, Prometheus scrapes
filterdns' metrics port and loads the alert rules, Grafana is provisioned with that Prometheus and
the dashboard, ports are published on loopback only; promtool accepts the Prometheus config and
hadolint the inline Unbound Dockerfile. (Unbound itself runs in tests/test_deploy_unbound.py,
the dashboard's queries in tests/test_deploy_dashboard.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DIR = ROOT / "deploy" / "compose"


def compose():
    return yaml.safe_load((DIR / "compose.yaml").read_text())


def mounts(svc):
    """(host path, container path) of bind mounts; named volumes skipped."""
    out = []
    for v in svc.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith((".", "/")):
            out.append(((DIR / src).resolve(), dst))
    return out


def target_of(svc, host: Path) -> str:
    for src, dst in mounts(svc):
        if src == host.resolve():
            return dst
    raise AssertionError(f"{host} is not mounted")


@pytest.mark.unit
def test_every_mounted_file_exists_and_ports_are_loopback():
    c = compose()
    assert set(c["services"]) == {"filterdns", "unbound", "prometheus", "grafana"}
    for name, svc in c["services"].items():
        for src, _ in mounts(svc):
            assert src.exists(), f"{name}: {src} does not exist"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
    assert "filterdns.token" in c["secrets"]["filterdns_token"]["file"]
    assert "filterdns.token" in (DIR / "compose.yaml").read_text().split("name: filterdns")[0]  # documented


@pytest.mark.unit
def test_filterdns_service_matches_the_image():
    svc = compose()["services"]["filterdns"]
    assert (DIR / svc["build"]["context"]).resolve() == ROOT
    cmd = svc["command"]
    assert cmd[0] == "serve" and "[::]:8053" in cmd and "0.0.0.0:8053" in cmd and "0.0.0.0:9153" in cmd
    # Prometheus scrapes "filterdns:9153": that Host must pass the rebinding guard
    assert cmd[cmd.index("--http-allow-host") + 1] == "filterdns"
    assert svc["cap_drop"] == ["ALL"] and svc["read_only"] is True
    assert target_of(svc, ROOT / "zones") == "/etc/filterdns/zones"
    assert target_of(svc, ROOT / "chains") == "/etc/filterdns/chains"
    assert svc["environment"]["FILTERDNS_CONTROL_TOKEN_FILE"] == "/run/secrets/filterdns_token"
    assert "filterdns-state:/var/lib/filterdns" in svc["volumes"]


@pytest.mark.unit
def test_unbound_asks_filterdns_with_ecs():
    c = compose()
    ip = c["services"]["filterdns"]["networks"]["dns"]["ipv4_address"]
    conf = (DIR / "unbound" / "unbound.conf").read_text()
    assert re.search(rf"^\s*stub-addr: {re.escape(ip)}@8053$", conf, re.M)
    assert re.search(rf"^\s*send-client-subnet: {re.escape(ip)}$", conf, re.M)
    assert re.search(r'^\s*module-config: "subnetcache ', conf, re.M)
    ub = c["services"]["unbound"]
    assert target_of(ub, DIR / "unbound" / "unbound.conf") == "/etc/unbound/unbound.conf"
    assert ub["depends_on"]["filterdns"]["condition"] == "service_healthy"
    import ipaddress
    subnet = ipaddress.ip_network(c["networks"]["dns"]["ipam"]["config"][0]["subnet"])
    addrs = [s["networks"]["dns"]["ipv4_address"] for s in c["services"].values()]
    assert len(set(addrs)) == len(addrs) and all(ipaddress.ip_address(a) in subnet for a in addrs)


@pytest.mark.unit
def test_prometheus_scrapes_filterdns_and_loads_the_rules():
    c = compose()
    prom = c["services"]["prometheus"]
    cfg = yaml.safe_load((DIR / "prometheus" / "prometheus.yml").read_text())
    rules = target_of(prom, ROOT / "deploy" / "prometheus" / "alerts.yml")
    assert cfg["rule_files"] == [rules]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "filterdns")
    assert job["static_configs"][0]["targets"] == ["filterdns:9153"]


@pytest.mark.unit
def test_grafana_is_provisioned_with_prometheus_and_the_dashboard():
    c = compose()
    g = c["services"]["grafana"]
    prov = target_of(g, DIR / "grafana" / "provisioning")
    assert prov == "/etc/grafana/provisioning"
    ds = yaml.safe_load((DIR / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["isDefault"]
    dash_dir = target_of(g, ROOT / "deploy" / "grafana")
    prov_d = yaml.safe_load((DIR / "grafana/provisioning/dashboards/filterdns.yml").read_text())["providers"][0]
    assert prov_d["type"] == "file" and prov_d["options"]["path"] == dash_dir
    home = g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/") and (ROOT / "deploy" / "grafana" / Path(home).name).is_file()


@pytest.mark.e2e
def test_promtool_accepts_the_prometheus_config(tmp_path):
    cfg = (DIR / "prometheus" / "prometheus.yml").read_text()
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "filterdns-alerts.yml")
    (tmp_path / "prometheus.yml").write_text(cfg.replace("/etc/prometheus/filterdns-alerts.yml",
                                                         str(tmp_path / "filterdns-alerts.yml")))
    p = subprocess.run([shutil.which("promtool") or "/usr/bin/promtool", "check", "config",
                        str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.e2e
def test_hadolint_accepts_the_unbound_image(tmp_path):
    inline = compose()["services"]["unbound"]["build"]["dockerfile_inline"]
    (tmp_path / "Dockerfile").write_text(inline)
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    p = subprocess.run([hadolint, "--no-color", str(tmp_path / "Dockerfile")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and not p.stdout.strip(), p.stdout + p.stderr
