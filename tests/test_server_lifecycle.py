"""Start-up, listeners and shutdown of a real server process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import dns.message
import dns.query
import pytest

from conftest import ROOT, free_port, start_server

pytestmark = pytest.mark.e2e

ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def run_cli(*args, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "filterdns", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=cwd)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_stops_cleanly_on_signal(tmp_path, sig, workers):
    sp = start_server(tmp_path, "--workers", workers)
    sp.proc.send_signal(sig)
    assert sp.proc.wait(15) == 0
    log = sp.log()
    assert "stopped" in log and "Traceback" not in log


def test_one_log_line_per_listener_and_ipv6(tmp_path):
    port = free_port()
    sp = start_server(tmp_path, "--listen", f"[::1]:{port}")
    try:
        r = dns.query.udp(dns.message.make_query("example.com.", "SOA"), "::1", port=port, timeout=2)
        assert r.rcode() == 0 and r.answer
        r = dns.query.tcp(dns.message.make_query("example.com.", "SOA"), "::1", port=port, timeout=2)
        assert r.rcode() == 0
        lines = [x for x in sp.log().splitlines() if "listening on" in x and "(udp, tcp)" in x]
        assert len(lines) == 2 and f"[::1]:{port}" in sp.log()
    finally:
        sp.stop()


def test_bad_zone_file_stops_startup_with_file_and_line(tmp_path):
    zones = tmp_path / "zones"
    shutil.copytree(ROOT / "zones", zones)
    z = zones / "example.com.zone"
    lines = z.read_text().splitlines()
    lines.insert(20, "broken  IN A   999.1.2.3")
    z.write_text("\n".join(lines) + "\n")
    port = free_port()
    out = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--zones", str(zones), "--chains",
                  str(ROOT / "chains"), "--metrics", "off", "--control", "off", "--workers", "1",
                  "--state-dir", str(tmp_path / "st"), cwd=tmp_path)
    assert out.returncode == 1
    assert f"{zones / 'example.com.zone'}:21:" in out.stderr, out.stderr
    assert "not starting" in out.stderr


@pytest.mark.parametrize("args,message", [
    (["--listen", "localhost:53"], "not an IP address"),
    (["--listen", "127.0.0.1"], "a port is required"),
    (["--listen", "127.0.0.1:99999"], "bad port"),
    (["--workers", "0"], "--workers must be >= 1"),
])
def test_bad_flags_are_usage_errors(args, message):
    out = run_cli("serve", *args)
    assert out.returncode == 2 and message in out.stderr


def test_check_ok_and_explain():
    out = run_cli("check", "--zones", str(ROOT / "zones"), "--chains", str(ROOT / "chains"))
    assert out.returncode == 0 and out.stdout.startswith("ok: 1 zone(s), 6 dynamic record(s)")
    out = run_cli("explain", "wss-primary.example.com", "AAAA", "--subnet", "133.242.0.0/24",
                  "--zones", str(ROOT / "zones"), "--chains", str(ROOT / "chains"))
    assert out.returncode == 0, out.stderr
    assert "ap-northeast-1" in out.stdout and "2001:db8:" in out.stdout and "ECS scope" in out.stdout


def test_port_in_use_is_reported(tmp_path):
    sp = start_server(tmp_path)
    try:
        out = run_cli("serve", "--listen", f"127.0.0.1:{sp.port}", "--metrics", "off", "--control", "off",
                      "--workers", "1", "--zones", str(ROOT / "zones"), "--chains", str(ROOT / "chains"),
                      "--state-dir", str(tmp_path / "st2"), cwd=tmp_path)
        assert out.returncode == 1 and "cannot start" in out.stderr
    finally:
        sp.stop()
