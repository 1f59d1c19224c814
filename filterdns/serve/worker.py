"""A worker process (``serve --workers N``): answers DNS on the sockets its supervisor bound,
with the config and inventory its supervisor sends. It never reads the config files.

Start-up, so that no query is answered without the current config and drains: the sockets
are inherited already bound, but nothing reads them yet. The worker takes the State the
supervisor is serving (``install``) and the inventory (``status``) from its channel
(``filterdns.serve.channel``), confirms what it holds (``loaded``: generation, digest,
inventory generation), applies whatever else arrives meanwhile, and only when the supervisor
answers ``go`` does it start reading its sockets, then says ``ready``. The channel is ordered,
so every drain the supervisor sent before ``go`` is in force before the first query is read.
A reload arrives in two phases: ``prepare`` (unpack the State aside, check its digest, answer
``prepared``), then ``commit`` (swap it in, answer ``committed``) or ``abort`` (drop it).

Test hooks (for the reload and start-up tests, off unless set): ``FILTERDNS_TEST_REFUSE_PREPARE``
(a comma list of worker indexes that refuse every ``prepare``), ``FILTERDNS_TEST_PREPARE_DELAY``
(seconds a worker waits before answering ``prepare``) and ``FILTERDNS_TEST_START_DELAY``
(seconds a worker waits, holding its first config and inventory, before confirming them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from filterdns.config.state import StateHolder, digest, unpack
from filterdns.dns import identity
from filterdns.dns.responder import Responder
from filterdns.routing.inventory import Inventory, load_status
from filterdns.serve import channel
from filterdns.serve import tap
from filterdns.serve.listeners import DnsListeners
from filterdns.serve.runtime import install_loop_policy

log = logging.getLogger("filterdns.serve.worker")

SNAPSHOT_INTERVAL = 1.0


def _refuses(index: int) -> bool:
    hook = os.environ.get("FILTERDNS_TEST_REFUSE_PREPARE", "")
    return str(index) in {x.strip() for x in hook.split(",") if x.strip()}


class Worker:
    def __init__(self, fd: int, args: dict):
        from filterdns.ops.metrics import Metrics  # this process's own counters (the top of it)

        self.index = args["index"]
        identity.set_server_id(args.get("server_id"))
        self.args = args
        self.metrics = Metrics()
        self.fd = fd
        self.geo = None
        if args.get("geo_fd") is not None:
            self.geo = channel.open_shared_geo(args["geo_fd"], args.get("geo_path") or "geo")
        self.holder: StateHolder | None = None
        self.inventory: Inventory | None = None
        self.staged: dict[int, tuple] = {}  # seq -> (State, digest)
        self.digest = ""
        self.stop = asyncio.Event()

    def _unpack(self, msg: dict):
        blob = msg["blob"]
        got = digest(blob)
        if got != msg["digest"]:
            raise ValueError(f"digest {got} differs from the supervisor's {msg['digest']}")
        state = unpack(blob, self.geo)
        if state.generation != msg["generation"]:
            raise ValueError(f"generation {state.generation}, expected {msg['generation']}")
        return state, got

    def _install(self, msg: dict) -> None:
        state, self.digest = self._unpack(msg)
        if self.holder is None:
            self.holder = StateHolder(state)
        else:
            self.holder.swap(state)

    async def run(self) -> int:
        reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=self.fd))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        # 1. the current config and inventory, confirmed, before any socket is read
        try:
            status = await self._start(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return 1  # the supervisor is gone before we served anything
        self.inventory = Inventory(status)
        # 2. read the sockets the supervisor bound and passed down
        socks = [(socket.socket(fileno=u), socket.socket(fileno=t)) for u, t in self.args["sockets"]]
        rrl_table = None
        if self.args.get("rrl_fd") is not None:  # the server's one RRL table, shared
            from filterdns.dns.rrl import RrlTable

            rrl_table = RrlTable.attach(self.args["rrl_fd"], self.args["rrl"]["table_size"])
        responder = Responder(self.holder, self.inventory, self.metrics)
        self.metrics.track_zones(self.holder)  # requests by zone
        responder.tap = qtap = tap.build(self.holder, self.metrics, self.args.get("tap"), worker=self.index)
        # worker 0 leads on UDP; the others stand by and read while it does not keep up alone
        dns = DnsListeners(responder, self.metrics, self.args["tcp"], self.args["rrl"], rrl_table=rrl_table,
                           standby=self.index > 0)
        await dns.open(socks)
        st = self.holder.state
        log.debug("listening on %d inherited socket pair(s), generation %d", len(socks), st.generation)
        channel.write(writer, {"op": "ready", "pid": os.getpid(), "generation": st.generation,
                               "digest": self.digest})
        await writer.drain()
        tasks = [asyncio.create_task(self._push_metrics(writer)),
                 asyncio.create_task(self._commands(reader, writer))]
        await self.stop.wait()
        try:  # the last counts, so the supervisor's totals keep them
            channel.write(writer, {"op": "metrics", "snapshot": self.metrics.snapshot()})
            await asyncio.wait_for(writer.drain(), 1)
        except Exception:  # noqa: BLE001
            pass
        for t in tasks:
            t.cancel()
        await dns.close()
        if qtap is not None:
            qtap.close()
        return 0

    async def _start(self, reader, writer):
        """Take ``install`` and ``status`` until the supervisor says ``go``; confirm what is
        held (``loaded``) after each change. Returns the inventory status to serve."""
        status = None
        delayed = False
        while True:
            msg = await channel.read(reader)
            op = msg["op"]
            if op == "go":
                if self.holder is None or status is None:  # never sent before "loaded"
                    raise ConnectionError("go before the config and the inventory")
                return status
            if op == "install":
                self._install(msg)
            elif op == "status":
                status = load_status(msg["status"])
            else:  # the supervisor sends a starting worker nothing else; ignore, stay safe
                continue
            if self.holder is None or status is None:
                continue
            delay = float(os.environ.get("FILTERDNS_TEST_START_DELAY") or 0)
            if delay and not delayed:
                delayed = True
                await asyncio.sleep(delay)
            channel.write(writer, {"op": "loaded", "generation": self.holder.state.generation,
                                   "digest": self.digest, "status_generation": status.generation})
            await writer.drain()

    async def _push_metrics(self, writer) -> None:
        while not self.stop.is_set():
            channel.write(writer, {"op": "metrics", "snapshot": self.metrics.snapshot()})
            try:
                await writer.drain()
                await asyncio.wait_for(self.stop.wait(), SNAPSHOT_INTERVAL)
            except asyncio.TimeoutError:
                pass
            except (ConnectionError, OSError):
                self.stop.set()

    async def _commands(self, reader, writer) -> None:
        try:
            while True:
                msg = await channel.read(reader)
                op = msg["op"]
                if op == "status":
                    self.inventory.replace(load_status(msg["status"]))
                    # the supervisor acknowledges a drain only once every worker answers by it
                    channel.write(writer, {"op": "status_applied",
                                           "generation": self.inventory.status.generation})
                elif op == "install":
                    self._install(msg)
                    log.info("generation %d in service", self.holder.state.generation)
                elif op == "prepare":
                    reply = await self._prepare(msg)
                    channel.write(writer, reply)
                elif op == "commit":
                    state, self.digest = self.staged.pop(msg["seq"])
                    self.holder.swap(state)
                    self.staged.clear()
                    log.info("generation %d in service", state.generation)
                    channel.write(writer, {"op": "committed", "seq": msg["seq"], "generation": state.generation})
                elif op == "abort":
                    self.staged.pop(msg["seq"], None)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the supervisor is gone: stop rather than linger as an orphan
        except Exception:  # noqa: BLE001 - a broken channel: exit, the supervisor restarts us
            log.exception("bad message from the supervisor")
        self.stop.set()

    async def _prepare(self, msg: dict) -> dict:
        delay = float(os.environ.get("FILTERDNS_TEST_PREPARE_DELAY") or 0)
        if delay:
            await asyncio.sleep(delay)
        reply = {"op": "prepared", "seq": msg["seq"], "ok": False, "reasons": [], "digest": None}
        if _refuses(self.index):
            reply["reasons"] = ["refused (FILTERDNS_TEST_REFUSE_PREPARE)"]
            return reply
        try:
            state, got = self._unpack(msg)
        except Exception as e:  # noqa: BLE001 - refuse, and say why
            reply["reasons"] = [f"cannot take generation {msg['generation']}: {type(e).__name__}: {e}"]
            return reply
        self.staged = {msg["seq"]: (state, got)}
        reply.update(ok=True, digest=got)
        return reply


def main(fd: int, args: dict) -> int:
    install_loop_policy()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the supervisor's (a hangup of the group too)

    async def run() -> int:
        return await Worker(fd, args).run()

    return asyncio.run(run())


if __name__ == "__main__":
    import ast

    from filterdns import logs

    worker_args = ast.literal_eval(sys.argv[2])
    logs.configure(worker_args.get("log_format", "text"), worker_args.get("verbose", False),
                   worker=worker_args.get("index"))
    sys.exit(main(int(sys.argv[1]), worker_args))
