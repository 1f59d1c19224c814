"""Edge PoP Drain: drain a region's service when its health checks fail, undrain when healthy.

The ``Drainer`` listens to the ``Inventory``. After any change it reconciles (on the next turn
of the event loop, never inside the inventory's notification, so snapshots stay in order):

1. every drain with cause ``health`` whose (region, service) is no longer down (healthy again,
   or unknown because its check was removed) is undrained, actor ``health``;
2. every (region, service) whose health is down and that is not drained at that key is drained
   with cause and actor ``health`` through ``Controller.drain``, so the safety rule applies
   (never ``force``), on effective state: the last region of a service that is up, or more
   than ``max_drain_share`` of them, is never drained automatically. A health drain is soft
   (``up: false``, subject to fail-open). A region the rule refuses stays in DNS, shown as
   "failing, held in DNS by the safety rule" (``region_state`` state ``held``) in status,
   ``/regions`` and metrics; the refusal is audited (action ``held``) and counted once per
   outage, and retried at every later change (a region recovering, an undrain, a feed value, an
   expiry), so it is drained as soon as the rule allows.

Operator drains win: a (region, service) drained by an operator is never undrained by the
automation, and an operator undrain of a health drain stands until the health verdict changes
again. Every action goes to the audit log and to ``filterdns_drains_total{cause="health"}``,
``filterdns_undrains_total{cause="health"}`` and ``filterdns_drain_refused_total{cause="health"}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from filterdns.ops.controller import Controller, OpError, StoreFailed

log = logging.getLogger("filterdns.ops.drainer")

ACTOR = "health"
CAUSE = "health"


class Drainer:
    """Health-driven drains. ``start()`` inside the running loop; ``stop()`` to pause it."""

    def __init__(self, controller: Controller):
        self.controller = controller
        self.inventory = controller.inventory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._task: asyncio.Task | None = None
        self._refused: set[tuple[str, str]] = set()  # refusals already reported in this outage
        self._handled: dict[tuple[str, str], bool] = {}  # last health verdict acted upon
        self.inventory.subscribe(self._on_change)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        self._loop = None

    def _on_change(self, status: Any, event: dict) -> None:
        if event.get("action") in ("health", "drain", "undrain", "restore", "remote", "leader", "feed",
                                   "feed_clear", "expire"):
            self._schedule()

    def _schedule(self) -> None:
        if self._loop is None or self._scheduled:
            return
        self._scheduled = True
        self._loop.call_soon(self._run)

    def _run(self) -> None:
        if self._loop is None:
            self._scheduled = False
            return
        if self._task is not None and not self._task.done():
            self._loop.call_later(0.01, self._run)  # one reconcile at a time; then once more
            return
        self._scheduled = False
        self._task = self._loop.create_task(self._reconcile_safely())

    async def _reconcile_safely(self) -> None:
        try:
            await self.reconcile()
        except Exception:  # keep the automation alive; the next change retries
            log.exception("drain automation failed")

    async def reconcile(self) -> list[str]:
        """Bring health drains in line with health verdicts; returns what was done (for tests).
        With a fleet store only the instance holding the leader lease acts, once for the fleet."""
        c = self.controller
        if not c.store.is_leader():
            return []
        done: list[str] = []
        status = self.inventory.status
        # 1. undrain what recovered
        for (region, service), d in list(status.drains.items()):
            if d.cause != CAUSE or service is None:
                continue
            if status.health.get((region, service)) is not False:
                try:
                    r = await c.undrain(region, service, actor=ACTOR, cause=CAUSE,
                                        reason="health check passing", only_cause=CAUSE)
                except StoreFailed as e:
                    log.warning("not undraining %s/%s: %s", region, service, e.message)
                    continue
                if r.changed:
                    done.append(f"undrain {region}/{service}")
        status = self.inventory.status
        down = {key for key, healthy in status.health.items() if healthy is False}
        self._refused &= down
        # forget verdicts we acted on that are no longer current
        for key in list(self._handled):
            if status.health.get(key) is not self._handled[key]:
                del self._handled[key]
        # 2. drain what is down (sorted: deterministic choice of which region stays)
        for region, service in sorted(down):
            status = self.inventory.status
            if (region, service) in status.drains:
                self._handled[(region, service)] = False
                continue
            if self._handled.get((region, service)) is False:
                continue  # drained once in this outage, then undrained by an operator: leave it
            if (region, service) in self._refused and c.check_drain(region, service, cause=CAUSE):
                continue  # still refused; already audited and counted in this outage
            try:
                r = await c.drain(region, service, reason="health check failing", actor=ACTOR, cause=CAUSE)
            except StoreFailed as e:
                log.warning("not draining %s/%s now: %s", region, service, e.message)
                continue  # retried at the next change
            except OpError as e:
                if (region, service) not in self._refused:
                    self._refused.add((region, service))
                    log.warning("not draining %s/%s: %s", region, service, e.message)
                    done.append(f"held {region}/{service}")
                continue
            self._refused.discard((region, service))
            self._handled[(region, service)] = False
            if r.changed:
                done.append(f"drain {region}/{service}")
        return done
