"""Real parts for the fleet tests and the propagation bench: an etcd cluster on loopback (free
ports, temp data dirs), a TCP proxy that can cut one instance off etcd, and a fleet of
filterdns instances sharing one etcd prefix."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from conftest import ROOT, free_port, start_server

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
TOKEN = "fleet-token-0123456789abcdef"


class EtcdCluster:
    """``n`` etcd members on 127.0.0.1; ``kill(i)``, ``start(i)``, ``endpoints``."""

    def __init__(self, base: Path, n: int = 3):
        self.base = Path(base)
        self.n = n
        self.client_ports = [free_port() for _ in range(n)]
        self.peer_ports = [free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))

    @property
    def endpoints(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.client_ports)

    def url(self, prefix: str = "/filterdns") -> str:
        return f"etcd://{self.endpoints}{prefix}"

    def start(self, i: int | None = None, wait: bool = True) -> None:
        for j in ([i] if i is not None else range(self.n)):
            if self.procs[j] is not None and self.procs[j].poll() is None:
                continue
            c, p = self.client_ports[j], self.peer_ports[j]
            logf = open(self.base / f"etcd-m{j}.log", "ab")
            self.procs[j] = subprocess.Popen(
                [ETCD, "--name", f"m{j}", "--data-dir", str(self.base / f"m{j}.etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
                 "--listen-peer-urls", f"http://127.0.0.1:{p}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                 "--initial-cluster", self.initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"t{self.peer_ports[0]}", "--heartbeat-interval", "50",
                 "--election-timeout", "500", "--logger", "zap", "--log-level", "warn",
                 "--listen-metrics-urls", ""],
                stdout=logf, stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = 0
            for j, c in enumerate(self.client_ports):
                if self.procs[j] is None or self.procs[j].poll() is not None:
                    continue
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{c}/health", timeout=1) as r:
                        ok += json.loads(r.read()).get("health") in (True, "true")
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            if ok == sum(1 for p in self.procs if p is not None and p.poll() is None) and ok:
                return
            time.sleep(0.1)
        raise RuntimeError("etcd cluster not healthy:\n" + "\n".join(
            (self.base / f"etcd-m{j}.log").read_text(errors="replace")[-2000:] for j in range(self.n)))

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    def stop(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p is not None:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


class Proxy:
    """TCP forwarder 127.0.0.1:<port> -> target; ``cut()`` drops every connection and refuses
    new ones until ``restore()`` (an instance losing its network path to etcd)."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=2)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.stopped = True
        self.cut()
        self.sock.close()


def reduced_chains(dest: Path, keep: tuple[str, ...] = ("us-east-1", "eu-west-2")) -> Path:
    """The bundled chains with only the ``keep`` regions (so two drains can empty a service)."""
    import yaml

    shutil.copytree(ROOT / "chains", dest)
    doc = yaml.safe_load((dest / "regions.yaml").read_text())
    doc["regions"] = {k: v for k, v in doc["regions"].items() if k in keep}
    (dest / "regions.yaml").write_text(yaml.safe_dump(doc))
    lat = yaml.safe_load((dest / "latency.yaml").read_text())
    for table in lat["latency"].values():
        for rows in table.values():
            for row in rows.values():
                for region in [r for r in row if r not in doc["regions"]]:
                    del row[region]
    (dest / "latency.yaml").write_text(yaml.safe_dump(lat))
    return dest


def start_instance(base: Path, name: str, state_url: str, *extra: str, chains: Path | None = None,
                   wait: bool = True):
    """One filterdns instance of the fleet, with its own state dir, control API and metrics."""
    d = Path(base) / name
    d.mkdir(parents=True, exist_ok=True)
    tok = d / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    cport, mport = free_port(), free_port()
    sp = start_server(d, "--state", state_url, "--instance", name, "--control", f"127.0.0.1:{cport}",
                      "--metrics", f"127.0.0.1:{mport}", "--control-token-file", str(tok), *extra,
                      chains=chains, wait=wait)
    sp.cport, sp.mport, sp.token_file, sp.name, sp.dir = cport, mport, str(tok), name, d
    return sp


def api(sp, method: str, path: str, body: dict | None = None, token: str | None = TOKEN, timeout=30):
    req = urllib.request.Request(f"http://127.0.0.1:{sp.cport}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def metrics(sp) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{sp.mport}/metrics", timeout=10).read().decode()


def wait_for(pred, timeout: float, what: str, interval: float = 0.005) -> float:
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - e.g. a query timing out while a server is busy
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what} (after {timeout} s)")
        time.sleep(interval)
