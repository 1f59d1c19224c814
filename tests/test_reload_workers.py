"""Reload and worker restarts with ``serve --workers 2``: one config, built once, served by
every process or by none.

Each worker's answers are read on their own: the other worker is paused (SIGSTOP), so the
shared socket's datagrams all go to the one being asked.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.request
from contextlib import contextmanager

import dns.message
import pytest

from conftest import ROOT, free_port, start_server
from test_ops_e2e import GB, LONDON, TOKEN, addrs, http
from test_workers import worker_pids

pytestmark = pytest.mark.e2e

SERIAL = 2026112801


def start(tmp_path, *extra, env=None):
    zones, chains = tmp_path / "zones", tmp_path / "chains"
    shutil.copytree(ROOT / "zones", zones)
    shutil.copytree(ROOT / "chains", chains)
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    tok.chmod(0o600)
    mport, cport = free_port(), free_port()
    sp = start_server(tmp_path, "--workers", "2", "--no-watch", "--metrics", f"127.0.0.1:{mport}",
                      "--control", f"127.0.0.1:{cport}", "--control-token-file", str(tok), *extra,
                      zones=zones, chains=chains, env=env)
    sp.mport, sp.cport, sp.token_file, sp.zone = mport, cport, str(tok), zones / "example.com.zone"
    wait_workers(sp, 2)
    return sp


def wait_workers(sp, ready_lines, timeout=20):
    """Until two live workers and at least ``ready_lines`` "ready" lines in the log."""
    t0 = time.monotonic()
    while len(worker_pids(sp)) != 2 or sp.log().count(" ready (pid ") < ready_lines:
        assert time.monotonic() - t0 < timeout, sp.log()
        time.sleep(0.05)
    return worker_pids(sp)


def set_serial(path, serial):
    text = path.read_text()
    path.write_text(re.sub(r"\d+ ; serial", f"{serial} ; serial", text, count=1))


@contextmanager
def only(sp, pid):
    """Pause every other worker, so the shared socket's queries all reach ``pid``."""
    others = [p for p in worker_pids(sp) if p != pid]
    for p in others:
        os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in others:
            os.kill(p, signal.SIGCONT)


def serial_of(sp):
    r = sp.query("example.com.", "SOA", timeout=5)
    return r.answer[0][0].serial


def serials(sp):
    """{worker pid: the SOA serial it answers}."""
    out = {}
    for pid in worker_pids(sp):
        with only(sp, pid):
            out[pid] = serial_of(sp)
    return out


def generation(sp):
    text = urllib.request.urlopen(f"http://127.0.0.1:{sp.mport}/metrics", timeout=5).read().decode()
    return int(float(re.search(r"^filterdns_config_generation (\S+)", text, re.M).group(1)))


def kill_and_wait(sp, pid, ready_lines):
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    while pid in worker_pids(sp):
        assert time.monotonic() - t0 < 10
        time.sleep(0.02)
    return wait_workers(sp, ready_lines)


@pytest.fixture
def stop_after():
    servers = []
    yield servers.append
    for sp in servers:
        sp.stop()


def test_a_worker_that_refuses_leaves_every_process_on_the_old_generation(tmp_path, stop_after):
    sp = start(tmp_path, env={"FILTERDNS_TEST_REFUSE_PREPARE": "1"})
    stop_after(sp)
    set_serial(sp.zone, SERIAL + 1)
    code, body = http(sp, "POST", "/reload", {})
    assert code == 422, body
    assert any("worker 1: refused" in r for r in body["reasons"]), body
    assert set(serials(sp).values()) == {SERIAL}  # worker 0 prepared it, but never committed
    assert generation(sp) == 1
    assert "every process still serves generation 1" in sp.log()


def test_a_file_edited_mid_reload_reaches_no_worker(tmp_path, stop_after):
    sp = start(tmp_path, "-v", env={"FILTERDNS_TEST_PREPARE_DELAY": "1.5"})  # -v: the "built" line
    stop_after(sp)
    set_serial(sp.zone, SERIAL + 1)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=http(sp, "POST", "/reload", {})))
    t.start()
    t0 = time.monotonic()
    while "generation 2 built" not in sp.log():  # read and built; workers are preparing
        assert time.monotonic() - t0 < 20, sp.log()
        time.sleep(0.01)
    set_serial(sp.zone, SERIAL + 2)  # edited while the workers prepare generation 2
    t.join(30)
    assert result["r"][0] == 200, result
    assert set(serials(sp).values()) == {SERIAL + 1}
    assert generation(sp) == 2


def test_restarted_workers_serve_the_supervisors_generation(tmp_path, stop_after):
    sp = start(tmp_path)
    stop_after(sp)
    ready = 2
    # a valid edit, never reloaded (--no-watch): a restarted worker keeps the served serial
    set_serial(sp.zone, SERIAL + 1)
    a, b = worker_pids(sp)
    ready += 1
    kill_and_wait(sp, a, ready)
    assert set(serials(sp).values()) == {SERIAL}
    # a broken zone on disk and a rejected reload; then kill one worker, then the other
    with sp.zone.open("a") as f:
        f.write("broken  IN A  999.1.2.3\n")
    code, body = http(sp, "POST", "/reload", {})
    assert code == 422 and any("999.1.2.3" in r or "example.com.zone" in r for r in body["reasons"]), body
    ready += 1
    kill_and_wait(sp, b, ready)
    assert set(serials(sp).values()) == {SERIAL}
    for pid in worker_pids(sp):
        ready += 1
        kill_and_wait(sp, pid, ready)
    answered = 0
    for _ in range(10):
        r = sp.query("wss-primary.example.com.", "A", use_edns=0, options=GB, timeout=2)
        answered += r.rcode() == 0 and addrs(r) == LONDON
    assert answered == 10
    assert set(serials(sp).values()) == {SERIAL}
    assert generation(sp) == 1
    assert "Traceback" not in sp.log()


def test_no_drained_region_is_answered_while_workers_restart(tmp_path, stop_after):
    sp = start(tmp_path)
    stop_after(sp)
    code, body = http(sp, "POST", "/regions/eu-west-2/drain", {"reason": "maintenance"})
    assert code == 200, body
    q = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0, options=GB).to_wire()
    stop = threading.Event()
    answers: list[tuple[float, frozenset]] = []
    lost = [0]

    def loop(n_max=20000, seconds=40):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.5)
        t_end = time.monotonic() + seconds
        for _ in range(n_max):
            if stop.is_set() or time.monotonic() > t_end:
                break
            s.sendto(q, ("127.0.0.1", sp.port))
            try:
                answers.append((time.monotonic(), frozenset(addrs(dns.message.from_wire(s.recv(4096))))))
            except socket.timeout:
                lost[0] += 1
            except OSError:
                lost[0] += 1
        s.close()

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        ready = 2
        for pid in worker_pids(sp):  # one at a time
            ready += 1
            kill_and_wait(sp, pid, ready)
        pids = worker_pids(sp)  # both at once
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        ready += 2
        wait_workers(sp, ready)
        t_restarted = time.monotonic()
        while not any(t > t_restarted for t, _ in answers):
            assert time.monotonic() - t_restarted < 10
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert len(answers) > 100, (len(answers), lost[0])
    london = [a for _, a in answers if a & LONDON]
    assert not london, f"{len(london)} of {len(answers)} answers sent GB clients to drained eu-west-2"
    assert all(a for _, a in answers), "an empty answer"
