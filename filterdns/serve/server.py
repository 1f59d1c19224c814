"""Assembly: load the config, open the listeners, run until SIGTERM/SIGINT, reload on SIGHUP.

Nothing here decides answers; it wires the pieces around the core: transports, the state holder
and its reloads (signal, control API, file watcher), the inventory, metrics, control API and
health checks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from filterdns.config.build import build_state
from filterdns.errors import ConfigError
from filterdns.routing.inventory import Inventory
from filterdns.dns.responder import Responder
from filterdns.config.state import StateHolder
from filterdns.serve.tcp import TcpProtocol, TcpServerState
from filterdns.serve.udp import UdpProtocol

log = logging.getLogger("filterdns")


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """'127.0.0.1:8053', '[::1]:8053', '::1' (with a default port) -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif text.count(":") > 1:
        host, port = text, ""
    else:
        host, port = text, ""
    if not port:
        if default_port is None:
            raise ValueError(f"{text!r}: a port is required (ADDR:PORT)")
        port = str(default_port)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: bad port {port!r}")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, int(port)


@dataclass
class ServeOptions:
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 8053)])
    zones: str = "zones"
    chains: str = "chains"
    geoip: str | None = None
    metrics: tuple[str, int] | None = ("127.0.0.1", 9153)
    control: tuple[str, int] | None = ("127.0.0.1", 9154)
    control_token_file: str | None = None
    state_dir: str = "var"
    max_drain_share: float | None = None
    tcp_max_connections: int = 256
    tcp_idle_timeout: float = 10.0
    watch: bool = True
    watch_interval: float = 1.0
    health: bool = True
    workers: int = 1


