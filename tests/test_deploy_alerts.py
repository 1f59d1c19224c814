"""deploy/prometheus/alerts.yml: valid for promtool, and every alert unit-tested
(deploy/prometheus/alerts.test.yml) both firing and staying quiet, with `promtool test rules`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.e2e

DIR = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _alerts():
    doc = yaml.safe_load((DIR / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules():
    p = subprocess.run([PROMTOOL, "check", "rules", str(DIR / "alerts.yml")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in p.stdout


def test_promtool_unit_tests_pass():
    p = subprocess.run([PROMTOOL, "test", "rules", "alerts.test.yml"], cwd=DIR, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout + p.stderr


def test_every_alert_is_tested_firing_and_quiet():
    tests = yaml.safe_load((DIR / "alerts.test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in _alerts()}
    assert names - firing == set(), "alerts without a test where they fire"
    assert names - quiet == set(), "alerts without a test where they stay quiet"
    for r in _alerts():
        assert r["labels"]["severity"] in ("page", "ticket"), r["alert"]
        assert r["annotations"].get("summary"), r["alert"]
