"""deploy/systemd/filterdns.service: `systemd-analyze verify` accepts it without a warning,
`systemd-analyze security` rates it well, it keeps the hardening the issue asks for, and its
ExecStart really runs with nothing but the capability the unit grants (CAP_NET_BIND_SERVICE):
it binds a port below 1024 and answers, and without that capability it cannot."""

from __future__ import annotations

import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from conftest import ROOT, free_port

UNIT = ROOT / "deploy" / "systemd" / "filterdns.service"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
FILTERDNS = str(Path(sys.executable).parent / "filterdns")  # this checkout's install


def directives() -> dict[str, list[str]]:
    text = re.sub(r"\\\n\s*", " ", UNIT.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def local_unit(tmp_path) -> Path:
    """The unit with ExecStart pointing at this checkout's filterdns (verify checks it exists)."""
    text = UNIT.read_text().replace("/usr/local/bin/filterdns", FILTERDNS)
    assert text != UNIT.read_text()
    p = tmp_path / "filterdns.service"
    p.write_text(text)
    return p


@pytest.mark.unit
def test_hardening_directives():
    d = directives()
    want = {"DynamicUser": "yes", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
            "StateDirectory": "filterdns", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}
    assert {k: d.get(k, [None])[-1] for k in want} == want
    exec_start = d["ExecStart"][0]
    assert "--listen [::]:53" in exec_start and "--listen 0.0.0.0:53" in exec_start
    assert "--control 127.0.0.1:" in exec_start and "--state-dir /var/lib/filterdns" in exec_start
    assert "${CREDENTIALS_DIRECTORY}/control-token" in exec_start and d["LoadCredential"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@pytest.mark.e2e
def test_systemd_analyze_verify_is_silent(tmp_path):
    p = subprocess.run([ANALYZE, "verify", "--man=no", str(local_unit(tmp_path))], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and (p.stdout + p.stderr).strip() == "", p.stdout + p.stderr


@pytest.mark.e2e
def test_systemd_analyze_verify_can_fail(tmp_path):
    bad = tmp_path / "bad.service"
    bad.write_text(local_unit(tmp_path).read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    p = subprocess.run([ANALYZE, "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=120)
    assert "ProtectSystem" in p.stdout + p.stderr or "protect system" in (p.stdout + p.stderr).lower()


@pytest.mark.e2e
def test_systemd_analyze_security_exposure(tmp_path):
    p = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(local_unit(tmp_path))],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for filterdns\.service: ([\d.]+)", p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0, p.stdout


def _free_low_port() -> int:
    # random order: two runs of the suite on one machine must not race for the same port
    for port in random.sample(range(700, 1024), 324):
        socks = []
        try:
            for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(fam, kind)
                    socks.append(s)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port below 1024 on loopback")


def _exec_start(tmp_path, port):
    d = directives()
    etc, state, creds = tmp_path / "etc", tmp_path / "state", tmp_path / "credentials"
    subprocess.run([FILTERDNS, "init", str(etc)], check=True, capture_output=True, timeout=60)
    creds.mkdir()
    (creds / "control-token").write_text("systemd-test-token-0123456789\n")
    (creds / "control-token").chmod(0o400)
    cmd = (d["ExecStart"][0].replace("/usr/local/bin/filterdns", FILTERDNS)
           .replace("${CREDENTIALS_DIRECTORY}", str(creds)).replace("/etc/filterdns", str(etc))
           .replace("/var/lib/filterdns", str(state)).replace("[::]:53", f"[::1]:{port}")
           .replace("0.0.0.0:53", f"127.0.0.1:{port}").replace("127.0.0.1:9153", f"127.0.0.1:{free_port()}")
           .replace("127.0.0.1:9154", f"127.0.0.1:{free_port()}"))
    return cmd.split() + ["--workers", "1"]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_exec_start_needs_only_cap_net_bind_service(tmp_path):
    port = _free_low_port()
    cmd = _exec_start(tmp_path, port)
    only_bind = ["setpriv", "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
                 "--bounding-set=-all,+net_bind_service", "--no-new-privs"]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(only_bind + cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                for addr in ("127.0.0.1", "::1"):
                    r = dns.query.udp(dns.message.make_query("example.com.", "SOA"), addr, port=port, timeout=0.5)
                    assert r.answer
                break
            except (OSError, dns.exception.Timeout):
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
        status = open(f"/proc/{proc.pid}/status").read()
        assert re.search(r"^CapEff:\s+0*400$", status, re.M), status  # CAP_NET_BIND_SERVICE is bit 10
    finally:
        proc.terminate()
        proc.wait(20)
    # and without it, the low port is refused
    no_caps = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    p = subprocess.run(no_caps + _exec_start(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path, port),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "ermission denied" in p.stdout + p.stderr, p.stdout + p.stderr
