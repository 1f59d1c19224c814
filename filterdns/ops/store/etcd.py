"""The fleet store: operator state, health verdicts and the audit log in an etcd cluster.

``filterdns serve --state etcd://10.0.0.1:2379,10.0.0.2:2379/filterdns`` (``etcds://`` or
``--etcd-ca`` for TLS; ``--etcd-cert``/``--etcd-key`` for client certificates; ``--etcd-user``
with ``--etcd-password-file`` or ``$FILTERDNS_ETCD_PASSWORD`` for etcd's user auth). Client:
``etcd3gw`` (etcd's v3 JSON gateway over plain HTTP, OpenStack-maintained), with the watch
stream read here so that its end is seen and the watch resumes from the last revision.

Keys under the prefix ``P``::

    P/state                    the operator document (drains, feeds; ``doc.py``), one key so a
                               compare-and-swap on its mod revision covers the safety rule
    P/audit/<ns>-<instance>    one audit entry, written in the same transaction as the change
    P/health/<inst>/<r>/<s>    "up" | "down": that instance's verdict, under its lease
    P/instances/<inst>         its generation, config hash, pid, control address; under its lease
    P/leader                   the instance running the drain automation, under its lease

How it behaves:

* **Commits** are transactions ``if mod_revision(P/state) == base: put state, put audit``.
  A failed compare is a ``Conflict``: the Controller re-reads, re-checks the safety rule on
  what is there now, and tries again. Two operators draining at once therefore cannot both
  pass a rule that only one of them may pass.
* **Watches**: one watch on ``P/`` from the revision of a full read. Every event is applied
  in order on the event loop (drains reach DNS within milliseconds of the commit). When the
  stream ends (member killed, network), the watcher reads everything again and watches from
  the new revision, so nothing is lost or reordered; it tries the next endpoint when one fails.
* **Liveness**: a linearizable read every ``HEARTBEAT`` seconds (which fails without quorum)
  and the lease keep-alive. While etcd is unreachable the instance keeps answering from the
  last known state, ``describe()`` reports ``up: false`` and the staleness, mutating calls get
  ``Unavailable`` at once, and the first successful read resynchronises everything.
* **Health**: each instance writes its own verdicts; the effective verdict of a (region,
  service) is ``effective_health(verdicts, policy)`` over the live instances' verdicts (a dead
  instance's lease expires and its verdicts go), and only the leader runs the drain automation.
* **Local snapshot**: every state applied is also written to ``state_dir/etcd-snapshot.json``;
  a cold start with etcd down serves from it (reported stale). With neither, start-up refuses
  unless ``--discard-state``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from filterdns.ops.store import (Conflict, Loaded, NotDurable, StateStore, StateUnreadable,
                                 Unavailable, effective_health)
from filterdns.ops.store import doc as sdoc
from filterdns.ops.store.file import read_audit_file, write_durably

log = logging.getLogger("filterdns.ops.store.etcd")

HEARTBEAT = 0.5  # seconds between liveness reads
TIMEOUT = 2.0  # per request
LEASE_TTL = 6  # seconds: a dead instance's verdicts and leadership go after this
SNAPSHOT_FILE = "etcd-snapshot.json"
PASSWORD_ENV = "FILTERDNS_ETCD_PASSWORD"
POLICIES = ("quorum", "all", "any")


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def _reason(e: Exception) -> str:
    """An etcd3gw error as one line (the gateway's JSON error message when there is one)."""
    text = str(getattr(e, "detail_text", "") or e)
    try:
        text = json.loads(text).get("error") or text
    except (ValueError, AttributeError):
        pass
    return " ".join(str(text).split())[:300]


def _range_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b).decode()


class _Down(Exception):
    """Every endpoint failed (connection refused, timeout, no quorum)."""


