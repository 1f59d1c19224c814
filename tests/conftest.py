"""Shared fixtures: a Responder over the test zones (no sockets), and a real server process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import dns.message
import dns.query
import pytest

from filterdns.serve.address import free_port  # noqa: F401 - the tests import it from here

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: true when the run selects exactly the unit tests (``tests/run.sh -m unit``, the quick loop):
#: the fuzzers then run a tenth of their examples and whole-database scans are skipped; the
#: full suite (what CI runs) always does everything
QUICK = False


def examples(n: int) -> int:
    """Hypothesis ``max_examples`` for a fuzz test: ``n`` in the full suite, n/10 in the quick loop."""
    return max(50, n // 10) if QUICK else n


def pytest_configure(config):
    global QUICK
    QUICK = (config.getoption("markexpr", "") or "").strip() == "unit"




def static_state(zones_dir=FIXTURES / "zones", generation=1):
    from filterdns.config.state import State
    from filterdns.dns.zones import load_zones

    store, files = load_zones(zones_dir)
    return State(generation, store, MappingProxyType({}), {}, {}, None, files=files)


@pytest.fixture
def responder():
    from filterdns.routing.inventory import Inventory
    from filterdns.dns.responder import Responder
    from filterdns.config.state import StateHolder

    return Responder(StateHolder(static_state()), Inventory())


def ask(responder, q, src=("127.0.0.1", 5353), transport="udp", limit=0):
    """Run a dnspython query through a Responder; returns (parsed response, raw bytes)."""
    wire = q.to_wire() if not isinstance(q, bytes) else q
    raw = responder.respond(wire, src, transport, limit)
    if raw is None:
        return None, None
    return dns.message.from_wire(raw, ignore_trailing=False), raw


class ServerProcess:
    def __init__(self, port, proc, log_path, args):
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.args = args

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def query(self, name, rdtype="A", tcp=False, timeout=2.0, **kw):
        q = dns.message.make_query(name, rdtype, **kw)
        fn = dns.query.tcp if tcp else dns.query.udp
        return fn(q, "127.0.0.1", port=self.port, timeout=timeout)

    def stop(self):
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM a process this test started, then SIGKILL it if it has not exited in ``grace``
    seconds; always reaps it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_server(tmp_path, *extra, zones=None, chains=None, env=None, wait=True,
                 probe="example.com.") -> ServerProcess:
    """Start `python -m filterdns serve` on a free loopback port; wait until it answers a SOA
    query for ``probe`` (a name of the zones served)."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    args = [sys.executable, "-m", "filterdns", "serve", "--listen", f"127.0.0.1:{port}",
            "--zones", str(zones or ROOT / "zones"), "--chains", str(chains or ROOT / "chains"),
            "--state-dir", str(tmp_path / "state"), *extra]
    if "--metrics" not in extra:
        args += ["--metrics", "off"]
    if "--control" not in extra:
        args += ["--control", "off"]
    if "--workers" not in extra:
        args += ["--workers", "1"]  # the multi-process mode has its own tests (test_workers.py)
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    logf = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=e, cwd=str(tmp_path))
    sp = ServerProcess(port, proc, log_path, args)
    if wait:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}:\n{sp.log()}")
            try:
                sp.query(probe, "SOA", timeout=0.3)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        else:
            sp.stop()
            raise RuntimeError(f"server did not answer:\n{sp.log()}")
    return sp


@pytest.fixture
def server(tmp_path):
    sp = start_server(tmp_path)
    yield sp
    sp.stop()


def pytest_collection_modifyitems(config, items):
    """Every test is marked ``unit`` (in-process) or ``e2e`` (starts processes or servers),
    exactly one of them, so ``tests/run.sh -m unit`` is the quick loop and nothing is missed."""
    bad = []
    for item in items:
        kinds = {m.name for m in item.iter_markers() if m.name in ("unit", "e2e")}
        if len(kinds) != 1:
            bad.append(f"{item.nodeid}: marked {sorted(kinds) or 'neither'}")
    if bad:
        raise pytest.UsageError("tests must be marked exactly one of @pytest.mark.unit / "
                                "@pytest.mark.e2e (module pytestmark or per test):\n  " + "\n  ".join(bad))
