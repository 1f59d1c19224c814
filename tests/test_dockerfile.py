"""The Dockerfile, checked and its steps run outside Docker (no Docker engine runs here):
the same files copied, the same `pip install .` into a fresh virtualenv, the same config
locations and environment, the same CMD (on loopback ports) run as an unprivileged user, and
the same HEALTHCHECK command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query
import pytest

from conftest import ROOT, free_port

pytestmark = pytest.mark.e2e

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions():
    """(INSTRUCTION, argument) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def one(name):
    found = [arg for word, arg in instructions() if word == name]
    assert found, f"Dockerfile has no {name}"
    return found


def _usable_by_others(path: str) -> bool:
    """Whether an unprivileged user can run this file (o+x on it and every directory above)."""
    p = Path(os.path.realpath(path))
    return all(q.stat().st_mode & 0o001 for q in [p, *p.parents])


def base_python() -> str | None:
    """A Python the container's unprivileged user could run, as the image's /usr/local one is.
    (A Python under /root, as pyenv installs it, is not reachable by other users.)"""
    for cand in (sys.executable, "/usr/local/bin/python3", "/usr/bin/python3"):
        if cand and os.path.exists(cand) and _usable_by_others(cand):
            ok = subprocess.run([cand, "-c", "import sys, venv; assert sys.version_info >= (3, 11)"],
                                capture_output=True, timeout=30)
            if ok.returncode == 0:
                return cand
    return None


def test_dockerfile_shape():
    assert re.match(r"python:3\.1[1-9]-slim", one("FROM")[0])
    user = one("USER")[-1]
    assert user not in ("root", "0")
    exposed = " ".join(one("EXPOSE")).split()
    assert {"53/udp", "53/tcp", "9153/tcp"} <= set(exposed)
    cmd = json.loads(one("CMD")[-1])
    assert cmd[:2] == ["filterdns", "serve"] and "0.0.0.0:53" in cmd
    assert "readyz" in one("HEALTHCHECK")[-1]
    assert any("setcap" in arg and "cap_net_bind_service" in arg for arg in one("RUN"))


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_dockerfile_steps_outside_docker():
    python = base_python()
    assert python, "no Python >= 3.11 with venv that an unprivileged user can run"
    work = Path(tempfile.mkdtemp(prefix="filterdns-docker-"))
    try:
        work.chmod(0o755)
        src = work / "src"
        src.mkdir()
        # COPY pyproject.toml README.md ./ ; COPY filterdns ./filterdns
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        shutil.copytree(ROOT / "filterdns", src / "filterdns",
                        ignore=shutil.ignore_patterns("__pycache__"))
        # the base image's python, as a fresh environment: RUN pip install --no-cache-dir .
        venv = work / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "."],
                             cwd=src, capture_output=True, text=True, timeout=600)
        assert pip.returncode == 0, pip.stderr[-3000:]
        shutil.rmtree(src)  # && rm -rf /src: the installed package must stand alone
        # COPY zones /etc/filterdns/zones ; COPY chains /etc/filterdns/chains
        etc = work / "etc"
        shutil.copytree(ROOT / "zones", etc / "zones")
        shutil.copytree(ROOT / "chains", etc / "chains")
        home = work / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        for p in [work, *work.rglob("*")]:
            if p != home:
                p.chmod(p.stat().st_mode | 0o055)
        env_line = " ".join(one("ENV"))
        env = dict(re.findall(r"(\w+)=(\S+)", env_line))
        assert env["FILTERDNS_ZONES"] == "/etc/filterdns/zones"
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home),
               "FILTERDNS_ZONES": str(etc / "zones"), "FILTERDNS_CHAINS": str(etc / "chains"),
               "FILTERDNS_STATE_DIR": str(home)}
        # CMD, on loopback ports instead of 0.0.0.0:53 (tests never listen beyond loopback)
        dport, mport, cport = free_port(), free_port(), free_port()
        cmd = json.loads(one("CMD")[-1])
        cmd = [c.replace("0.0.0.0:53", f"127.0.0.1:{dport}").replace("0.0.0.0:9153", f"127.0.0.1:{mport}")
               for c in cmd]
        cmd += ["--control", f"127.0.0.1:{cport}"]
        cmd[0] = str(venv / "bin" / cmd[0])
        log = open(work / "server.log", "wb")
        proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
                                cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            hc = json.loads(re.search(r"CMD (\[.*\])", one("HEALTHCHECK")[-1]).group(1))
            hc = [c.replace("9154", str(cport)) for c in hc]
            hc[0] = str(venv / "bin" / hc[0])
            deadline = time.monotonic() + 30
            while True:
                r = subprocess.run(hc, capture_output=True, timeout=10)
                if r.returncode == 0:
                    break
                assert proc.poll() is None, (work / "server.log").read_text()
                assert time.monotonic() < deadline, (work / "server.log").read_text()
                time.sleep(0.2)
            ans = dns.query.udp(dns.message.make_query("example.com.", "SOA"), "127.0.0.1", port=dport, timeout=3)
            assert ans.rcode() == 0 and ans.answer
            status = open(f"/proc/{proc.pid}/status").read()
            assert re.search(r"^Uid:\s+65534\b", status, re.M)  # not root
        finally:
            proc.terminate()
            proc.wait(15)
        assert proc.returncode == 0, (work / "server.log").read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)
