"""Log output: --log-format text|json, the reload cause in the line, levels, -v debug lines,
and no line printed twice (filterdns/logs.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import time
from collections import Counter

import pytest

from conftest import ROOT, start_server
from filterdns import logs
from filterdns.ops.health import CheckSpec, HealthChecker
from filterdns.routing.inventory import Inventory


def _line(fmt: str, fn) -> str:
    buf = io.StringIO()
    logs.configure(fmt, verbose=True, stream=buf, force=True)
    try:
        fn(logging.getLogger("filterdns.test"))
    finally:
        logs.reset()
    return buf.getvalue()


@pytest.mark.unit
def test_json_line_has_the_documented_keys():
    out = _line("json", lambda log: log.info("reload (%s): generation %d", "SIGHUP", 2,
                                             extra={"fields": {"cause": "SIGHUP", "generation": 2}}))
    assert out.count("\n") == 1
    obj = json.loads(out)
    assert set(obj) == {"ts", "level", "logger", "msg", "fields"}
    assert obj["level"] == "info" and obj["logger"] == "filterdns.test"
    assert obj["msg"] == "reload (SIGHUP): generation 2"
    assert obj["fields"] == {"cause": "SIGHUP", "generation": 2}
    assert obj["ts"].endswith("Z") and obj["ts"][10] == "T" and len(obj["ts"]) == 24


@pytest.mark.unit
def test_json_exception_stays_on_one_line():
    def boom(log):
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("failed")
    out = _line("json", boom)
    assert out.count("\n") == 1
    obj = json.loads(out)
    assert obj["level"] == "error" and "ValueError: bad" in obj["exc"] and obj["fields"] == {}


@pytest.mark.unit
def test_configure_twice_prints_each_line_once():
    buf = io.StringIO()
    logs.configure("text", stream=io.StringIO(), force=True)
    logs.configure("text", stream=buf, force=True)
    try:
        logging.getLogger("filterdns.x").warning("once")
    finally:
        logs.reset()
    assert buf.getvalue().count("once") == 1
    assert " WARNING filterdns.x: once" in buf.getvalue()


@pytest.mark.unit
def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        logs.configure("xml")


@pytest.mark.unit
def test_health_up_is_info_down_is_warning(caplog):
    async def main():
        results = iter([True, False, True])

        async def fake(spec, address):
            return next(results), "fake"

        hc = HealthChecker([CheckSpec("fra", "wss", "tcp", "127.0.0.1", 1, rise=1, fall=1)], Inventory(),
                           probe_fn=fake, jitter=False)
        for _ in range(3):
            await hc.run_once(hc.checks[0])

    with caplog.at_level(logging.DEBUG, logger="filterdns.ops.health"):
        asyncio.run(main())
    verdicts = [(r.levelname, r.getMessage()) for r in caplog.records if "probe" not in r.getMessage()]
    assert verdicts == [("INFO", "health fra/wss tcp 127.0.0.1:1: UP (fake)"),
                        ("WARNING", "health fra/wss tcp 127.0.0.1:1: DOWN (fake)"),
                        ("INFO", "health fra/wss tcp 127.0.0.1:1: UP (fake)")], verdicts
    probes = [r for r in caplog.records if "probe" in r.getMessage()]
    assert len(probes) == 3 and all(r.levelname == "DEBUG" for r in probes)


def _json_lines(sp) -> list[dict]:
    out = []
    for line in sp.log().splitlines():
        out.append(json.loads(line))  # every line is one JSON object (a stray print fails here)
    return out


def _wait_for(sp, pred, what, timeout=20.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        lines = _json_lines(sp)
        if pred(lines):
            return lines
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s:\n{sp.log()}")


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_log_of_a_server_with_reload_causes(tmp_path, workers):
    import shutil

    zones, chains = tmp_path / "zones", tmp_path / "chains"
    shutil.copytree(ROOT / "zones", zones)
    shutil.copytree(ROOT / "chains", chains)
    sp = start_server(tmp_path, "--log-format", "json", "-v", "--workers", workers,
                      zones=zones, chains=chains)
    try:
        def causes(lines):
            return [ln["fields"].get("cause") for ln in lines
                    if ln["msg"].startswith(("reload (", "serving generation")) and ln["level"] == "info"]

        _wait_for(sp, lambda ls: causes(ls) == ["startup"], "start-up line")
        os.kill(sp.proc.pid, signal.SIGHUP)
        _wait_for(sp, lambda ls: causes(ls) == ["startup", "SIGHUP"], "SIGHUP reload")
        zone = zones / "example.com.zone"
        zone.write_text(zone.read_text() + "\nlogtest 300 IN A 192.0.2.99\n")
        want = f"file watcher: {zone} changed"
        lines = _wait_for(sp, lambda ls: causes(ls) == ["startup", "SIGHUP", want], "watcher reload")
        assert sp.query("logtest.example.com.", "A").answer
        # -v: the reload's phases and (with workers) each worker's start are debug lines
        debug = [ln["msg"] for ln in lines if ln["level"] == "debug"]
        assert any(m.startswith("reload (SIGHUP): building generation 2") for m in debug), debug
        assert any(m.startswith("reload (SIGHUP): generation 2 built in") for m in debug), debug
        if workers == "2":
            assert any(m.startswith("worker 1 started (pid") for m in debug), debug
            assert {ln["fields"].get("worker") for ln in lines if ln["logger"] == "filterdns.serve.worker"} == {0, 1}
        # no line printed twice (same logger, message and worker)
        seen = Counter((ln["logger"], ln["msg"], ln["fields"].get("worker")) for ln in lines)
        assert [k for k, n in seen.items() if n > 1] == []
    finally:
        sp.stop()


@pytest.mark.e2e
def test_rejected_reload_is_logged_once_with_its_cause(tmp_path):
    import shutil

    chains = tmp_path / "chains"
    shutil.copytree(ROOT / "chains", chains)
    sp = start_server(tmp_path, chains=chains)
    try:
        (chains / "edge.yaml").write_text((chains / "edge.yaml").read_text() + "\nbad: [\n")
        t0 = time.monotonic()
        while "rejected" not in sp.log():
            assert time.monotonic() - t0 < 20, sp.log()
            time.sleep(0.1)
        time.sleep(0.5)
        log = sp.log()
        assert f"ERROR filterdns: reload (file watcher: {chains / 'edge.yaml'} changed) rejected" in log, log
        assert log.count("YAML syntax") == 1, log  # the problem once, not again by the controller
        assert "reload (api)" not in log
    finally:
        sp.stop()
