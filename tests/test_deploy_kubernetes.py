"""deploy/kubernetes/: schema-valid (Kubernetes' own JSON schemas via PyPI kubernetes-validate,
strict; the ServiceMonitor against the fields of the Prometheus Operator's CRD), consistent
(selectors, named ports, probes on a port the kubelet reaches, the image's user), and run: the
container's arguments with volumes laid out as the kubelet lays out ConfigMaps and Secrets
(``..data`` symlink swapped atomically on update) - the probes answer, and replacing the
ConfigMap's files changes the answers without a restart."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml

from conftest import ROOT, free_port

DIR = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30"


def docs():
    out = []
    for f in sorted(DIR.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                out.append((f.name, d))
    return out


def find(kind, name=None):
    got = [d for _, d in docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(got) == 1, (kind, name, len(got))
    return got[0]


def container():
    return find("Deployment")["spec"]["template"]["spec"]["containers"][0]


# ServiceMonitor: the fields used here, as the monitoring.coreos.com/v1 CRD defines them
SERVICEMONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                 "properties": {
                     "selector": {"type": "object", "additionalProperties": False, "properties": {
                         "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                     "namespaceSelector": {"type": "object"},
                     "jobLabel": {"type": "string"},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "properties": {
                             "port": {"type": "string"}, "path": {"type": "string"},
                             "scheme": {"enum": ["http", "https"]},
                             "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                             "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                             "honorLabels": {"type": "boolean"}}}}}}}}


@pytest.mark.unit
def test_manifests_are_schema_valid():
    import jsonschema
    import kubernetes_validate

    seen = set()
    for _fname, d in docs():
        seen.add(d["kind"])
        if d["kind"] == "ServiceMonitor":
            jsonschema.validate(d, SERVICEMONITOR_SCHEMA)
        else:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"} <= seen
    kust = yaml.safe_load((DIR / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(f.name for f in DIR.glob("*.yaml") if f.name != "kustomization.yaml")


@pytest.mark.unit
def test_schema_check_can_fail():
    import kubernetes_validate
    d = json.loads(json.dumps(find("Deployment")))
    d["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


@pytest.mark.unit
def test_manifests_agree_with_each_other_and_the_image():
    dep = find("Deployment")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    c = container()
    ports = {p["name"]: p for p in c["ports"]}
    args = c["args"]
    # DNS on both families, metrics/probes on the pod IP, control API left on loopback
    assert args[0] == "serve" and "--listen=[::]:8053" in args and "--listen=0.0.0.0:8053" in args
    assert "--metrics=0.0.0.0:9153" in args and not any(a.startswith("--control=") for a in args)
    assert ports["metrics"]["containerPort"] == 9153 and ports["dns-udp"]["containerPort"] == 8053
    for probe, path in (("readinessProbe", "/readyz"), ("startupProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    for svc in (d for _, d in docs() if d["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= labels.items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports and ports[p["targetPort"]]["protocol"] == p["protocol"]
    dns_svc = find("Service", "filterdns")
    assert {(p["port"], p["protocol"]) for p in dns_svc["spec"]["ports"]} == {(53, "UDP"), (53, "TCP")}
    sm = find("ServiceMonitor")
    msvc = find("Service", "filterdns-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= msvc["metadata"]["labels"].items()
    assert not sm["spec"]["selector"]["matchLabels"].items() <= dns_svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in msvc["spec"]["ports"]}
    pdb = find("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # hardening, and the image's user
    sc, psc = c["securityContext"], pod["spec"]["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and psc["runAsNonRoot"]
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert (str(psc["runAsUser"]), str(psc["runAsGroup"])) == user.groups()
    assert c["resources"]["limits"]["cpu"]
    # config from ConfigMaps, whole directories (a subPath mount never sees updates)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["zones"]["mountPath"] == "/etc/filterdns/zones" and "configMap" in vols["zones"]
    assert mounts["chains"]["mountPath"] == "/etc/filterdns/chains" and "configMap" in vols["chains"]
    assert not any("subPath" in m for m in c["volumeMounts"])
    token_arg = next(a.split("=", 1)[1] for a in args if a.startswith("--control-token-file="))
    tok = vols[mounts["control-token"]["name"]]["secret"]
    assert token_arg == mounts["control-token"]["mountPath"] + "/" + tok["items"][0]["path"]
    assert tok["defaultMode"] & 0o007 == 0  # not readable by others
    assert mounts["state"]["mountPath"] == "/var/lib/filterdns"


def _project(target: Path, files: dict[str, bytes], version: int) -> None:
    """Write ``files`` the way the kubelet's atomic writer does: into a fresh timestamped
    directory, then swap the ``..data`` symlink; each visible file links to ``..data/<name>``."""
    target.mkdir(parents=True, exist_ok=True)
    ts = target / f"..2026_12_01_00_00_0{version}.{version:09d}"
    ts.mkdir()
    for name, data in files.items():
        (ts / name).write_bytes(data)
    tmp = target / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(ts.name, tmp)
    old = os.readlink(target / "..data") if (target / "..data").is_symlink() else None
    os.replace(tmp, target / "..data")
    for name in files:
        link = target / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)
    if old:
        shutil.rmtree(target / old)


def _http(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:  # not listening yet
        return 0, b""


@pytest.mark.e2e
def test_container_args_with_configmap_volumes_probe_and_hot_reload(tmp_path):
    zones, chains, secret = tmp_path / "zones", tmp_path / "chains", tmp_path / "secret"
    zone_files = {f.name: f.read_bytes() for f in (ROOT / "zones").glob("*.zone")}
    chain_files = {f.name: f.read_bytes() for f in (ROOT / "chains").glob("*.yaml")}
    _project(zones, zone_files, 1)
    _project(chains, chain_files, 1)
    _project(secret, {"token": b"k8s-test-token-0123456789"}, 1)
    c = container()
    dport, mport = free_port(), free_port()
    token_arg = next(a for a in c["args"] if a.startswith("--control-token-file="))
    args = [a.replace("[::]:8053", f"[::1]:{dport}").replace("0.0.0.0:8053", f"127.0.0.1:{dport}")
            .replace("0.0.0.0:9153", f"127.0.0.1:{mport}") for a in c["args"] if a != token_arg]
    args.append(f"--control-token-file={secret / 'token'}")
    env = dict(os.environ, FILTERDNS_CONFIG_DIR=str(tmp_path), FILTERDNS_STATE_DIR=str(tmp_path / "state"),
               PYTHONPATH=str(ROOT))
    env.pop("FILTERDNS_ZONES", None)
    env.pop("FILTERDNS_CHAINS", None)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "filterdns", *args, "--control", f"127.0.0.1:{free_port()}",
                             "--workers", "1"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = c["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + 30
        while _alive(proc, tmp_path) and _http(mport, probe)[0] != 200:
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        assert _http(mport, c["livenessProbe"]["httpGet"]["path"])[0] == 200

        def ttl():
            r = dns.query.udp(dns.message.make_query("example.com.", "SOA"), "127.0.0.1", port=dport, timeout=2)
            return r.answer[0].ttl
        assert ttl() == 300
        # `kubectl replace` of the ConfigMap: a new SOA TTL arrives by the ..data swap
        new = {k: v.replace(b"$TTL 300", b"$TTL 301") for k, v in zone_files.items()}
        assert new != zone_files
        _project(zones, new, 2)
        deadline = time.monotonic() + 30
        while ttl() != 301:
            assert _alive(proc, tmp_path) and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        assert _http(mport, probe)[0] == 200
    finally:
        proc.terminate()
        proc.wait(20)


def _alive(proc, tmp_path) -> bool:
    assert proc.poll() is None, (tmp_path / "serve.log").read_text()
    return True
