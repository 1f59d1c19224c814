"""No worker answers before it holds the current config and state (``serve --workers 2``):
with a drain in force, workers are killed and the supervisor restarted while clients query
without pause, and every answer is checked; a drain acknowledged while a worker is starting
holds for that worker's first answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import dns.message
import pytest

from conftest import ROOT, ServerProcess
from test_ops_e2e import GB, LONDON, addrs, http
from test_reload_workers import start, wait_workers
from test_workers import worker_pids

pytestmark = pytest.mark.e2e

QUERY = dns.message.make_query("wss-primary.example.com.", "A", use_edns=0, options=GB).to_wire()


class Clients:
    """Three UDP clients asking for a GB client's address all along, each about 200 times a
    second (bounded in count and time), keeping (time, addresses) of every answer."""

    def __init__(self, port_of, n_max=40000, seconds=180):
        self.port_of = port_of  # the server's port may be read again after a restart
        self.answers: list[tuple[float, frozenset]] = []
        self.lost = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(n_max, seconds)) for _ in range(3)]

    def _loop(self, n_max, seconds):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.5)
        t_end = time.monotonic() + seconds
        for _ in range(n_max):
            if self.stop.is_set() or time.monotonic() > t_end:
                break
            try:
                s.sendto(QUERY, ("127.0.0.1", self.port_of()))
                r = dns.message.from_wire(s.recv(4096))
                self.answers.append((time.monotonic(), frozenset(addrs(r))))
            except OSError:  # a timeout while nothing listens, a refused port
                self.lost += 1
            time.sleep(0.005)
        s.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def answered_after(self, t0, timeout=30):
        """Wait until some answer came after ``t0`` (the server serves again)."""
        end = time.monotonic() + timeout
        while not any(t > t0 for t, _ in self.answers[-50:]):
            assert time.monotonic() < end, "no answer after the restart"
            time.sleep(0.05)


def restart(sp: ServerProcess, tmp_path) -> ServerProcess:
    """The same command again (same port, config and state directory)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log_path = tmp_path / f"server-{sp.port}-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(sp.args, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=str(tmp_path))
    new = ServerProcess(sp.port, proc, log_path, sp.args)
    new.mport, new.cport = sp.mport, sp.cport
    return new


def kill_and_wait(sp, pid, ready_lines):
    """SIGKILL one worker; wait (generously: restarts back off, the machine may be loaded)
    until it is replaced and ``ready_lines`` workers have said ready in all."""
    os.kill(pid, signal.SIGKILL)
    gone([pid])
    return wait_workers(sp, ready_lines, timeout=60)


def gone(pids, timeout=30):
    end = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{p}") for p in pids):
        assert time.monotonic() < end, f"old workers still running: {pids}"
        time.sleep(0.05)


def test_no_drained_answer_through_worker_kills_and_supervisor_restarts(tmp_path):
    sp = start(tmp_path)
    servers = [sp]
    try:
        code, body = http(sp, "POST", "/regions/eu-west-2/drain", {"reason": "maintenance"})
        assert code == 200, body
        with Clients(lambda: sp.port) as clients:
            ready = 2
            for pid in worker_pids(sp):  # one worker at a time, then both at once
                ready += 1
                kill_and_wait(sp, pid, ready)
            for pid in worker_pids(sp):
                os.kill(pid, signal.SIGKILL)
            wait_workers(sp, ready + 2, timeout=60)
            clients.answered_after(time.monotonic())
            # the supervisor stopped and started again; then killed (its workers follow it)
            for how in (signal.SIGTERM, signal.SIGKILL):
                old = worker_pids(sp)
                os.kill(sp.proc.pid, how)
                sp.proc.wait(30)
                gone(old)
                sp = restart(sp, tmp_path)
                servers.append(sp)
                wait_workers(sp, 2, timeout=60)
                clients.answered_after(time.monotonic())
        answers = clients.answers
        assert len(answers) > 100, (len(answers), clients.lost)
        london = [a for _, a in answers if a & LONDON]
        assert not london, f"{len(london)} of {len(answers)} answers sent GB clients to drained eu-west-2"
        assert all(a for _, a in answers), "an empty answer"
        for s in servers:
            assert "Traceback" not in s.log()
    finally:
        for s in servers:
            s.stop()


def test_a_drain_acknowledged_while_a_worker_starts_holds_for_its_first_answer(tmp_path):
    """The restarted worker holds its first config and inventory for 2 s before confirming
    them (a test hook); a drain acknowledged meanwhile is in force for its first query."""
    sp = start(tmp_path, env={"FILTERDNS_TEST_START_DELAY": "2"})
    stopped = []
    try:
        a, b = worker_pids(sp)
        os.kill(a, signal.SIGKILL)
        end = time.monotonic() + 30
        while not (len(worker_pids(sp)) == 2 and a not in worker_pids(sp)):
            assert time.monotonic() < end
            time.sleep(0.02)
        code, body = http(sp, "POST", "/regions/eu-west-2/drain", {"reason": "maintenance"})
        assert code == 200, body
        os.kill(b, signal.SIGSTOP)  # every query now waits for the restarted worker
        stopped.append(b)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        answers = []
        end = time.monotonic() + 60
        while len(answers) < 20 and time.monotonic() < end:
            s.sendto(QUERY, ("127.0.0.1", sp.port))
            try:
                answers.append(addrs(dns.message.from_wire(s.recv(4096))))
            except socket.timeout:
                pass
        assert len(answers) == 20, answers
        assert not [x for x in answers if x & LONDON], answers
        assert all(answers)
        assert " holds generation 1 and inventory " in sp.log()
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)
        sp.stop()
