"""What the two top-level process roles share: the config and its reloads, the inventory, the
file watcher, signals and an orderly stop.

The roles (``serve/single.py``: one process answers DNS itself; ``serve/supervisor.py``: worker
processes answer, see ``serve/worker.py``) differ in one thing: how a built config reaches the
processes that answer. A reload is therefore: read the inputs once and build aside (the same
``build_state`` that ``filterdns check`` and start-up call), then ``commit`` (role-specific),
which either puts the new generation in service everywhere or leaves every process on the old
one. Nothing here imports the operator layer (``filterdns.ops``): ``filterdns.app`` wires the
controller, control API, metrics and health checks around a runtime.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Awaitable, Callable

from filterdns.config.build import build_state
from filterdns.config.state import State, StateHolder
from filterdns.dns import identity
from filterdns.errors import ConfigError
from filterdns.routing.inventory import Inventory
from filterdns.serve.options import ServeOptions
from filterdns.serve.watch import FileWatcher, signature

log = logging.getLogger("filterdns")


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


class Runtime:
    role = "server"

    def __init__(self, opts: ServeOptions, metrics):
        self.opts = opts
        self.metrics = metrics
        identity.set_server_id(opts.server_id)  # before any listener opens (workers: theirs)
        self.inventory = Inventory()
        self.holder: StateHolder | None = None
        self.geo = None  # the geo database, opened once and kept across reloads
        self.files_sig = None  # signature of the files the serving config was built from
        # every reload trigger (SIGHUP, the file watcher) goes through here; the app points it
        # at the operator controller, which serialises, counts and audits reloads
        self.request_reload: Callable[[str], Awaitable[tuple[bool, list[str]]]] = self.reload
        self.controller = None  # set by filterdns.app (the ops layer); None when run bare
        self.render_metrics = None  # None: render self.metrics (the app sets a merged one)
        self._reload_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._aux: list = []  # (name, stop coroutine function), stopped in reverse order
        self._watch_task: asyncio.Task | None = None

    async def propagated(self, generation: int, timeout: float = 2.0) -> bool:
        """True once every process answering DNS uses inventory ``generation``: here at once
        (one process); the supervisor waits for its workers."""
        return True

    # ----------------------------------------------------------------- config
    def _open_geo(self):
        return None  # build_state opens --geoip (a role may share one copy instead)

    def _build(self, generation: int) -> tuple[tuple, State | None, ConfigError | None]:
        """Read and build once (blocking; run in a thread): (signature taken before reading,
        State or None, the ConfigError). The signature is of what was read, accepted or not."""
        o = self.opts
        sig = signature((o.zones, o.chains))
        try:
            state = build_state(o.zones, o.chains, o.geoip, geo=self.geo, generation=generation)
        except ConfigError as e:
            return sig, None, e
        return sig, state, None

    def load_initial(self) -> State:
        """Build the first State; raises ConfigError (start-up refuses a bad config)."""
        self.geo = self._open_geo()
        sig, state, error = self._build(1)
        if error is not None:
            raise error
        self.geo = state.geo
        self.files_sig = sig
        self.holder = StateHolder(state)
        return state

    async def reload(self, cause: str = "api") -> tuple[bool, list[str]]:
        """Build the new config aside once and put it in service in every process that answers
        DNS, or in none: on any error every process keeps the old generation. (ok, reasons)."""
        async with self._reload_lock:
            old = self.holder.state
            gen = old.generation + 1
            t0 = time.perf_counter()
            f = {"cause": cause, "generation": gen}
            log.debug("reload (%s): building generation %d from %s and %s", cause, gen,
                      self.opts.zones, self.opts.chains, extra={"fields": f})
            try:
                sig, new, error = await asyncio.to_thread(self._build, gen)
            except Exception as e:  # noqa: BLE001 - never lose the old config
                log.exception("reload (%s) failed; still serving generation %d", cause, old.generation)
                return False, [f"internal error: {type(e).__name__}: {e}"]
            self.files_sig = sig  # a rejected config is not retried until the files change again
            if error is not None:
                problems = [str(p) for p in error.problems]
                log.error("reload (%s) rejected; still serving generation %d:\n  %s",
                          cause, old.generation, "\n  ".join(problems),
                          extra={"fields": {**f, "problems": problems}})
                return False, problems
            log.debug("reload (%s): generation %d built in %.0f ms; putting it in service", cause,
                      gen, (time.perf_counter() - t0) * 1000, extra={"fields": f})
            try:
                ok, reasons = await self.commit(new)
            except Exception as e:  # noqa: BLE001
                log.exception("reload (%s): generation %d not put in service", cause, gen)
                ok, reasons = False, [f"internal error: {type(e).__name__}: {e}"]
            if not ok:
                log.error("reload (%s): generation %d not taken; every process still serves "
                          "generation %d:\n  %s", cause, gen, self.holder.state.generation,
                          "\n  ".join(reasons), extra={"fields": {**f, "problems": reasons}})
                return False, reasons
            ms = (time.perf_counter() - t0) * 1000
            log.info("reload (%s): generation %d in service (%s) in %.0f ms", cause, gen,
                     new.summary, ms, extra={"fields": {**f, "ms": round(ms, 1)}})
            for w in getattr(new, "warnings", ()):
                log.warning("%s", w)
            return True, []

    async def commit(self, new: State) -> tuple[bool, list[str]]:
        """Put a built State in service everywhere, or nowhere (role-specific)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- run
    @property
    def listeners_open(self) -> bool:
        raise NotImplementedError

    def add_aux(self, name: str, stop) -> None:
        """Register a piece to stop (in reverse order) when the server stops."""
        self._aux.append((name, stop))

    async def start(self) -> None:
        await self.start_dns()
        if self.opts.watch:
            o = self.opts
            watcher = FileWatcher((o.zones, o.chains), o.watch_interval, lambda: self.files_sig,
                                  self.request_reload)
            self._watch_task = asyncio.create_task(watcher.run(self._stop))
        st = self.holder.state
        log.info("serving generation %d (startup): %s", st.generation, st.summary,
                 extra={"fields": {"cause": "startup", "generation": st.generation}})
        for w in getattr(st, "warnings", ()):
            log.warning("%s", w)

    async def start_dns(self) -> None:
        raise NotImplementedError

    async def stop_dns(self) -> None:
        raise NotImplementedError

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; installed before start-up so a signal that
        arrives while listeners and workers come up is honoured, not fatal."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.request_reload("SIGHUP")))

    async def serve_forever(self) -> None:
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._watch_task is not None:
            self._watch_task.cancel()
        try:
            await self.stop_dns()
        except Exception:  # noqa: BLE001
            log.exception("stopping the DNS listeners failed")
        for name, fn in reversed(self._aux):
            try:
                await fn()
            except Exception:  # noqa: BLE001
                log.exception("stopping %s failed", name)
        self._aux.clear()
        log.info("stopped")
