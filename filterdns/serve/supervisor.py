"""The supervisor (``serve --workers N``): N worker processes answer DNS on sockets bound here
once; this process holds the config, the inventory and (wired by ``filterdns.app``) the
operator pieces, and no DNS listener of its own.

Python answers queries on one core per process, so to use every core N workers serve the very
same UDP and TCP sockets, inherited: the kernel gives each datagram (and each connection) to a
worker that is waiting, so load spreads even when a few busy resolvers send most queries
(SO_REUSEPORT would hash each resolver to one worker). On UDP worker 0 leads and the others
read only while it does not keep up alone (``serve/udp.py``, standby): at moderate rates one
warm worker costs less CPU per query than several woken in turn, and a stalled lead is
covered within about 35 ms.

* **One config, built once.** The supervisor reads and builds every generation itself and sends
  workers the packed State and its digest (``config.state.pack``); no worker reads the files.
* **Reload in two phases.** ``prepare`` goes to every worker; only when all of them have
  unpacked it and echoed its digest does the supervisor swap its own State and send ``commit``.
  A worker that refuses, fails, dies or stays silent aborts the reload everywhere: every
  process keeps the old generation.
* **A restarted worker gets what is being served**: the supervisor's current generation (the
  same bytes) and the inventory. A broken file on disk, or a valid edit never reloaded, cannot
  reach it.
* **No worker reads a socket before it holds the current config and state.** A starting
  worker confirms the generation and digest it unpacked (``loaded``); only then does the
  supervisor send ``go``, after which the worker starts reading the inherited sockets. Until
  ``go`` it is *gated*: it gets every inventory change but no reload phases (a reload
  committed meanwhile reaches it as ``install``), and a drain is not waiting for it - the
  channel is ordered, so whatever was sent before ``go`` is applied before its first query.
  From ``go`` on, a drain is acknowledged only once it has applied it too.
* Every inventory change is pushed at once to every worker, so a drain reaches all of them
  within milliseconds. Workers send their counters every second; ``worker_snapshots`` keeps
  those of exited workers too, so summed counters never go backwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time

from filterdns.config.state import State, digest, pack
from filterdns.ops.metrics import retired as retired_snapshot
from filterdns.routing.inventory import dump_status
from filterdns.serve import channel
from filterdns.serve import tap
from filterdns.serve.listeners import bind_sockets, sockets_text
from filterdns.serve.runtime import Runtime

log = logging.getLogger("filterdns.serve.supervisor")

PREPARE_TIMEOUT = 30.0
COMMIT_TIMEOUT = 10.0


class Packed:
    """A State as it travels: its generation, bytes and digest (packed once per generation)."""

    def __init__(self, state: State):
        self.generation = state.generation
        self.blob = pack(state)
        self.digest = digest(self.blob)

    def message(self, op: str, **kw) -> dict:
        return {"op": op, "generation": self.generation, "digest": self.digest, "blob": self.blob, **kw}


class WorkerHandle:
    def __init__(self, index: int):
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready = asyncio.Event()
        self.spawned = 0  # counts spawns: a reply belongs to the process it was asked of
        self.snapshot: dict | None = None
        self.pending: dict[tuple[str, int], asyncio.Future] = {}
        self.started = 0.0
        self.status_gen = -1  # the inventory generation this worker has applied
        self.gated = True  # started, not yet told "go": reads no socket, answers nothing

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    def send(self, msg: dict) -> bool:
        if not self.connected:
            return False
        try:
            channel.write(self.writer, msg)
        except (ConnectionError, OSError):
            return False
        return True

    def ask(self, kind: str, seq: int, msg: dict) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self.send(msg):
            self.pending[(kind, seq)] = fut
        else:
            fut.set_result({"ok": False, "reasons": [f"worker {self.index} is not connected"]})
        return fut


class Supervisor(Runtime):
    role = "supervisor"

    def __init__(self, opts, metrics):
        super().__init__(opts, metrics)
        self.n = opts.workers
        self.workers = [WorkerHandle(i) for i in range(self.n)]
        self.retired: list[dict] = []  # last snapshots of exited workers
        self.restarts = 0
        self.stopping = False
        self.socks: list = []
        self.geo_fd: int | None = None
        self.serving: Packed | None = None  # what every worker serves (or gets when it starts)
        self.rrl_table = None  # the RRL buckets every worker updates (dns/rrl.py), when on
        self._seq = 0
        self._tasks: set[asyncio.Task] = set()

    def _open_geo(self):
        geo, self.geo_fd = channel.share_geo(self.opts.geoip)
        return geo

    def load_initial(self) -> State:
        state = super().load_initial()
        self.serving = Packed(state)
        return state

    @property
    def listeners_open(self) -> bool:
        return all(w.ready.is_set() for w in self.workers)

    def processes(self) -> list[tuple[str, object]]:
        """(label, pid) of every process of the server, for the process metrics."""
        out: list[tuple[str, object]] = [("supervisor", "self")]
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                out.append((f"worker-{w.index}", w.proc.pid))
        return out

    # ---------------------------------------------------------------- lifecycle
    async def start_dns(self, timeout: float = 20.0) -> None:
        self.socks = bind_sockets(self.opts.listen)
        if self.opts.rrl:  # one table for the server: a prefix gets its rate, not N times it
            from filterdns.dns.rrl import RrlTable

            self.rrl_table = RrlTable.create(self.opts.rrl["table_size"])
        log.info("listening on %s (udp, tcp), shared by %d workers", sockets_text(self.socks), self.n)
        self.inventory.subscribe(self._on_inventory)
        for w in self.workers:
            await self._spawn(w)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), timeout)
        except asyncio.TimeoutError:
            raise OSError(f"workers did not start within {timeout:.0f} s") from None
        log.info("%d workers serving on %s", self.n, sockets_text(self.socks))

    async def _spawn(self, w: WorkerHandle) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        o = self.opts
        args = {
            "index": w.index, "tcp": o.tcp_limits(self.n), "rrl": o.rrl,
            "sockets": [(u.fileno(), t.fileno()) for u, t in self.socks],
            "geo_fd": self.geo_fd, "geo_path": getattr(self.geo, "path", None),
            "log_format": o.log_format, "verbose": o.verbose, "server_id": o.server_id,
            "tap": tap.options(o),
            "rrl_fd": self.rrl_table.fd if self.rrl_table is not None else None,
        }
        fds = (child.fileno(),) + tuple(fd for pair in args["sockets"] for fd in pair)
        fds += tuple(fd for fd in (self.geo_fd, args["rrl_fd"]) if fd is not None)
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "filterdns.serve.worker", str(child.fileno()), repr(args),
            pass_fds=fds, env=dict(os.environ), stdin=asyncio.subprocess.DEVNULL)
        child.close()
        log.debug("worker %d started (pid %d)", w.index, w.proc.pid)
        w.started = time.monotonic()
        w.spawned += 1
        w.ready.clear()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        w.writer = writer
        # what is being served and the inventory; the worker confirms them ("loaded") and
        # reads no socket until "go". Later drains and commits follow on the same channel.
        w.gated = True
        w.send(self.serving.message("install"))
        w.send({"op": "status", "status": dump_status(self.inventory.status)})
        self._task(self._listen(w, reader))
        self._task(self._watch(w))

    def _task(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _listen(self, w: WorkerHandle, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await channel.read(reader)
                op = msg.get("op")
                if op == "loaded":
                    self._loaded(w, msg)
                elif op == "ready":
                    w.ready.set()
                    log.info("worker %d ready (pid %d), generation %d", w.index, msg["pid"],
                             msg["generation"], extra={"fields": {"worker": w.index, "pid": msg["pid"]}})
                elif op == "metrics":
                    w.snapshot = msg["snapshot"]
                elif op == "status_applied":
                    w.status_gen = max(w.status_gen, msg["generation"])
                elif op in ("prepared", "committed"):
                    fut = w.pending.pop((op, msg["seq"]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception:  # noqa: BLE001
            log.exception("worker %d: bad message", w.index)

    def _loaded(self, w: WorkerHandle, msg: dict) -> None:
        """A starting worker holds a config and an inventory: let it read its sockets if that
        config is the one being served (else a newer ``install`` is on its way to it)."""
        if not w.gated or msg.get("digest") != self.serving.digest:
            return
        w.gated = False
        # every status up to this one was sent before "go": applied before its first query
        w.status_gen = self.inventory.status.generation
        w.send({"op": "go", "generation": self.serving.generation, "status_generation": w.status_gen})
        log.info("worker %d holds generation %d and inventory %d; reading its sockets", w.index,
                 msg["generation"], w.status_gen)

    async def _watch(self, w: WorkerHandle) -> None:
        proc = w.proc
        code = await proc.wait()
        if w.snapshot is not None:
            self.retired.append(retired_snapshot(w.snapshot))
            w.snapshot = None
        for fut in w.pending.values():
            if not fut.done():
                fut.set_result({"ok": False, "reasons": [f"worker {w.index} exited"]})
        w.pending.clear()
        w.ready.clear()
        if w.writer is not None:
            w.writer.close()
            w.writer = None
        if self.stopping:
            return
        self.restarts += 1
        ran = time.monotonic() - w.started
        delay = 0.2 if ran > 10 else min(5.0, 0.5 * 2 ** min(self.restarts, 4))
        log.error("worker %d (pid %d) exited with status %s after %.1f s; restarting in %.1f s",
                  w.index, proc.pid, code, ran, delay)
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(w)

    async def stop_dns(self, timeout: float = 5.0) -> None:
        self.stopping = True
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout)
        except asyncio.TimeoutError:
            for p in procs:
                if p.returncode is None:
                    log.error("worker pid %d did not stop; killing it", p.pid)
                    p.kill()
            await asyncio.gather(*(p.wait() for p in procs), return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        for pair in self.socks:
            for sock in pair:
                sock.close()
        if self.geo_fd is not None:
            os.close(self.geo_fd)
            self.geo_fd = None
        if self.rrl_table is not None:
            self.rrl_table.close()
            self.rrl_table = None

    # ---------------------------------------------------------------- fan-out
    async def propagated(self, generation: int, timeout: float = 2.0) -> bool:
        """Wait until every worker that reads its sockets answers by inventory ``generation``
        (or newer); a gated worker applies it before it reads a socket (see ``_loaded``)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(not w.gated and w.connected and w.status_gen < generation for w in self.workers):
            if loop.time() > end:
                return False
            await asyncio.sleep(0.002)
        return True

    def _on_inventory(self, status, event) -> None:
        msg = {"op": "status", "status": dump_status(status)}
        for w in self.workers:
            w.send(msg)

    async def commit(self, new: State) -> tuple[bool, list[str]]:
        """Two phases: every worker prepares the same packed State; all agree, or all abort."""
        packed = await asyncio.to_thread(Packed, new)
        self._seq += 1
        seq = self._seq
        # a worker that is down or starting gets what is being served when it is let in
        asked = [(w, w.spawned, w.ask("prepared", seq, packed.message("prepare", seq=seq)))
                 for w in self.workers if w.connected and not w.gated]
        log.debug("generation %d built (digest %s); preparing it on %d worker(s)", new.generation,
                 packed.digest, len(asked))
        reasons: list[str] = []
        for w, _spawned, fut in asked:
            try:
                reply = await asyncio.wait_for(asyncio.shield(fut), PREPARE_TIMEOUT)
            except asyncio.TimeoutError:
                reply = {"ok": False, "reasons": [f"no answer within {PREPARE_TIMEOUT:.0f} s"]}
            if reply.get("ok") and reply.get("digest") != packed.digest:
                reply = {"ok": False, "reasons": [f"prepared digest {reply.get('digest')}, "
                                                  f"expected {packed.digest}"]}
            if not reply.get("ok"):
                reasons.extend(f"worker {w.index}: {r}" for r in reply.get("reasons") or ["refused"])
        if reasons:
            for w in self.workers:
                w.pending.pop(("prepared", seq), None)
                w.send({"op": "abort", "seq": seq})
            return False, reasons
        # commit: from here on the new generation is the one served; no await until every
        # worker has been told, so a worker spawned now starts on it
        self.holder.swap(new)
        self.serving = packed
        commits = []
        prepared = {w.index: spawned for w, spawned, _fut in asked}
        for w in self.workers:
            if prepared.get(w.index) == w.spawned:
                commits.append((w, w.ask("committed", seq, {"op": "commit", "seq": seq})))
            elif w.connected:  # started (or restarted) since prepare: it holds the old one
                w.send(packed.message("install"))
        for w, fut in commits:
            try:
                reply = await asyncio.wait_for(asyncio.shield(fut), COMMIT_TIMEOUT)
            except asyncio.TimeoutError:
                reply = {"ok": False, "reasons": ["no answer"]}
            if reply.get("generation") != new.generation and w.proc is not None and w.proc.returncode is None:
                # it cannot be left on the old generation: restart it, it then gets the new one
                log.error("worker %d did not confirm generation %d (%s); restarting it", w.index,
                          new.generation, "; ".join(reply.get("reasons") or ["?"]))
                w.proc.kill()
        return True, []

    def worker_snapshots(self) -> list[dict]:
        """The counters of every worker, live and exited (to sum for /metrics)."""
        return [w.snapshot for w in self.workers if w.snapshot is not None] + self.retired
