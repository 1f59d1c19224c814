"""The real filterdns the simulation asks: start one (or attach to one), and its control API.

``start_server`` runs ``python -m filterdns serve`` on free loopback ports with one worker, a
seeded routing RNG (so a seeded simulation is reproducible), no health checks of its own (the
simulator's health checker drives drains through the control API instead), no file watcher,
a temporary state directory and a fresh control token in a 0600 file. It waits for
``/readyz``. ``Server.stop`` terminates it.

``variant_chains`` writes a copy of a chains directory with a variant's overrides merged into
it (``{section: {key: value}}``; the key goes into the file that defines it), so that
``filterdns check`` semantics apply to the variant exactly as to any config.

``Control`` is a minimal client of the control API (drain, undrain, feed, status): one
request per connection, bearer token, JSON; a refused call raises ``ControlError`` with the
server's message.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from filterdns.serve.address import free_port


class ControlError(RuntimeError):
    pass




class Control:
    def __init__(self, host: str, port: int, token: str | None, timeout: float = 10.0):
        self.host, self.port, self.token, self.timeout = host, port, token, timeout
        self.calls = 0
        self.seconds = 0.0

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                obj = json.loads(raw) if raw else None
            except ValueError:
                obj = raw.decode("utf-8", "replace")
            return resp.status, obj
        finally:
            conn.close()
            self.calls += 1
            self.seconds += time.perf_counter() - t0

    def _ok(self, method: str, path: str, body: Any = None) -> Any:
        status, obj = self.request(method, path, body)
        if status != 200:
            msg = obj.get("error") if isinstance(obj, dict) else obj
            raise ControlError(f"{method} {path}: HTTP {status}: {msg}")
        return obj

    def drain(self, region: str, service: str | None, reason: str, force: bool = False,
              actor: str = "simulate") -> Any:
        body = {"reason": reason, "actor": actor, "force": force}
        if service:
            body["service"] = service
        return self._ok("POST", f"/regions/{region}/drain", body)

    def undrain(self, region: str, service: str | None, actor: str = "simulate") -> Any:
        body: dict = {"actor": actor}
        if service:
            body["service"] = service
        return self._ok("DELETE", f"/regions/{region}/drain", body)

    def feed(self, region: str, service: str | None, values: dict) -> Any:
        body: dict = {"values": values}
        if service:
            body["service"] = service
        return self._ok("POST", f"/regions/{region}/feed", body)

    def ready(self) -> bool:
        try:
            status, _ = self.request("GET", "/readyz")
        except OSError:
            return False
        return status == 200


@dataclass
class Server:
    """A filterdns the simulation talks to (started here, or given by address)."""

    dns: tuple[str, int]
    control: Control | None
    proc: subprocess.Popen | None = None
    tmp: str | None = None
    log_path: str | None = None
    chains: str = ""
    zones: str = ""
    _log: Any = field(default=None, repr=False)

    def log(self) -> str:
        if not self.log_path:
            return ""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def start_server(zones: str, chains: str, geoip: str | None = None, seed: int = 1,
                 timeout: float = 30.0) -> Server:
    tmp = tempfile.mkdtemp(prefix="filterdns-sim-")
    token = secrets.token_urlsafe(24)
    tok = Path(tmp, "token")
    tok.touch(mode=0o600)
    tok.write_text(token + "\n")
    port, cport = free_port(), free_port()
    args = [sys.executable, "-m", "filterdns", "serve", "--listen", f"127.0.0.1:{port}",
            "--control", f"127.0.0.1:{cport}", "--metrics", "off", "--workers", "1", "--seed", str(seed),
            "--no-health", "--no-watch", "--state-dir", str(Path(tmp, "state")),
            "--control-token-file", str(tok), "--zones", str(zones), "--chains", str(chains)]
    if geoip:
        args += ["--geoip", str(geoip)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FILTERDNS_CONTROL_TOKEN", None)
    log_path = str(Path(tmp, "server.log"))
    logf = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    srv = Server(("127.0.0.1", port), Control("127.0.0.1", cport, token), proc, tmp, log_path, str(chains),
                 str(zones), logf)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = srv.log()
            srv.stop()
            raise RuntimeError(f"filterdns serve exited with {proc.returncode}:\n{text}")
        if srv.control.ready():
            return srv
        time.sleep(0.05)
    text = srv.log()
    srv.stop()
    raise RuntimeError(f"filterdns serve was not ready within {timeout:g}s:\n{text}")


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


def variant_chains(chains_dir: str, overrides: dict, dest: str) -> str:
    """Copy ``chains_dir`` to ``dest`` with ``overrides`` ({section: {key: value}}) merged in."""
    src = Path(chains_dir)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    docs = {}
    for p in files:
        with open(p, encoding="utf-8") as f:
            docs[p.name] = yaml.safe_load(f) or {}
    extra: dict = {}
    for section, body in overrides.items():
        holders = [n for n, d in docs.items() if isinstance(d, dict) and section in d]
        if not isinstance(body, dict) or not holders:
            target = holders[0] if holders else None
            if target is None:
                extra[section] = body
            else:
                docs[target][section] = body
            continue
        for key, val in body.items():
            where = next((n for n in holders if isinstance(docs[n][section], dict) and key in docs[n][section]),
                         holders[0])
            sec = docs[where][section]
            docs[where][section] = _merge(sec, {key: val}) if isinstance(sec, dict) else {key: val}
    for name, d in docs.items():
        with open(out / name, "w", encoding="utf-8") as f:
            f.write(f"# {src / name} with simulation variant overrides\n")
            yaml.safe_dump(d, f, sort_keys=False)
    if extra:
        with open(out / "zz-variant.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(extra, f, sort_keys=False)
    for p in src.iterdir():  # anything else the config refers to (non-YAML files)
        if p.is_file() and p.suffix not in (".yaml", ".yml"):
            shutil.copy2(p, out / p.name)
    return str(out)
