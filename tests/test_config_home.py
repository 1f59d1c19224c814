"""The config home (--config-dir, ./zones, /etc/filterdns), `filterdns init`, and the default
worker count under a CPU quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, free_port, ServerProcess
from filterdns.config import home
from filterdns.serve import cpus


def _env(**extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith("FILTERDNS_")}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


# ------------------------------------------------------------------------------- resolution
@pytest.mark.unit
@pytest.mark.parametrize("kw, env, cwd_has_zones, want", [
    ({}, {}, True, ("./zones", "./chains", "var")),
    ({}, {}, False, ("/etc/filterdns/zones", "/etc/filterdns/chains", "/var/lib/filterdns")),
    ({"config_dir": "/srv/dns"}, {}, True, ("/srv/dns/zones", "/srv/dns/chains", "/srv/dns/var")),
    ({}, {"FILTERDNS_CONFIG_DIR": "/srv/dns"}, False, ("/srv/dns/zones", "/srv/dns/chains", "/srv/dns/var")),
    ({"config_dir": "/srv/dns", "zones": "/z"}, {}, False, ("/z", "/srv/dns/chains", "/srv/dns/var")),
    ({"config_dir": "/srv/dns", "state_dir": "/st"}, {}, False, ("/srv/dns/zones", "/srv/dns/chains", "/st")),
    ({}, {"FILTERDNS_ZONES": "/z", "FILTERDNS_CHAINS": "/c", "FILTERDNS_STATE_DIR": "/s"}, False, ("/z", "/c", "/s")),
    ({"zones": "/z", "chains": "/c"}, {}, False, ("/z", "/c", "var")),
], ids=["checkout", "installed", "flag", "env", "zones-overrides", "state-overrides", "env-dirs", "both-dirs"])
def test_resolve(tmp_path, kw, env, cwd_has_zones, want):
    if cwd_has_zones:
        (tmp_path / "zones").mkdir()
    h = home.resolve(env=env, cwd=str(tmp_path), **kw)
    assert (os.path.normpath(h.zones), os.path.normpath(h.chains), h.state_dir) == tuple(
        os.path.normpath(w) if w.startswith(".") else w for w in want)


@pytest.mark.unit
def test_missing_names_absolute_path_and_flags(tmp_path):
    h = home.resolve(config_dir="rel", env={}, cwd=str(tmp_path))
    msg = home.missing(h, cwd=str(tmp_path))
    assert msg.startswith(f"zones directory {tmp_path}/rel/zones does not exist (config home: --config-dir {tmp_path}/rel)")
    assert "--config-dir DIR" in msg and "--zones DIR" in msg and "filterdns init DIR" in msg
    h = home.resolve(env={}, cwd=str(tmp_path))
    assert "the installed default /etc/filterdns" in home.missing(h, cwd=str(tmp_path))


# ------------------------------------------------------------------------------- commands
@pytest.mark.e2e
def test_serve_without_config_names_path_and_flag(tmp_path):
    p = subprocess.run([sys.executable, "-m", "filterdns", "serve", "--config-dir", "nowhere",
                        "--listen", f"127.0.0.1:{free_port()}", "--metrics", "off", "--control", "off"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert f"zones directory {tmp_path}/nowhere/zones does not exist" in p.stderr
    assert "--config-dir" in p.stderr


@pytest.mark.e2e
def test_init_then_serve_from_another_directory(tmp_path):
    cfg = tmp_path / "etc-filterdns"
    p = subprocess.run([sys.executable, "-m", "filterdns", "init", str(cfg)], env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "6 dynamic record(s)" in p.stdout and f"--config-dir {cfg}" in p.stdout
    for sub in ("zones", "chains"):  # the bundled example, byte for byte
        for f in (ROOT / sub).iterdir():
            assert (cfg / sub / f.name).read_bytes() == f.read_bytes()
    # a second init refuses to overwrite (safe by default), --force does
    again = subprocess.run([sys.executable, "-m", "filterdns", "init", str(cfg)], env=_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr
    (cfg / "zones" / "example.com.zone").write_text("junk")
    forced = subprocess.run([sys.executable, "-m", "filterdns", "init", "--force", str(cfg)], env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0, forced.stderr

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "filterdns", "serve", "--listen", f"127.0.0.1:{port}",
                             "--metrics", "off", "--control", "off", "--workers", "1"],
                            cwd=elsewhere, env=_env(FILTERDNS_CONFIG_DIR=str(cfg)), stdout=log,
                            stderr=subprocess.STDOUT)
    sp = ServerProcess(port, proc, tmp_path / "serve.log", [])
    try:
        import time
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, sp.log()
            try:
                ans = sp.query("wss-primary.example.com.", "A", timeout=0.5)
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, sp.log()
                time.sleep(0.1)
        assert ans.rcode() == 0 and ans.answer
        assert (cfg / "var").is_dir()  # the state lives in the config home
    finally:
        sp.stop()


# ------------------------------------------------------------------------------- CPU quota
def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


@pytest.mark.unit
@pytest.mark.parametrize("files, proc, want", [
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),
    ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),
    ({"cpu.max": "max 100000\n", "kubepods/pod1/c1/cpu.max": "50000 100000\n"}, "0::/kubepods/pod1/c1\n", 0.5),
    ({"system.slice/cpu.max": "100000 100000\n", "system.slice/f.service/cpu.max": "max 100000\n"},
     "0::/system.slice/f.service\n", 1.0),  # a parent slice's quota applies too
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n0::/\n", None),
    ({"cpu/docker/x/cpu.cfs_quota_us": "300000\n", "cpu/docker/x/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/docker/x\n", 3.0),
], ids=["v2-unlimited", "v2-1.5", "v2-nested", "v2-parent", "v1-unlimited", "v1-3"])
def test_cgroup_cpu_limit(tmp_path, files, proc, want):
    root = _cgroup(tmp_path, files)
    assert cpus.cgroup_cpu_limit(root, proc) == want


@pytest.mark.unit
def test_available_cpus_rounds_quota_up_and_caps_by_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    root = _cgroup(tmp_path, {"cpu.max": "150000 100000\n"})
    assert cpus.available_cpus(root, "0::/\n") == min(affinity, 2)
    root2 = _cgroup(tmp_path / "b", {"cpu.max": "1000 100000\n"})
    assert cpus.available_cpus(root2, "0::/\n") == 1
    root3 = _cgroup(tmp_path / "c", {"cpu.max": "max 100000\n"})
    assert cpus.available_cpus(root3, "0::/\n") == affinity
