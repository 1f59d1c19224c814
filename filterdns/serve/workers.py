"""Several worker processes sharing the DNS sockets (``serve --workers N``).

Python answers queries on one core per process, so to use every core the server runs N worker
processes that serve the very same UDP and TCP sockets, bound once by the supervisor and
inherited: the kernel gives each datagram (and each connection) to a worker that is waiting,
so load spreads evenly even when a few busy resolvers send most queries (SO_REUSEPORT would
hash each resolver to one worker). The supervisor owns everything else:

* the supervisor keeps the operator state (Controller, Inventory, durable drains and feeds),
  the control API, the metrics endpoint, health checks, drain automation and the file watcher;
* every inventory change (drain, undrain, feed, health verdict) is pushed at once to every
  worker over a private socketpair, so a drain reaches all of them within milliseconds;
* a reload is validated in the supervisor first (same code as ``filterdns check``), then each
  worker builds the same config aside and swaps it; a rejected config reaches no worker;
* workers send their counters every second; ``/metrics`` shows their sum (plus the counts of
  workers that have exited, so counters never go backwards);
* a worker that dies is logged and started again (with a back-off), and receives the current
  inventory before it answers its first query.

Messages are length-prefixed pickles over an AF_UNIX socketpair between our own processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time

from filterdns.routing.inventory import dump_status, load_status

log = logging.getLogger("filterdns.serve.workers")

_LEN = struct.Struct("!I")
MAX_MSG = 64 << 20
SNAPSHOT_INTERVAL = 1.0


async def _read(reader: asyncio.StreamReader):
    head = await reader.readexactly(4)
    n = _LEN.unpack(head)[0]
    if n > MAX_MSG:
        raise ValueError(f"message of {n} bytes")
    return pickle.loads(await reader.readexactly(n))


def _write(writer: asyncio.StreamWriter, msg) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LEN.pack(len(data)) + data)


class WorkerHandle:
    def __init__(self, index: int):
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready = asyncio.Event()
        self.snapshot: dict | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.started = 0.0


class Supervisor:
    """Starts, feeds, reloads and restarts the workers of one server."""

    def __init__(self, server, n: int):
        self.server = server
        self.n = n
        self.workers = [WorkerHandle(i) for i in range(n)]
        self.retired: list[dict] = []  # last snapshots of exited workers
        self.restarts = 0
        self.stopping = False
        self._seq = 0
        self._tasks: set[asyncio.Task] = set()

    # ---------------------------------------------------------------- lifecycle
    async def start(self, timeout: float = 20.0) -> None:
        # one set of sockets, shared by every worker (and kept open here across restarts)
        self.socks = self.server.bind_sockets()
        for usock, _tcp in self.socks:
            host, port = usock.getsockname()[:2]
            log.info("listening on %s (udp, tcp), shared by %d workers",
                     f"[{host}]:{port}" if usock.family == socket.AF_INET6 else f"{host}:{port}", self.n)
        self.server.inventory.subscribe(self._on_inventory)
        for w in self.workers:
            await self._spawn(w)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), timeout)
        except asyncio.TimeoutError:
            raise OSError(f"workers did not start within {timeout:.0f} s") from None

    @property
    def all_ready(self) -> bool:
        return all(w.ready.is_set() for w in self.workers)

    async def _spawn(self, w: WorkerHandle) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        o = self.server.opts
        args = {
            "listen": o.listen, "zones": o.zones, "chains": o.chains, "geoip": o.geoip,
            "tcp_max_connections": o.tcp_max_connections, "tcp_idle_timeout": o.tcp_idle_timeout,
            "generation": self.server.holder.state.generation, "index": w.index,
            "sockets": [(u.fileno(), t.fileno()) for u, t in self.socks],
        }
        env = dict(os.environ)
        fds = (child.fileno(),) + tuple(fd for pair in args["sockets"] for fd in pair)
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "filterdns.serve.workers", str(child.fileno()), repr(args),
            pass_fds=fds, env=env, stdin=asyncio.subprocess.DEVNULL)
        child.close()
        w.started = time.monotonic()
        w.ready.clear()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        w.writer = writer
        self._task(self._listen(w, reader))
        self._task(self._watch(w))

    def _task(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _listen(self, w: WorkerHandle, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await _read(reader)
                op = msg.get("op")
                if op == "ready":
                    # the current inventory before the first query is answered
                    _write(w.writer, {"op": "status", "status": dump_status(self.server.inventory.status)})
                    await w.writer.drain()
                    w.ready.set()
                    log.info("worker %d ready (pid %d)", w.index, msg["pid"])
                elif op == "metrics":
                    w.snapshot = msg["snapshot"]
                elif op == "reloaded":
                    fut = w.pending.pop(msg["seq"], None)
                    if fut is not None and not fut.done():
                        fut.set_result((msg["ok"], msg["reasons"]))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception:  # noqa: BLE001
            log.exception("worker %d: bad message", w.index)

    async def _watch(self, w: WorkerHandle) -> None:
        proc = w.proc
        code = await proc.wait()
        if w.snapshot is not None:
            self.retired.append(w.snapshot)
            w.snapshot = None
        for fut in w.pending.values():
            if not fut.done():
                fut.set_result((False, [f"worker {w.index} exited"]))
        w.pending.clear()
        w.ready.clear()
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

    async def stop(self, timeout: float = 5.0) -> None:
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
        for pair in getattr(self, "socks", ()):
            for sock in pair:
                sock.close()

    # ---------------------------------------------------------------- fan-out
    def _on_inventory(self, status, event) -> None:
        msg = {"op": "status", "status": dump_status(status)}
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                _write(w.writer, msg)

    async def reload(self, generation: int, timeout: float = 30.0) -> tuple[bool, list[str]]:
        """Tell every worker to build and swap the config the supervisor just validated."""
        self._seq += 1
        seq = self._seq
        loop = asyncio.get_running_loop()
        futs = []
        for w in self.workers:
            if w.writer is None or w.writer.is_closing() or not w.ready.is_set():
                continue  # a worker starting now loads the current files itself
            fut = loop.create_future()
            w.pending[seq] = fut
            _write(w.writer, {"op": "reload", "seq": seq, "generation": generation})
            futs.append((w, fut))
        reasons: list[str] = []
        for w, fut in futs:
            try:
                ok, why = await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                ok, why = False, ["no answer"]
            if not ok:
                reasons.extend(f"worker {w.index}: {r}" for r in why)
        return not reasons, reasons

    def merged_snapshot(self) -> dict:
        from filterdns.ops.metrics import merge

        snaps = [self.server.metrics.snapshot()]
        snaps += [w.snapshot for w in self.workers if w.snapshot is not None]
        snaps += self.retired
        return merge(snaps)


# -------------------------------------------------------------------- the worker process


def _worker_main(fd: int, args: dict) -> int:
    from filterdns.serve.server import Server, ServeOptions, install_loop_policy

    install_loop_policy()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop

    async def main() -> int:
        from filterdns.ops.metrics import Metrics

        opts = ServeOptions(listen=[tuple(x) for x in args["listen"]], zones=args["zones"],
                            chains=args["chains"], geoip=args["geoip"], metrics=None, control=None,
                            tcp_max_connections=args["tcp_max_connections"],
                            tcp_idle_timeout=args["tcp_idle_timeout"], watch=False, health=False)
        server = Server(opts, metrics=Metrics())
        from filterdns.config.build import build_state
        from filterdns.config.state import StateHolder

        server.holder = StateHolder(build_state(opts.zones, opts.chains, opts.geoip,
                                                generation=args["generation"]))
        socks = [(socket.socket(fileno=u), socket.socket(fileno=t)) for u, t in args["sockets"]]
        await server.open_listeners(socks)
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        async def push_metrics():
            while not stop.is_set():
                _write(writer, {"op": "metrics", "snapshot": server.metrics.snapshot()})
                try:
                    await writer.drain()
                    await asyncio.wait_for(stop.wait(), SNAPSHOT_INTERVAL)
                except asyncio.TimeoutError:
                    pass
                except (ConnectionError, OSError):
                    stop.set()

        async def commands():
            try:
                while True:
                    msg = await _read(reader)
                    op = msg.get("op")
                    if op == "status":
                        server.inventory.replace(load_status(msg["status"]))
                    elif op == "reload":
                        ok, reasons = await server.reload_state("supervisor", generation=msg["generation"])
                        _write(writer, {"op": "reloaded", "seq": msg["seq"], "ok": ok, "reasons": reasons})
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass  # the supervisor is gone: stop rather than linger as an orphan
            stop.set()

        _write(writer, {"op": "ready", "pid": os.getpid()})
        await writer.drain()
        tasks = [asyncio.create_task(push_metrics()), asyncio.create_task(commands())]
        await stop.wait()
        try:  # the last counts, so the supervisor's totals keep them
            _write(writer, {"op": "metrics", "snapshot": server.metrics.snapshot()})
            await asyncio.wait_for(writer.drain(), 1)
        except Exception:  # noqa: BLE001
            pass
        for t in tasks:
            t.cancel()
        await server.stop()
        return 0

    return asyncio.run(main())


if __name__ == "__main__":
    import ast
    import logging as _logging

    _logging.basicConfig(level=_logging.INFO, stream=sys.stderr,
                         format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    sys.exit(_worker_main(int(sys.argv[1]), ast.literal_eval(sys.argv[2])))