class EtcdStore(StateStore):
    kind = "etcd"
    fleet = True

    def __init__(self, endpoints: list[tuple[str, int]], prefix: str, state_dir: str,
                 tls: bool = False, etcd_ca: str | None = None, etcd_cert: str | None = None,
                 etcd_key: str | None = None, etcd_user: str | None = None,
                 etcd_password_file: str | None = None, health_policy: str | None = None,
                 instance: str | None = None, clock=time.time):
        super().__init__()
        try:
            import etcd3gw  # noqa: F401
        except ImportError:
            raise ValueError("--state etcd://...: the etcd3gw package is not installed "
                             "(pip install etcd3gw)") from None
        self.endpoints = list(endpoints)
        self.prefix = prefix.rstrip("/")
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.policy = health_policy or "quorum"
        if self.policy not in POLICIES:
            raise ValueError(f"--health-policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        self.protocol = "https" if (tls or etcd_ca or etcd_cert) else "http"
        self.ca, self.cert, self.key = etcd_ca, etcd_cert, etcd_key
        if bool(etcd_cert) != bool(etcd_key):
            raise ValueError("--etcd-cert and --etcd-key go together")
        for what, path in (("--etcd-ca", etcd_ca), ("--etcd-cert", etcd_cert), ("--etcd-key", etcd_key)):
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{what} {path}: cannot read it")
        self.user = etcd_user
        self.password = None
        if etcd_user:
            if etcd_password_file:
                try:
                    self.password = Path(etcd_password_file).read_text(encoding="utf-8").strip()
                except OSError as e:
                    raise ValueError(f"--etcd-password-file {etcd_password_file}: {e.strerror}") from None
            else:
                self.password = os.environ.get(PASSWORD_ENV)
            if not self.password:
                raise ValueError(f"--etcd-user {etcd_user}: no password (--etcd-password-file or ${PASSWORD_ENV})")
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self._clients: list[Any] = []
        self._current = 0
        self._lock = threading.Lock()  # endpoint choice and tokens
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="etcd")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="etcd-write")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._resync = threading.Event()
        # state as last seen (loop thread only)
        self.up = False
        self.last_ok = 0.0  # unix time etcd was last known current
        self.down_since: float | None = None
        self.synced = False
        self._verdicts: dict[tuple[str, str], dict[str, bool]] = {}  # (r, s) -> instance -> ok
        self._effective: dict[tuple[str, str], bool | None] = {}
        self._own: dict[tuple[str, str], bool] = {}
        self._instances: dict[str, dict] = {}
        self._leader: str | None = None
        self._lease: int | None = None
        self._info: dict = {}
        self._last_error = ""
        self._http_watch = None
        self._republish = False

    # ------------------------------------------------------------------ transport
    def _make_clients(self) -> None:
        from etcd3gw.client import Etcd3Client

        for host, port in self.endpoints:
            c = Etcd3Client(host=host, port=port, protocol=self.protocol, ca_cert=self.ca,
                            cert_key=self.key, cert_cert=self.cert, timeout=TIMEOUT, api_path="/v3/")
            # only what the options say: $REQUESTS_CA_BUNDLE would override --etcd-ca, and
            # $HTTP_PROXY would send etcd traffic through a proxy
            c.session.trust_env = False
            self._clients.append(c)

    def _authenticate(self, c) -> None:
        if not self.user:
            return
        c.session.headers.pop("Authorization", None)
        r = c.post(c.get_url("/auth/authenticate"), json={"name": self.user, "password": self.password})
        c.session.headers["Authorization"] = r["token"]

    def _post(self, path: str, body: dict, attempts: int | None = None) -> dict:
        """POST to the current endpoint, failing over to the others; raises _Down."""
        from etcd3gw import exceptions as ex

        n = len(self._clients)
        errors = []
        for i in range(attempts or n):
            with self._lock:
                idx = (self._current + i) % n
            c = self._clients[idx]
            try:
                if self.user and "Authorization" not in c.session.headers:
                    self._authenticate(c)
                try:
                    out = c.post(c.get_url(path), json=body)
                except ex.Etcd3Exception as e:
                    text = str(getattr(e, "detail_text", "") or e)
                    if self.user and "token" in text.lower():
                        self._authenticate(c)
                        out = c.post(c.get_url(path), json=body)
                    else:
                        raise
            except (ex.ConnectionFailedError, ex.ConnectionTimeoutError) as e:
                text = str(getattr(e, "detail_text", "") or e)
                why = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else (
                    "TLS error" if "SSL" in text else "timed out" if isinstance(e, ex.ConnectionTimeoutError)
                    else "connection failed")
                errors.append(f"{self.endpoints[idx][0]}:{self.endpoints[idx][1]}: {why}")
                continue
            except ex.Etcd3Exception as e:
                text = str(getattr(e, "detail_text", "") or e)
                if "no leader" in text or "timed out" in text or "unavailable" in text.lower():
                    errors.append(f"{self.endpoints[idx][0]}:{self.endpoints[idx][1]}: {text.strip()[:120]}")
                    continue
                raise
            with self._lock:
                self._current = idx
            return out
        raise _Down("; ".join(errors) or "no endpoint answered")

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    async def _run(self, fn, *args, pool=None):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool or self._pool, fn, *args)

    # ------------------------------------------------------------------ start-up
    def load(self, discard: bool = False) -> Loaded:
        self._make_clients()
        try:
            out = self._post("/kv/range", {"key": _b64(self._key("state"))})
        except _Down as e:
            out = None
            down = e
        except Exception as e:  # noqa: BLE001 - etcd answered, but no: auth, TLS, permissions
            raise StateUnreadable(f"etcd {self.endpoints[self._current][0]}:{self.endpoints[self._current][1]} "
                                  f"refused to read {self._key('state')}: {_reason(e)}") from None
        if out is None:
            e = down
            snap = self._read_snapshot()
            if snap is not None:
                doc, rev, saved = snap
                self.revision = rev
                self.last_ok = saved
                self.down_since = self.clock()
                self._last_error = str(e)
                msg = (f"etcd unreachable at start-up ({e}); serving the local snapshot "
                       f"{self.state_dir / SNAPSHOT_FILE} of revision {rev} (saved "
                       f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(saved))}) until it is back")
                log.error("%s", msg)
                return Loaded(doc, rev, warning=msg, source=str(self.state_dir / SNAPSHOT_FILE))
            if discard:
                msg = f"etcd unreachable at start-up ({e}) and no local snapshot; starting with no drains (--discard-state)"
                log.error("%s", msg)
                self.down_since = self.clock()
                return Loaded(None, warning=msg)
            raise StateUnreadable(
                f"etcd unreachable at start-up ({e}) and no local snapshot in {self.state_dir}; "
                "refusing to serve without the fleet's drains (start etcd, or pass --discard-state "
                "to start with none)") from None
        kvs = out.get("kvs") or []
        self.up, self.synced, self.last_ok = True, True, self.clock()
        if not kvs:
            self.revision = 0
            return Loaded(None, 0, source=self._key("state"))
        kv = kvs[0]
        self.revision = int(kv.get("mod_revision", 0))
        try:
            clean, problems = sdoc.decode(_unb64(kv.get("value")))
        except StateUnreadable as e:
            if not discard:
                raise StateUnreadable(f"etcd {self._key('state')}: {e.message}; refusing to serve "
                                      "(fix the key, or start with --discard-state)") from None
            return Loaded(None, self.revision, warning=f"etcd {self._key('state')}: {e.message}; ignored")
        warning = None
        if problems:
            warning = f"etcd {self._key('state')}: bad entries left out: " + "; ".join(problems)
        self._write_snapshot(clean, self.revision)
        return Loaded(clean, self.revision, warning=warning, source=self._key("state"))

    def _read_snapshot(self):
        path = self.state_dir / SNAPSHOT_FILE
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
            if data.get("prefix") != self.prefix:
                log.error("%s is for etcd prefix %s, not %s; not used", path, data.get("prefix"), self.prefix)
                return None
            clean, problems = sdoc.parse_doc(data.get("state"))
            for p in problems:
                log.error("%s: %s (left out)", path, p)
            return clean, int(data.get("revision", 0)), float(data.get("saved_at", 0))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, AttributeError, StateUnreadable) as e:
            log.error("%s: unreadable (%s); not used", path, e)
            return None

    def _write_snapshot(self, doc: dict, revision: int) -> None:
        data = json.dumps({"prefix": self.prefix, "revision": revision, "saved_at": self.clock(),
                           "state": doc}, sort_keys=True).encode()
        try:
            write_durably(self.state_dir / SNAPSHOT_FILE, data)
        except OSError as e:
            log.error("cannot write the local snapshot %s: %s", self.state_dir / SNAPSHOT_FILE, e)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._clients:
            self._make_clients()
        for target, name in ((self._watch_loop, "etcd-watch"), (self._heartbeat_loop, "etcd-heartbeat")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    async def stop(self) -> None:
        self._stop.set()
        self._resync.set()
        self._close_watch()
        lease, self._lease = self._lease, None
        if lease is not None and self.up:
            try:
                await asyncio.wait_for(self._run(self._post, "/kv/lease/revoke", {"ID": lease}), 2)
            except Exception:  # noqa: BLE001 - the lease expires by itself
                pass
        for t in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 3)
        self._pool.shutdown(wait=False)
        self._writer.shutdown(wait=False)

    def _close_watch(self) -> None:
        resp = self._http_watch
        if resp is not None:
            try:
                resp.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # noqa: BLE001
                pass
            try:
                resp.close()
            except Exception:  # noqa: BLE001
                pass

    def _call_soon(self, fn, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    # ------------------------------------------------------------------ watch thread
    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            self._resync.clear()
            try:
                out = self._post("/kv/range", {"key": _b64(self.prefix + "/"),
                                               "range_end": _b64(_range_end(self.prefix + "/"))})
            except _Down as e:
                self._call_soon(self._mark_down, str(e))
                self._stop.wait(HEARTBEAT)
                continue
            except Exception as e:  # noqa: BLE001 - keep the watcher alive
                log.exception("etcd: reading %s/ failed", self.prefix)
                self._call_soon(self._mark_down, f"{type(e).__name__}: {e}")
                self._stop.wait(1.0)
                continue
            rev = int(out["header"]["revision"])
            self._call_soon(self._apply_full, out.get("kvs") or [], rev)
            try:
                self._stream(rev + 1)
            except Exception as e:  # noqa: BLE001 - stream broke: read everything again
                if not self._stop.is_set():
                    log.info("etcd watch ended (%s: %s); resynchronising", type(e).__name__, e)
            with self._lock:  # next time, start with another endpoint
                self._current = (self._current + 1) % len(self._clients)

    def _stream(self, start_revision: int) -> None:
        with self._lock:
            c = self._clients[self._current]
        body = {"create_request": {"key": _b64(self.prefix + "/"),
                                   "range_end": _b64(_range_end(self.prefix + "/")),
                                   "start_revision": start_revision, "progress_notify": True}}
        resp = c.session.post(c.get_url("/watch"), json=body, stream=True, timeout=(TIMEOUT, 30))
        self._http_watch = resp
        try:
            if resp.status_code != 200:
                raise RuntimeError(f"watch: HTTP {resp.status_code} {resp.text[:200]}")
            buf = b""
            for chunk in resp.iter_content(chunk_size=None):
                if self._stop.is_set() or self._resync.is_set():
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._on_watch_line(line)
                # a chunk may hold a whole message without a newline
                if buf.strip():
                    try:
                        msg = json.loads(buf)
                    except ValueError:
                        continue
                    buf = b""
                    self._on_watch_message(msg)
        finally:
            self._http_watch = None
            resp.close()

    def _on_watch_line(self, line: bytes) -> None:
        self._on_watch_message(json.loads(line))

    def _on_watch_message(self, msg: dict) -> None:
        if "error" in msg:
            raise RuntimeError(f"watch error: {msg['error']}")
        result = msg.get("result") or {}
        if result.get("canceled") or result.get("compact_revision"):
            raise RuntimeError(f"watch canceled (compacted to {result.get('compact_revision')})")
        events = result.get("events") or []
        rev = int((result.get("header") or {}).get("revision", 0))
        if events:
            self._call_soon(self._apply_events, events, rev)
        else:
            self._call_soon(self._mark_up)

    # ------------------------------------------------------------------ heartbeat thread
    def _heartbeat_loop(self) -> None:
        next_keepalive = 0.0
        while not self._stop.wait(HEARTBEAT):
            try:
                self._post("/kv/range", {"key": _b64(self._key("state")), "count_only": True})
            except _Down as e:
                self._call_soon(self._mark_down, str(e))
                continue
            except Exception as e:  # noqa: BLE001
                self._call_soon(self._mark_down, f"{type(e).__name__}: {e}")
                continue
            self._call_soon(self._mark_up)
            now = time.monotonic()
            try:
                if self._lease is None:
                    self._grant_lease()
                elif self._republish:
                    # back after an outage the lease outlived: what changed meanwhile, again
                    self._republish = False
                    self._publish_all()
                elif now >= next_keepalive:
                    out = self._post("/lease/keepalive", {"ID": self._lease})
                    if int((out.get("result") or {}).get("TTL", 0) or 0) <= 0:
                        log.warning("etcd lease %s expired; taking a new one", self._lease)
                        self._grant_lease()
                    next_keepalive = now + LEASE_TTL / 3
                if self._leader is None and self._lease is not None:
                    self._campaign()
            except _Down as e:
                self._call_soon(self._mark_down, str(e))
            except Exception:  # noqa: BLE001
                log.exception("etcd lease keep-alive failed")

    def _grant_lease(self) -> None:
        out = self._post("/lease/grant", {"TTL": LEASE_TTL})
        self._lease = int(out["ID"])
        self._republish = False
        self._publish_all()
        self._campaign()

    def _publish_all(self) -> None:
        """Everything this instance publishes under its lease: its info and its verdicts."""
        self._put(self._key("instances", self.instance), json.dumps(self._instance_info()), lease=True)
        for (r, s), ok in list(self._own.items()):
            self._put(self._key("health", self.instance, r, s), "up" if ok else "down", lease=True)

    def _campaign(self) -> None:
        key = _b64(self._key("leader"))
        self._post("/kv/txn", {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": _b64(self.instance), "lease": self._lease}}],
        })

    def _put(self, key: str, value: str, lease: bool = False) -> None:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease and self._lease is not None:
            body["lease"] = self._lease
        self._post("/kv/put", body)

    def _instance_info(self) -> dict:
        return {"instance": self.instance, "pid": os.getpid(), "host": socket.gethostname(),
                "started": self._info.get("started", self.clock()), **self._info}

    # ------------------------------------------------------------------ applied on the loop
    def _mark_down(self, why: str) -> None:
        if self.up or self.down_since is None:
            self.down_since = self.clock()
            log.error("state store etcd unreachable (%s): serving the last known state of "
                      "revision %d; changes are refused until it is back", why, self.revision)
        self.up = False
        self.synced = False  # up again only after a full read (the watch thread's resync)
        self._republish = True
        self._last_error = why
        self._resync.set()
        self._close_watch()
        if self.on_leader is not None:
            self.on_leader(False)

    def _mark_up(self) -> None:
        self.last_ok = self.clock()
        if not self.up and self.synced:
            log.warning("state store etcd reachable again after %.1f s; state at revision %d",
                        self.clock() - (self.down_since or self.clock()), self.revision)
            self.up = True
            self.down_since = None
            if self.on_leader is not None:
                self.on_leader(self.is_leader())

    def _apply_full(self, kvs: list[dict], rev: int) -> None:
        """Everything under the prefix at ``rev`` (after start-up and after every reconnect)."""
        state_kv = None
        verdicts: dict[tuple[str, str], dict[str, bool]] = {}
        instances: dict[str, dict] = {}
        leader = None
        for kv in kvs:
            key = _unb64(kv.get("key")).decode("utf-8", "replace")
            kind, parts = self._split(key)
            if kind == "state":
                state_kv = kv
            elif kind == "health" and len(parts) == 3:
                verdicts.setdefault((parts[1], parts[2]), {})[parts[0]] = _unb64(kv.get("value")) == b"up"
            elif kind == "instances" and parts:
                instances[parts[0]] = self._json(kv)
            elif kind == "leader":
                leader = _unb64(kv.get("value")).decode("utf-8", "replace")
        if state_kv is not None:
            self._apply_state(state_kv, force=True)
        elif self.revision != 0:
            self._apply_state(None, force=True)
        self._instances = instances
        old = set(self._verdicts) | set(verdicts)
        self._verdicts = verdicts
        for key in old:
            self._recompute(key)
        self._set_leader(leader)
        self.synced = True
        self._mark_up()

    def _apply_events(self, events: list[dict], rev: int) -> None:
        for ev in events:
            kv = ev.get("kv") or {}
            deleted = ev.get("type") == "DELETE"
            key = _unb64(kv.get("key")).decode("utf-8", "replace")
            kind, parts = self._split(key)
            if kind == "state":
                self._apply_state(None if deleted else kv, mod_revision=int(kv.get("mod_revision", 0)))
            elif kind == "health" and len(parts) == 3:
                inst, r, s = parts
                per = self._verdicts.setdefault((r, s), {})
                if deleted:
                    per.pop(inst, None)
                else:
                    per[inst] = _unb64(kv.get("value")) == b"up"
                self._recompute((r, s))
            elif kind == "instances" and parts:
                if deleted:
                    self._instances.pop(parts[0], None)
                else:
                    self._instances[parts[0]] = self._json(kv)
            elif kind == "leader":
                self._set_leader(None if deleted else _unb64(kv.get("value")).decode("utf-8", "replace"))
        self._mark_up()

    def _split(self, key: str) -> tuple[str, list[str]]:
        if not key.startswith(self.prefix + "/"):
            return "", []
        rest = key[len(self.prefix) + 1:].split("/")
        return rest[0], rest[1:]

    @staticmethod
    def _json(kv: dict) -> dict:
        try:
            v = json.loads(_unb64(kv.get("value")))
            return v if isinstance(v, dict) else {}
        except ValueError:
            return {}

    def _apply_state(self, kv: dict | None, force: bool = False, mod_revision: int = 0) -> None:
        rev = int(kv.get("mod_revision", 0)) if kv else mod_revision
        if not force and rev <= self.revision:
            return  # our own commit (already applied) or an older event
        if kv is None:
            clean = {"drains": [], "feeds": []}
        else:
            try:
                clean, problems = sdoc.decode(_unb64(kv.get("value")))
            except StateUnreadable as e:
                log.error("etcd %s: %s; keeping the last good state", self._key("state"), e.message)
                return
            for p in problems:
                log.error("etcd %s: %s (left out)", self._key("state"), p)
        if force and rev == self.revision and self.synced:
            return
        self.revision = rev
        if self.on_remote is not None:
            self.on_remote(clean, rev)
        self._writer.submit(self._write_snapshot, clean, rev)

    def _recompute(self, key: tuple[str, str]) -> None:
        per = dict(self._verdicts.get(key) or {})
        if not per:
            self._verdicts.pop(key, None)
        if key in self._own:  # this instance's verdict counts even before etcd echoes it
            per[self.instance] = self._own[key]
        eff = effective_health(per.values(), self.policy)
        if self._effective.get(key) is eff:
            return
        self._effective[key] = eff
        if self.on_health is not None:
            self.on_health(key[0], key[1], eff)

    def _set_leader(self, leader: str | None) -> None:
        was = self.is_leader()
        self._leader = leader
        if self.is_leader() != was:
            if self.is_leader():
                log.info("this instance (%s) now runs the drain automation for the fleet", self.instance)
            if self.on_leader is not None:
                self.on_leader(self.is_leader())

    # ------------------------------------------------------------------ the interface
    def _refuse_if_down(self) -> None:
        if not self.up or not self.synced:
            since = self.down_since or self.clock()
            raise Unavailable(
                f"state store etcd unreachable for {self.clock() - since:.0f} s ({self._last_error}); "
                f"this instance serves the last known state (revision {self.revision}) and refuses "
                "changes until etcd is back")

    async def commit(self, base_revision: int, doc: dict, audit: Iterable[dict] = ()) -> int:
        self._refuse_if_down()
        value = sdoc.encode(doc, self.clock())
        key = _b64(self._key("state"))
        puts = [{"request_put": {"key": key, "value": _b64(value)}}]
        for n, entry in enumerate(audit):
            puts.append({"request_put": {"key": _b64(self._audit_key(entry, n)),
                                         "value": _b64(json.dumps(entry, sort_keys=True))}})
        txn = {"compare": [{"key": key, "result": "EQUAL", "target": "MOD", "mod_revision": base_revision}],
               "success": puts, "failure": [{"request_range": {"key": key}}]}
        try:
            out = await self._run(self._post, "/kv/txn", txn, pool=self._writer)
        except _Down as e:
            self._mark_down(str(e))
            raise Unavailable(f"state store etcd did not take the change ({e}); if it timed out, "
                              "the change may still be applied: check `filterdns status`") from None
        except Exception as e:  # noqa: BLE001 - an etcd error answer
            raise NotDurable(f"state store etcd refused the change: {e}") from None
        if not out.get("succeeded"):
            raise Conflict("the state changed meanwhile")
        rev = int(out["header"]["revision"])
        self.revision = rev
        self._writer.submit(self._write_snapshot, doc, rev)
        return rev

    async def refresh(self) -> None:
        try:
            out = await self._run(self._post, "/kv/range", {"key": _b64(self._key("state"))})
        except _Down as e:
            self._mark_down(str(e))
            raise Unavailable(f"state store etcd unreachable ({e})") from None
        kvs = out.get("kvs") or []
        if kvs:
            self._apply_state(kvs[0])
        elif self.revision:
            self._apply_state(None, mod_revision=int(out["header"]["revision"]))

    def _audit_key(self, entry: dict, n: int = 0) -> str:
        ns = int(float(entry.get("time") or self.clock()) * 1e9) + n
        return self._key("audit", f"{ns:020d}-{self.instance}")

    async def audit(self, entry: dict) -> None:
        try:
            self._refuse_if_down()
            await self._run(self._put, self._audit_key(entry), json.dumps(entry, sort_keys=True),
                            pool=self._writer)
        except (Unavailable, _Down) as e:
            # kept locally so it is not lost; the fleet log misses it
            log.error("audit entry not written to etcd (%s); kept in %s: %s", e,
                      self.state_dir / "audit.log", entry)
            from filterdns.ops.store.file import append_durably
            try:
                append_durably(self.state_dir / "audit.log", [entry])
            except OSError as e2:
                log.error("cannot write %s either: %s", self.state_dir / "audit.log", e2)

    async def read_audit(self, limit: int = 100) -> list[dict]:
        self._refuse_if_down()
        start = self._key("audit") + "/"
        try:
            out = await self._run(self._post, "/kv/range", {
                "key": _b64(start), "range_end": _b64(_range_end(start)), "limit": limit,
                "sort_order": "DESCEND", "sort_target": "KEY"})
        except _Down as e:
            raise Unavailable(f"state store etcd unreachable ({e}); the local part of the log is "
                              f"in {self.state_dir / 'audit.log'}") from None
        entries = [self._json(kv) for kv in out.get("kvs") or []]
        entries.reverse()
        return entries

    def local_audit(self, limit: int = 100) -> list[dict]:
        return read_audit_file(self.state_dir / "audit.log", limit)

    def publish_health(self, region: str, service: str, healthy: bool | None) -> None:
        key = (region, service)
        if healthy is None:
            self._own.pop(key, None)
        else:
            self._own[key] = healthy
        k = self._key("health", self.instance, region, service)
        if not self.up:
            return  # frozen while cut off; republished from _own when etcd is back
        self._recompute(key)
        if healthy is None:
            self._writer.submit(self._quiet, self._post, "/kv/deleterange", {"key": _b64(k)})
        else:
            self._writer.submit(self._quiet, self._put, k, "up" if healthy else "down", True)

    def _quiet(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - the heartbeat reports the outage
            log.warning("etcd write failed: %s", e)
            self._call_soon(self._mark_down, str(e))
            self._lease = None  # republish everything when it is back

    def publish_instance(self, info: dict) -> None:
        self._info.update(info)
        if self.up and self._lease is not None:
            self._writer.submit(self._quiet, self._put, self._key("instances", self.instance),
                                json.dumps(self._instance_info()), True)

    def is_leader(self) -> bool:
        return self.up and self._leader == self.instance

    def describe(self) -> dict:
        stale = 0.0 if self.up else max(0.0, self.clock() - (self.last_ok or self.clock()))
        return {"kind": self.kind, "up": self.up, "stale_seconds": round(stale, 3),
                "revision": self.revision, "prefix": self.prefix, "instance": self.instance,
                "endpoints": [f"{h}:{p}" for h, p in self.endpoints], "leader": self._leader,
                "health_policy": self.policy, "instances": len(self._instances),
                "error": None if self.up else self._last_error}

    def fleet_view(self) -> dict:
        instances = {}
        for name, info in sorted(self._instances.items()):
            verdicts = {f"{r}/{s}": ("up" if per[name] else "down")
                        for (r, s), per in sorted(self._verdicts.items()) if name in per}
            instances[name] = {**info, "verdicts": verdicts, "leader": name == self._leader}
        effective = {f"{r}/{s}": (None if v is None else ("up" if v else "down"))
                     for (r, s), v in sorted(self._effective.items())}
        return {"instance": self.instance, "policy": self.policy, "leader": self._leader,
                "instances": instances, "effective_health": effective}