class Server:
    def __init__(self, opts: ServeOptions, metrics=None):
        self.opts = opts
        if metrics is None:
            from filterdns.ops.metrics import metrics  # the process-wide instance /metrics renders
        self.metrics = metrics
        self.render_metrics = None  # None: render self.metrics; workers' parent merges instead
        self.controller = None
        self.holder: StateHolder | None = None
        self.inventory = Inventory()
        self.responder: Responder | None = None
        self.transports: list = []
        self.servers: list = []
        self.tcp_state: TcpServerState | None = None
        self._listeners_open = False
        self.supervisor = None  # workers.Supervisor when serving with --workers N > 1
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._watch_task = None
        self._aux: list = []  # (name, stop coroutine function)
        self._files_sig = None

    # ----------------------------------------------------------------- config
    def load_initial(self):
        """Build the first State; raises ConfigError (start-up refuses a bad config)."""
        o = self.opts
        state = build_state(o.zones, o.chains, o.geoip, generation=1)
        self.holder = StateHolder(state)
        self._files_sig = self._signature()
        return state

    async def reload(self, cause: str = "api") -> tuple[bool, list[str]]:
        """Reload from any trigger (SIGHUP, files changed, control API, CLI): through the
        Controller, which serialises reloads, counts them and writes the audit log."""
        if self.controller is not None:
            return await self.controller.reload(actor=cause)
        return await self.reload_state(cause)

    @property
    def listeners_open(self) -> bool:
        if self.supervisor is not None:
            return self.supervisor.all_ready
        return self._listeners_open

    async def reload_state(self, cause: str = "api", generation: int | None = None) -> tuple[bool, list[str]]:
        """Build the new State aside (same code as `filterdns check`), then swap it in.
        On any error keep the old one; return (ok, reasons). With workers, the supervisor
        validates first and only a config it accepted is sent to the workers."""
        async with self._reload_lock:
            o = self.opts
            old = self.holder.state
            gen = old.generation + 1 if generation is None else generation
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            try:
                new = await loop.run_in_executor(
                    None, lambda: build_state(o.zones, o.chains, geo=old.geo, generation=gen))
            except ConfigError as e:
                reasons = [str(p) for p in e.problems]
                log.error("reload (%s) rejected; still serving generation %d:\n  %s",
                          cause, old.generation, "\n  ".join(reasons))
                self._files_sig = self._signature()
                return False, reasons
            except Exception as e:  # noqa: BLE001 - never lose the old config
                log.exception("reload (%s) failed; still serving generation %d", cause, old.generation)
                return False, [f"internal error: {e}"]
            self.holder.swap(new)
            self._files_sig = self._signature()
            if self.supervisor is not None:
                ok, reasons = await self.supervisor.reload(new.generation)
                if not ok:
                    log.error("reload (%s): generation %d not taken by every worker:\n  %s",
                              cause, new.generation, "\n  ".join(reasons))
                    return False, reasons
            log.info("reload (%s): generation %d in service (%s) in %.0f ms", cause,
                     new.generation, new.summary, (time.perf_counter() - t0) * 1000)
            return True, []

    def _signature(self):
        sig = []
        for d in (self.opts.zones, self.opts.chains):
            p = Path(d)
            if not p.is_dir():
                continue
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    try:
                        st = f.stat()
                    except OSError:
                        continue
                    sig.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(sig)

    async def _watch(self):
        """Reload when files under the zones or chains directories change (polled, debounced)."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.opts.watch_interval)
                return
            except asyncio.TimeoutError:
                pass
            try:
                sig = await asyncio.get_running_loop().run_in_executor(None, self._signature)
            except Exception:  # noqa: BLE001
                log.exception("watching the config directories failed")
                continue
            if sig != self._files_sig:
                # let a burst of writes settle before building
                await asyncio.sleep(min(0.3, self.opts.watch_interval))
                settled = await asyncio.get_running_loop().run_in_executor(None, self._signature)
                if settled != self._signature() or settled == self._files_sig:
                    continue
                await self.reload("files changed")

    # ----------------------------------------------------------------- listeners
    def bind_sockets(self) -> list[tuple[socket.socket, socket.socket]]:
        """Bind a UDP and a TCP socket per --listen address (port 0: the kernel picks one,
        the same for both). With workers, the supervisor binds them once and every worker
        serves the same sockets: the kernel hands each datagram to whichever worker is free,
        which spreads load evenly even when a few clients send everything."""
        o = self.opts
        out = []
        for host, port in o.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            usock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                usock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            usock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            usock.bind((host, port))
            port = usock.getsockname()[1]
            tsock = socket.socket(family, socket.SOCK_STREAM)
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                tsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tsock.bind((host, port))
            tsock.listen(1024)
            out.append((usock, tsock))
        return out

    async def open_listeners(self, socks: list[tuple[socket.socket, socket.socket]] | None = None):
        """Serve DNS on the given (UDP, TCP) socket pairs, or on freshly bound ones."""
        loop = asyncio.get_running_loop()
        o = self.opts
        self.responder = Responder(self.holder, self.inventory, self.metrics)
        self.tcp_state = TcpServerState(self.responder, self.metrics, o.tcp_max_connections,
                                        o.tcp_idle_timeout)
        if socks is None:
            socks = self.bind_sockets()
        for usock, tsock in socks:
            usock.setblocking(False)
            tsock.setblocking(False)
            tr, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(self.responder), sock=usock)
            self.transports.append(tr)
            srv = await loop.create_server(lambda: TcpProtocol(self.tcp_state), sock=tsock, backlog=1024)
            self.servers.append(srv)
            host, port = usock.getsockname()[:2]
            shown = f"[{host}]:{port}" if usock.family == socket.AF_INET6 else f"{host}:{port}"
            log.info("listening on %s (udp, tcp)", shown)
            self.bound = getattr(self, "bound", []) + [(host, port)]
        self._listeners_open = True

    # ----------------------------------------------------------------- run
    def add_aux(self, name: str, stop) -> None:
        """Register a piece to stop (in reverse order) when the server stops."""
        self._aux.append((name, stop))

    async def start(self):
        if self.holder is None:
            self.load_initial()
        from filterdns.ops import wiring
        self.controller = wiring.build_controller(self)  # drains are restored before serving
        if self.opts.workers > 1:
            from filterdns.ops.metrics import merged_renderer
            from filterdns.serve.workers import Supervisor
            self.supervisor = Supervisor(self, self.opts.workers)
            # /metrics shows the sum of every worker's counters and the supervisor's own
            self.render_metrics = merged_renderer(lambda: self.holder.state, self.inventory,
                                                  self.supervisor.merged_snapshot)
        # the control API answers (readyz: not yet) while the DNS listeners come up
        await self._start_aux()
        if self.supervisor is not None:
            await self.supervisor.start()
            log.info("%d workers serving on %s", self.opts.workers,
                     ", ".join(f"{h}:{p}" for h, p in self.opts.listen))
        else:
            await self.open_listeners()
        if self.opts.watch:
            self._watch_task = asyncio.create_task(self._watch())
        st = self.holder.state
        log.info("serving generation %d: %s", st.generation, st.summary)

    async def _start_aux(self):
        """Metrics, control API, health checks: wired by filterdns.ops.controller (see there)."""
        from filterdns.ops import wiring
        await wiring.start(self)

    def request_stop(self):
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; installed before start-up so a signal that
        arrives while listeners and workers come up is honoured, not fatal."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))

    async def serve_forever(self):
        await self._stop.wait()
        await self.stop()

    async def stop(self):
        self._stop.set()
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self.supervisor is not None:
            await self.supervisor.stop()
        for name, fn in reversed(self._aux):
            try:
                await fn()
            except Exception:  # noqa: BLE001
                log.exception("stopping %s failed", name)
        for tr in self.transports:
            tr.close()
        for srv in self.servers:
            srv.close()
        if self.tcp_state is not None:
            for p in list(self.tcp_state.protocols):
                if p.transport is not None:
                    p.transport.close()
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
        self._listeners_open = False
        log.info("stopped")


def install_loop_policy() -> str:
    """uvloop when installed (several times faster UDP), else asyncio's default loop."""
    if os.environ.get("FILTERDNS_NO_UVLOOP"):
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def run(opts: ServeOptions) -> int:
    loop_name = install_loop_policy()

    async def main():
        server = Server(opts)
        try:
            server.load_initial()
        except ConfigError as e:
            for p in e.problems:
                log.error("%s", p)
            log.error("configuration rejected (%d problem(s)); not starting", len(e.problems))
            return 1
        from filterdns.ops.wiring import WiringError
        server.install_signal_handlers()
        try:
            await server.start()
        except (OSError, WiringError) as e:
            log.error("cannot start: %s", e)
            await server.stop()
            return 1
        log.info("event loop: %s; pid %d", loop_name, os.getpid())
        await server.serve_forever()
        return 0

    return asyncio.run(main())
