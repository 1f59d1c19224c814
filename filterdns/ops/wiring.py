"""Starts the pieces around the core for a running server: the operator Controller (durable
drains and feed values, audit log, safety rule), the control API, the metrics endpoint, health
checks and the Edge PoP Drain automation. ``server`` is a ``filterdns.serve.runtime.Runtime``
(its ``opts``, ``holder``, ``inventory``, ``metrics``, ``reload``, ``listeners_open``); the
assembly in ``filterdns.app`` calls this, so the serve layer never imports ops."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger("filterdns")


class WiringError(Exception):
    """A bad operator setting (token file, state directory) found at start-up."""


def build_store(opts):
    """The state store ``--state`` names: the file store in ``--state-dir`` (default) or etcd."""
    from filterdns.ops.store import open_store

    state_dir = Path(opts.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WiringError(f"--state-dir {state_dir}: {e}") from None
    etcd = {k: getattr(opts, k, None) for k in ("etcd_ca", "etcd_cert", "etcd_key", "etcd_user",
                                                "etcd_password_file", "health_policy", "instance")}
    if etcd["instance"] is None:
        import socket
        where = f":{opts.control[1]}" if opts.control else f"-{os.getpid()}"
        etcd["instance"] = socket.gethostname() + where
    elif not etcd["instance"] or "/" in etcd["instance"] or len(etcd["instance"]) > 128:
        raise WiringError(f"--instance {etcd['instance']!r}: 1-128 characters, no '/'")
    try:
        return open_store(getattr(opts, "state", None), str(state_dir),
                          **{k: v for k, v in etcd.items() if v is not None})
    except (ValueError, OSError) as e:
        raise WiringError(str(e)) from None


def build_controller(server):
    """The Controller for this server; restores drains and feed values from the store.
    An unreadable saved state refuses start-up unless ``--discard-state``."""
    from filterdns.ops.controller import Controller
    from filterdns.ops.store import StateUnreadable

    o = server.opts
    store = build_store(o)
    kw = {}
    if o.max_drain_share is not None:
        kw["max_drain_share"] = o.max_drain_share
    controller = Controller(lambda: server.holder.state, server.inventory, server.reload,
                            Path(o.state_dir), ready=lambda: server.listeners_open,
                            metrics=server.metrics, store=store, **kw)
    try:
        controller.restore(discard=getattr(o, "discard_state", False))
    except StateUnreadable as e:
        raise WiringError(e.message) from None
    if controller.restore_error:
        log.error("%s", controller.restore_error)
    return controller


async def start(server) -> None:
    from filterdns.ops.api import ControlServer, MetricsServer, TokenError, load_token
    from filterdns.ops.drainer import Drainer
    from filterdns.ops.health import HealthChecker

    import asyncio

    o = server.opts
    m = server.metrics
    m.bind(lambda: server.holder.state, server.inventory, store=server.controller.store)
    store = server.controller.store
    if store.fleet:
        # the fleet's effective health verdicts (policy over every instance's) drive the answers
        store.on_health = server.inventory.set_health

        def publish(state) -> None:
            store.publish_instance({
                "generation": state.generation, "config_hash": config_hash(state),
                "control": f"{o.control[0]}:{o.control[1]}" if o.control else None,
                "listen": [f"{h}:{p}" for h, p in o.listen]})
        publish(server.holder.state)
        server.holder.subscribe(lambda old, new: publish(new))
    await store.start()
    server.add_aux("state store", store.stop)
    # drains and feed values with an expiry are dropped (and audited) at their time
    expiry = asyncio.get_running_loop().create_task(server.controller.run_expiry(), name="expiry")

    async def stop_expiry():
        expiry.cancel()
        await asyncio.gather(expiry, return_exceptions=True)

    server.add_aux("expiry", stop_expiry)
    m.config_loaded(server.holder.state.generation, server.holder.state.loaded_at)
    render = m.render if server.render_metrics is None else server.render_metrics

    if o.control is not None:
        try:
            token = load_token(o.control_token_file)
        except TokenError as e:
            raise WiringError(str(e)) from None
        control = ControlServer(server.controller, o.control[0], o.control[1], token=token,
                                render_metrics=render, allow_hosts=tuple(o.http_allow_hosts),
                                propagated=server.propagated)
        await control.start()
        server.add_aux("control API", control.stop)
        host, port = control.address
        log.info("control API on http://%s:%d (%s)", host, port,
                 "mutating calls need the bearer token" if token else
                 "read-only: no token configured, mutating calls are refused")
    if o.metrics is not None:
        msrv = MetricsServer(o.metrics[0], o.metrics[1], render=render, allow_hosts=tuple(o.http_allow_hosts),
                             ready=server.controller.ready)
        await msrv.start()
        server.add_aux("metrics endpoint", msrv.stop)
        host, port = msrv.address
        log.info("metrics on http://%s:%d/metrics (and /healthz, /readyz for probes)", host, port)
    if o.health and server.holder.state.health:
        # a fleet store takes this instance's verdicts and feeds back the fleet's (per policy)
        sink = _HealthToStore(store) if store.fleet else server.inventory
        checker = HealthChecker(list(server.holder.state.health), sink,
                                get_state=lambda: server.holder.state, metrics=m)
        server.holder.subscribe(checker.on_state_swap)
        checker.start()
        server.add_aux("health checks", checker.stop)
        drainer = Drainer(server.controller)
        drainer.start()
        store.on_leader = lambda leading: drainer._schedule() if leading else None

        async def stop_drainer():
            drainer.stop()

        server.add_aux("drain automation", stop_drainer)
        log.info("health checks: %d, with automatic drain", len(server.holder.state.health))


class _HealthToStore:
    """What the health checker writes to when a fleet store decides the effective health."""

    def __init__(self, store):
        self.store = store

    def set_health(self, region: str, service: str, healthy: bool | None) -> None:
        self.store.publish_health(region, service, healthy)


def config_hash(state) -> str:
    """sha256 (first 16 hex digits) over the config files a State was built from, so
    ``filterdns status`` shows an instance serving a different config."""
    h = hashlib.sha256()
    for name in sorted(set(getattr(state, "files", ()) or ())):
        h.update(os.path.basename(name).encode() + b"\0")
        try:
            with open(name, "rb") as f:
                h.update(f.read())
        except OSError:
            h.update(b"<unreadable>")
        h.update(b"\0")
    return h.hexdigest()[:16]
