"""``filterdns serve``, assembled: a process role from ``filterdns.serve`` with the operator
pieces of ``filterdns.ops`` wired around it. The one place that knows both layers, so that
imports point down: cli -> app -> ops -> serve -> dns/routing.

Order matters for "no answer before the state": the config is built, then the controller
restores the durable drains and feed values into the inventory, then the control API and
metrics come up (``/readyz`` says not ready), and only then are the DNS listeners opened (by
this process, or by workers that first receive the config and the inventory).
"""

from __future__ import annotations

import asyncio
import logging
import os

from filterdns.errors import ConfigError
from filterdns.serve.options import ServeOptions
from filterdns.serve.runtime import Runtime, install_loop_policy
from filterdns.serve.single import SingleProcess
from filterdns.serve.supervisor import Supervisor

log = logging.getLogger("filterdns")


def make_runtime(opts: ServeOptions, metrics) -> Runtime:
    return Supervisor(opts, metrics) if opts.workers > 1 else SingleProcess(opts, metrics)


async def start(rt: Runtime) -> None:
    """Wire the operator pieces around a runtime whose config is loaded, then start it.
    Raises OSError or WiringError when a listener or a setting cannot be used."""
    from filterdns.ops import wiring
    from filterdns.ops.metrics import merge, merged_renderer

    rt.controller = wiring.build_controller(rt)  # drains are restored before serving
    # the audit log's actor: "SIGHUP" or "file watcher"; the log line says the whole cause
    rt.request_reload = lambda cause: rt.controller.reload(actor=cause.split(":")[0], cause=cause)
    if isinstance(rt, Supervisor):
        # /metrics shows the sum of every worker's counters and the supervisor's own
        rt.render_metrics = merged_renderer(
            lambda: rt.holder.state, rt.inventory,
            lambda: merge([rt.metrics.snapshot(), *rt.worker_snapshots()]),
            store=rt.controller.store, processes=rt.processes)
    await wiring.start(rt)  # the control API answers (readyz: not yet) while DNS comes up
    await rt.start()


def run(opts: ServeOptions) -> int:
    loop_name = install_loop_policy()

    async def main() -> int:
        from filterdns.ops.metrics import metrics  # the process-wide instance /metrics renders
        from filterdns.ops.wiring import WiringError

        rt = make_runtime(opts, metrics)
        try:
            rt.load_initial()
        except ConfigError as e:
            for p in e.problems:
                log.error("%s", p)
            log.error("configuration rejected (%d problem(s)); not starting", len(e.problems))
            return 1
        rt.install_signal_handlers()
        try:
            await start(rt)
        except (OSError, WiringError) as e:
            log.error("cannot start: %s", e)
            await rt.stop()
            return 1
        log.info("event loop: %s; pid %d", loop_name, os.getpid())
        await rt.serve_forever()
        return 0

    return asyncio.run(main())
