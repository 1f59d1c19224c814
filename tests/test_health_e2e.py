"""Health checks drive Edge PoP Drain on a real server: a TCP target on loopback is stopped
(the region's service is drained after `fall` failures) and started again (undrained after
`rise` successes); every action is audited."""

from __future__ import annotations

import json
import shutil
import socket
import time

from conftest import ROOT
from test_ops_e2e import LONDON, gb, ops_server
import pytest

pytestmark = pytest.mark.e2e


def listener(port=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def wait_for(pred, timeout, what):
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, what
        time.sleep(0.05)
    return time.monotonic() - t0


def test_health_check_drains_and_undrains(tmp_path):
    target = listener()
    port = target.getsockname()[1]
    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains)
    (chains / "health.yaml").write_text(
        "health:\n"
        "  defaults: {interval: 0.2, timeout: 0.2, rise: 3, fall: 2}\n"
        "  checks:\n"
        f"    - {{region: eu-west-2, service: wss, type: tcp, address: 127.0.0.1, port: {port}}}\n")
    sp = ops_server(tmp_path, chains=chains)
    try:
        assert gb(sp) == LONDON
        time.sleep(1.0)
        assert gb(sp) == LONDON  # healthy: stays
        target.close()  # the region's load balancer stops answering
        took = wait_for(lambda: not gb(sp) & LONDON, 5, "not drained after the target stopped")
        assert took >= 0.2  # at least `fall` probes, not the first failure
        target = listener(port)
        wait_for(lambda: gb(sp) == LONDON, 5, "not undrained after the target came back")
        audit = [json.loads(x) for x in (tmp_path / "state" / "audit.log").read_text().splitlines()]
        health_actions = [(a["action"], a["region"], a["service"]) for a in audit if a["cause"] == "health"]
        assert ("drain", "eu-west-2", "wss") in health_actions
        assert ("undrain", "eu-west-2", "wss") in health_actions
    finally:
        target.close()
        sp.stop()


def test_health_check_errors_name_file_and_line(tmp_path):
    import subprocess
    import sys
    import os
    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains)
    (chains / "health.yaml").write_text(
        "health:\n"
        "  checks:\n"
        "    - {region: eu-west-2, service: wss, type: tcp, port: 443}\n"
        "    - {region: eu-west-2, service: wss, type: tcp, port: 70000}\n")
    out = subprocess.run([sys.executable, "-m", "filterdns", "check", "--zones", str(ROOT / "zones"),
                          "--chains", str(chains)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=tmp_path)
    assert out.returncode == 1
    # the position of the bad value itself, straight from the YAML (line 4, column 58)
    assert "health.yaml:4:58: health.checks[1]: port must be an integer in 1..65535, got 70000" in out.stderr
