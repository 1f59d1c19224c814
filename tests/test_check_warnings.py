"""`filterdns check` warns (exit 0, a `warning:` line with file:line:col) when a chain reads `up`
and a region of its service has `up` at no level: that region silently never gets traffic."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e

CONFIG = """\
regions:
  r1:
    country: GB
    services:
      web: {v4: [192.0.2.1]}
      img: {v4: [192.0.2.11]}
      api: {v4: [192.0.2.21]}
  r2:
    country: IE
    meta: {up: true}
    services:
      web: {v4: [192.0.2.2]}
      img: {v4: [192.0.2.12]}
      api: {v4: [192.0.2.22]}
  r3:
    country: DE
    services:
      web: {v4: [192.0.2.3], meta: {up: 1}}
      img: {v4: [192.0.2.13]}
      api: {v4: [192.0.2.23]}
records:
  web.example.com: {service: web, chain: [up, geotarget_country]}
  img.example.com: {service: img, chain: [geotarget_country]}
  api.example.com: {service: api, chain: [up], meta: {up: true}}
"""


def check(chains):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "filterdns", "check", "--zones", str(ROOT / "zones"),
                           "--chains", str(chains)], capture_output=True, text=True, timeout=60, env=env,
                          cwd=str(chains.parent))


def test_region_with_no_up_anywhere_is_warned_about(tmp_path):
    d = tmp_path / "chains"
    d.mkdir()
    (d / "c.yaml").write_text(CONFIG)
    out = check(d)
    assert out.returncode == 0, out.stderr
    warnings = [x for x in out.stderr.splitlines() if ": warning: " in x]
    # only r1/web: r2 has region meta, r3 service meta (1 counts as true); img's chain does not
    # read up; api's record sets up for every region
    assert len(warnings) == 1, out.stderr
    assert warnings[0].startswith("chains/c.yaml:2:3: warning: region r1, service web: no up value at any level")
    assert "web.example.com (chains/c.yaml:22)" in warnings[0]
    assert out.stdout.strip() == "ok: 1 zone(s), 3 dynamic record(s), 3 region(s), 1 warning(s)"


def test_bundled_config_has_no_warnings(tmp_path):
    out = check(ROOT / "chains")
    assert out.returncode == 0 and "warning" not in out.stderr + out.stdout, out.stderr
