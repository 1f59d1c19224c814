"""An acknowledged change is durable; an unreadable saved state never fails open.

Issue 10 items 2 and 5, on a real server: a state dir on a full 16 kB tmpfs and on a read-only
mount (the drain/undrain fails with a clear error, DNS and the in-memory state are unchanged,
and a restart shows the same), and corrupt ``state.json`` shapes at start-up (refuse to serve
unless --discard-state; a partly bad file keeps every valid entry and names each bad one).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import start_server
from test_ops_e2e import LONDON, cli, gb, http, ops_server

pytestmark = pytest.mark.e2e


def _mount_tmpfs(path, size="16k"):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (need root): {r.stderr.strip()}")


def _umount(path):
    subprocess.run(["umount", str(path)], capture_output=True)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_state_dir(tmp_path):
    d = tmp_path / "state"
    _mount_tmpfs(d)
    yield d
    _umount(d)


def _fill(d):
    """Fill the file system holding ``d`` to the last byte."""
    for name, chunk in (("filler", 512), ("filler2", 1)):
        try:
            with open(d / name, "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * chunk)
        except OSError:
            pass
    st = os.statvfs(d)
    assert st.f_bavail == 0


def test_drain_on_full_disk_fails_and_changes_nothing(tmp_path, small_state_dir):
    sp = ops_server(tmp_path)
    try:
        assert cli(sp, "drain", "eu-west-1", "--service", "wss", "--reason", "before").returncode == 0
        assert gb(sp) & LONDON
        _fill(small_state_dir)
        r = cli(sp, "drain", "eu-west-2", "--service", "wss", "--reason", "disk is full")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "nothing was changed" in r.stderr and "No space left on device" in r.stderr
        assert gb(sp) & LONDON  # DNS still answers the region whose drain was not saved
        status, body = http(sp, "GET", "/regions", token=None)
        assert body["regions"]["eu-west-2"]["services"]["wss"]["drained"] is False
        assert body["regions"]["eu-west-1"]["services"]["wss"]["drained"] is True
        assert "No space left on device" in sp.log()
    finally:
        sp.stop()
    sp = ops_server(tmp_path)  # after a restart: exactly what was acknowledged
    try:
        status, body = http(sp, "GET", "/regions", token=None)
        assert body["regions"]["eu-west-2"]["services"]["wss"]["drained"] is False
        assert body["regions"]["eu-west-1"]["services"]["wss"]["drained"] is True
    finally:
        sp.stop()


def test_read_only_state_dir_refuses_undrain_and_drain(tmp_path, small_state_dir):
    sp = ops_server(tmp_path)
    try:
        assert cli(sp, "drain", "eu-west-2", "--service", "wss", "--reason", "maint").returncode == 0
        assert gb(sp) and not gb(sp) & LONDON
        subprocess.run(["mount", "-o", "remount,ro", str(small_state_dir)], check=True)
        r = cli(sp, "undrain", "eu-west-2", "--service", "wss")
        assert r.returncode == 1 and "Read-only file system" in r.stderr, r.stderr
        r = cli(sp, "drain", "eu-west-1", "--service", "wss", "--reason", "ro")
        assert r.returncode == 1 and "nothing was changed" in r.stderr, r.stderr
        assert gb(sp) and not gb(sp) & LONDON  # still drained: the undrain was not acknowledged
        status, body = http(sp, "POST", "/regions/eu-west-1/feed", {"values": {"loadavg": 1}})
        assert status == 503 and body["code"] == "state_store"
    finally:
        sp.stop()
    sp = ops_server(tmp_path)  # restart on the read-only dir: the drain is still there
    try:
        assert gb(sp) and not gb(sp) & LONDON
        status, body = http(sp, "GET", "/regions", token=None)
        assert body["regions"]["eu-west-1"]["services"]["wss"]["drained"] is False
    finally:
        sp.stop()


def _start_with_state(tmp_path, content: bytes, *extra):
    d = tmp_path / "state"
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.json").write_bytes(content)
    sp = start_server(tmp_path, *extra, wait=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sp.proc.poll() is None:
        try:
            sp.query("example.com.", "SOA", timeout=0.3)
            return sp
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    return sp


UNREADABLE = [
    pytest.param(b"\xff\xfe{\"drains\": []}", "not valid UTF-8", id="invalid-utf8"),
    pytest.param(b"{not json", "not valid JSON", id="not-json"),
    pytest.param(b"[1, 2]", "not an object", id="top-level-list"),
    pytest.param(b"", "not valid JSON", id="empty"),
    pytest.param(b"[" * 100000, "not valid JSON", id="deeply-nested"),
]


@pytest.mark.parametrize("content,why", UNREADABLE)
def test_unreadable_state_refuses_to_serve(tmp_path, content, why):
    sp = _start_with_state(tmp_path, content)
    try:
        assert sp.proc.wait(20) == 1
        log = sp.log()
        assert "Traceback" not in log
        assert "state.json" in log and why in log and "--discard-state" in log
        assert (tmp_path / "state" / "state.json").read_bytes() == content  # left for the operator
    finally:
        sp.stop()


def test_discard_state_moves_it_aside_and_serves(tmp_path):
    sp = _start_with_state(tmp_path, b"\xff garbage", "--discard-state")
    try:
        assert sp.proc.poll() is None, sp.log()
        assert list((tmp_path / "state").glob("state.json.corrupt-*"))
        assert "--discard-state" in sp.log() and "Traceback" not in sp.log()
    finally:
        sp.stop()


PARTLY_BAD = [
    pytest.param({"drains": ["x"]}, ["drains[0]: must be an object"], id="drain-not-object"),
    pytest.param({"drains": {"a": 1}}, ["drains: must be a list"], id="drains-not-list"),
    pytest.param({"drains": [{"region": 7}]}, ["drains[1]: region must be a non-empty string"],
                 id="drain-region-not-string"),
    pytest.param({"feeds": [{"region": "eu-west-1", "service": None, "values": {"up": "no"}}]},
                 ["feeds[0] (eu-west-1): up must be true or false"], id="feed-bad-value"),
    pytest.param({"drains": [{"region": "eu-west-1", "since": "yesterday"}], "feeds": "x"},
                 ["since must be a number", "feeds: must be a list"], id="two-problems"),
]


@pytest.mark.parametrize("extra,named", PARTLY_BAD)
def test_partly_bad_state_keeps_valid_entries_and_names_bad_ones(tmp_path, extra, named):
    good = {"region": "eu-west-2", "service": "wss", "reason": "kept", "actor": "operator:alice",
            "cause": "operator", "since": 1.0}
    doc = {"version": 1, "drains": [good], "feeds": []}
    for key, value in extra.items():
        if key == "drains" and isinstance(value, list) and value and value[0] == {"region": 7}:
            doc["drains"] = [good, *value]
        elif key == "drains" and isinstance(value, list):
            doc["drains"] = [*value, good]
        else:
            doc[key] = value
    sp = _start_with_state(tmp_path, json.dumps(doc).encode())
    try:
        assert sp.proc.poll() is None, sp.log()
        log = sp.log()
        assert "Traceback" not in log
        for text in named:
            assert text in log, log
        if isinstance(doc["drains"], list):
            assert gb(sp) and not gb(sp) & LONDON  # the valid drain is kept
        assert list((tmp_path / "state").glob("state.json.bad-*"))
    finally:
        sp.stop()
