"""The operator's hands, without HTTP: drain, undrain, data feeds, region view, reload.

``Controller`` validates every request against the config being served (``get_state()``),
applies it to the ``Inventory`` in one step, appends an audit line and persists what must
survive a restart. The control API (``control.py``) and the Edge PoP Drain automation
(``drainer.py``) both go through it, so the safety rule and the audit log cannot be bypassed.

Safety rule (per service): a drain is refused when, afterwards, no region serving the service
would be left undrained, or when more than ``max_drain_share`` of the regions serving it would be
drained. The default share is 1.0, so only the "last region" part applies. A region-level drain
is checked for every service of the region. Operators may pass ``force``; the health automation
never does.

Durable state: every drain, undrain and feed is committed to the state store
(``ops/store/``: ``state.json`` fsync'd for a single server, an etcd transaction for a fleet)
*before* it is applied to the ``Inventory`` and acknowledged; when the store cannot make it
durable (disk full, read-only, etcd unreachable) the call fails with ``StoreFailed`` (HTTP 503)
and nothing changes. Commits are compare-and-swap on the store's revision: the safety rule is
checked against the state the change commits on. ``restore()`` at start-up loads the saved
state; an unreadable one refuses start-up (``StateUnreadable``) unless ``--discard-state``.
Drains for regions or services that are no longer configured are kept,
logged, listed under ``orphans`` in ``regions()`` and counted by ``filterdns_drains_orphaned``;
an operator removes them with an undrain.

Audit log (in the store: ``state_dir/audit.log`` or etcd ``<prefix>/audit/``), one JSON object
per entry with ``time`` (unix), ``iso``, ``region``, ``service``, ``action`` (drain | undrain |
refused | reload), ``cause``, ``actor``, ``reason``, ``instance`` and, where it applies,
``force`` and ``detail``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from types import MappingProxyType

from filterdns.ops.store import Conflict, NotDurable, Unavailable, audit_line
from filterdns.routing.inventory import FEED_KEYS, Drain, Inventory, Status, load_status

log = logging.getLogger("filterdns.ops.controller")

MAX_REASON = 512
MAX_ACTOR = 64
STATE_FILE = "state.json"
AUDIT_FILE = "audit.log"
MAX_CONFLICTS = 50


class OpError(Exception):
    """A request that changed nothing. ``status`` is the HTTP status the API answers with."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **detail: Any):
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_json(self) -> dict:
        return {"error": self.message, "code": self.code, **self.detail}


class BadRequest(OpError):
    status, code = 400, "bad_request"


class NotFound(OpError):
    status, code = 404, "not_found"


class Refused(OpError):
    """The safety rule refused a drain (409)."""

    status, code = 409, "refused"


class StoreFailed(OpError):
    """The change could not be made durable or the state store is unreachable (503); nothing
    was changed."""

    status, code = 503, "state_store"


@dataclass(frozen=True, slots=True)
class Result:
    """What a drain/undrain/feed did: ``changed`` False means it was already so."""

    changed: bool
    message: str
    data: Mapping[str, Any]

    def to_json(self) -> dict:
        return {"changed": self.changed, "message": self.message, **self.data}


def _clean_text(value: Any, what: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise BadRequest(f"{what} is longer than {limit} characters")
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise BadRequest(f"{what} must not contain control characters")
    return value


def validate_feed_values(values: Any) -> dict[str, Any]:
    """Check data-feed values against ``FEED_KEYS``; every problem in one ``BadRequest``."""
    if not isinstance(values, Mapping) or not values:
        raise BadRequest('"values" must be a non-empty object, e.g. {"up": true, "loadavg": 0.5}')
    out: dict[str, Any] = {}
    problems = []
    for key, v in values.items():
        kind = FEED_KEYS.get(key)
        if kind is None:
            problems.append(f"unknown feed key {key!r} (known: {', '.join(FEED_KEYS)})")
        elif kind is bool:
            if isinstance(v, bool):
                out[key] = v
            else:
                problems.append(f"{key} must be true or false, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            problems.append(f"{key} must be a finite number >= 0, got {v!r}")
        else:
            out[key] = float(v)
    if problems:
        raise BadRequest("; ".join(problems), problems=problems)
    return out


class Controller:
    """Logic behind the control API and the drain automation.

    ``get_state()`` returns the config ``State`` being served (``.regions``, ``.generation``);
    ``reload()`` builds and swaps a new one, returning ``(ok, reasons)``; ``ready()`` says whether
    the server is ready (config loaded, listeners open).
    """

    def __init__(
        self,
        get_state: Callable[[], Any],
        inventory: Inventory,
        reload: Callable[[], Awaitable[tuple[bool, list[str]]]] | None,
        state_dir: Path | str,
        ready: Callable[[], bool] = lambda: True,
        metrics: Any = None,
        max_drain_share: float = 1.0,
        clock: Callable[[], float] = time.time,
        store: Any = None,
    ):
        if not 0 < max_drain_share <= 1:
            raise ValueError(f"max_drain_share must be in (0, 1], got {max_drain_share}")
        self.get_state = get_state
        self.inventory = inventory
        self._reload = reload
        self.state_dir = Path(state_dir)
        self.ready = ready
        self.metrics = metrics
        self.max_drain_share = max_drain_share
        self.clock = clock
        self.restore_error: str | None = None
        self._reload_lock = asyncio.Lock()
        self._lock = asyncio.Lock()  # one change at a time per instance (the store does the rest)
        if store is None:
            from filterdns.ops.store.file import FileStore
            self.state_dir.mkdir(parents=True, exist_ok=True)
            store = FileStore(self.state_dir, clock=clock)
        self.store = store
        store.on_remote = self._on_remote

    @property
    def state_path(self) -> Path:
        return getattr(self.store, "state_path", self.state_dir / STATE_FILE)

    @property
    def audit_path(self) -> Path:
        return getattr(self.store, "audit_path", self.state_dir / AUDIT_FILE)

    # -- start-up ---------------------------------------------------------------------------
    def restore(self, discard: bool = False) -> bool:
        """Load drains and feeds from the store; returns whether anything was loaded.

        Raises ``StateUnreadable`` when the saved state cannot be used at all (start-up then
        refuses to serve) unless ``discard``; a partly bad state keeps every valid entry and
        ``restore_error`` names each bad one.
        """
        loaded = self.store.load(discard=discard)
        self.restore_error = loaded.warning
        if loaded.doc is None:
            return False
        self.inventory.restore(loaded.doc)
        log.info("restored %d drain(s) and %d feed(s) from %s",
                 len(loaded.doc["drains"]), len(loaded.doc["feeds"]), loaded.source)
        self.report_orphans()
        return True

    def _on_remote(self, doc: dict, revision: int) -> None:
        """Another instance changed the state (etcd watch): adopt it in one swap."""
        saved = load_status(doc)
        status = self.inventory.status
        if dict(saved.drains) == dict(status.drains) and \
                {k: dict(v) for k, v in saved.feeds.items()} == {k: dict(v) for k, v in status.feeds.items()}:
            return
        self.inventory.commit(saved.drains, saved.feeds, {"action": "remote", "revision": revision})

    def orphans(self) -> list[dict]:
        """Drains and feeds whose region or service is not in the current config."""
        regions = self._regions()
        out = []
        status = self.inventory.status
        for (r, s), d in sorted(status.drains.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if r not in regions or (s is not None and s not in regions[r].services):
                out.append({"kind": "drain", **d.to_json()})
        for (r, s) in sorted(status.feeds, key=lambda k: (k[0], k[1] or "")):
            if r not in regions or (s is not None and s not in regions[r].services):
                out.append({"kind": "feed", "region": r, "service": s})
        return out

    def report_orphans(self) -> list[dict]:
        """Log every orphaned drain (after restore and after each reload)."""
        found = self.orphans()
        for o in found:
            if o["kind"] == "drain":
                log.warning("drain of %s%s is kept but the %s is no longer in the config "
                            "(drained by %s: %s); undrain it to remove",
                            o["region"], f"/{o['service']}" if o["service"] else "",
                            "service" if o["service"] and o["region"] in self._regions() else "region",
                            o["actor"], o["reason"] or "no reason")
        return found

    # -- helpers ----------------------------------------------------------------------------
    def _regions(self) -> Mapping[str, Any]:
        state = self.get_state()
        return getattr(state, "regions", None) or {}

    def _check_target(self, region: str, service: str | None) -> None:
        regions = self._regions()
        if not isinstance(region, str) or region not in regions:
            raise NotFound(f"unknown region {region!r}", known=sorted(regions))
        if service is not None and service not in regions[region].services:
            raise NotFound(f"region {region!r} has no service {service!r}",
                           known=sorted(regions[region].services))

    def _safety(self, status: Status, region: str, service: str | None) -> tuple[list[str], dict]:
        """Problems the safety rule finds with draining (region, service), and a summary."""
        regions = self._regions()
        services = [service] if service is not None else sorted(regions[region].services)
        problems, summary = [], {}
        for svc in services:
            serving = [r for r, reg in regions.items() if svc in reg.services]
            drained = {r for r in serving if status.drained(r, svc) is not None}
            after = drained | {region}
            left = len(serving) - len(after)
            summary[svc] = {"regions": len(serving), "drained_after": len(after), "serving_after": left}
            if region in drained:
                continue  # already drained for this service: no change
            if left <= 0:
                problems.append(f"{region} is the last undrained region serving {svc}")
            elif len(after) > self.max_drain_share * len(serving):
                problems.append(
                    f"draining {region} would drain {len(after)} of {len(serving)} regions serving {svc}, "
                    f"more than the allowed share {self.max_drain_share:g}")
        return problems, summary

    def check_drain(self, region: str, service: str | None) -> list[str]:
        """What the safety rule would object to in draining (region, service) now (no side effects)."""
        self._check_target(region, service)
        return self._safety(self.inventory.status, region, service)[0]

    def _entry(self, **entry: Any) -> dict:
        return audit_line(entry, self.store.instance, self.clock)

    async def _audit(self, **entry: Any) -> None:
        await self.store.audit(self._entry(**entry))

    def _count(self, action: str, cause: str) -> None:
        if self.metrics is not None:
            self.metrics.drain_action(action, cause)

    # -- commits ------------------------------------------------------------------------------
    async def _mutate(self, plan: Callable[[Status], Any]) -> "Result":
        """Apply one change: ``plan(status)`` checks it against ``status`` and returns either a
        ``Result`` (nothing to change) or ``(drains, feeds, event, audit, done)``. The change is
        committed to the store on the revision ``status`` came from, and only once the store
        says it is durable is it swapped into the inventory (so DNS follows) and acknowledged
        (``done()``). A conflict (another instance changed the state meanwhile) re-reads and
        re-runs ``plan`` (so the safety rule is checked against the state it commits on);
        a store failure raises ``StoreFailed`` and changes nothing."""
        async with self._lock:
            for _ in range(MAX_CONFLICTS):
                status, revision = self.inventory.status, self.store.revision
                out = plan(status)
                if isinstance(out, Result):
                    return out
                drains, feeds, event, audit, done = out
                doc = Status(drains=drains, feeds=feeds).to_json()
                try:
                    await self.store.commit(revision, doc, audit)
                except Conflict:
                    await self.store.refresh()
                    continue
                except (NotDurable, Unavailable) as e:
                    log.error("not done (%s): %s", event.get("action"), e.message)
                    raise StoreFailed(f"not done, nothing was changed: {e.message}",
                                      store=self.store.describe()) from None
                self.inventory.commit(drains, feeds, event)
                return done()
            raise StoreFailed(f"not done: the state changed {MAX_CONFLICTS} times while committing; try again")

    # -- operations ---------------------------------------------------------------------------
    async def drain(self, region: str, service: str | None = None, reason: str = "",
                    actor: str = "operator", cause: str = "operator", force: bool = False) -> Result:
        """Drain a region or one service of it, subject to the safety rule unless ``force``.
        Acknowledged (returns) only once the drain is durable in the store."""
        reason = _clean_text(reason, "reason", MAX_REASON)
        actor = _clean_text(actor, "actor", MAX_ACTOR) or "operator"
        if not isinstance(force, bool):
            raise BadRequest(f"force must be true or false, got {force!r}")
        if service is not None and not isinstance(service, str):
            raise BadRequest(f"service must be a string, got {service!r}")
        self._check_target(region, service)

        def plan(status: Status):
            existing = status.drains.get((region, service))
            if existing is not None and existing.cause == "operator" and cause != "operator":
                return Result(False, f"{self._name(region, service)} is already drained by {existing.actor}",
                              {"drain": existing.to_json()})
            problems, summary = self._safety(status, region, service)
            if problems and not force:
                raise Refused("refused: " + "; ".join(problems) + ("" if cause != "operator" else
                              " (use force to drain anyway)"), problems=problems, services=summary)
            d = Drain(region, service, reason, actor, cause, self.clock())
            drains = dict(status.drains)
            drains[(region, service)] = d
            audit = [self._entry(region=region, service=service, action="drain", cause=cause, actor=actor,
                                 reason=reason, force=force, detail=problems or None)]

            def done() -> Result:
                self._count("drain", cause)
                left = ", ".join(f"{svc}: {v['serving_after']} of {v['regions']} regions still serving"
                                 for svc, v in summary.items())
                msg = f"drained {self._name(region, service)}" + (f" ({left})" if left else "")
                if problems:
                    msg += " [forced past: " + "; ".join(problems) + "]"
                log.warning("%s by %s (%s): %s", msg, actor, cause, reason or "no reason")
                return Result(True, msg, {"drain": d.to_json(), "services": summary})
            return (MappingProxyType(drains), status.feeds, {"action": "drain", **d.to_json()}, audit, done)

        try:
            return await self._mutate(plan)
        except Refused as e:
            await self._audit(region=region, service=service, action="refused", cause=cause, actor=actor,
                              reason=reason, detail=e.detail.get("problems"))
            self._count("refused", cause)
            raise

    async def undrain(self, region: str, service: str | None = None, actor: str = "operator",
                      cause: str = "operator", reason: str = "", only_cause: str | None = None) -> Result:
        """Remove the drain of (region, service). Orphaned drains can be removed too.

        ``only_cause`` (used by the automation) leaves drains of any other cause alone.
        Acknowledged only once the undrain is durable in the store.
        """
        reason = _clean_text(reason, "reason", MAX_REASON)
        actor = _clean_text(actor, "actor", MAX_ACTOR) or "operator"
        if service is not None and not isinstance(service, str):
            raise BadRequest(f"service must be a string, got {service!r}")
        if not isinstance(region, str):
            raise NotFound(f"unknown region {region!r}", known=sorted(self._regions()))

        def plan(status: Status):
            existing = status.drains.get((region, service))
            if existing is None:
                self._check_target(region, service)
                return Result(False, f"{self._name(region, service)} is not drained", {"drain": None})
            if only_cause is not None and existing.cause != only_cause:
                return Result(False, f"{self._name(region, service)} is drained by {existing.actor}; left alone",
                              {"drain": existing.to_json()})
            drains = dict(status.drains)
            del drains[(region, service)]
            audit = [self._entry(region=region, service=service, action="undrain", cause=cause, actor=actor,
                                 reason=reason, detail={"was": existing.to_json()})]

            def done() -> Result:
                self._count("undrain", cause)
                msg = f"undrained {self._name(region, service)} (was drained by {existing.actor})"
                log.warning("%s by %s (%s)", msg, actor, cause)
                return Result(True, msg, {"undrained": existing.to_json()})
            event = {"action": "undrain", "region": region, "service": service, "actor": actor, "cause": cause}
            return (MappingProxyType(drains), status.feeds, event, audit, done)

        return await self._mutate(plan)

    async def feed(self, region: str, service: str | None, values: Any) -> Result:
        """Merge data-feed values (``up``, ``connections``, ``requests``, ``loadavg``);
        acknowledged only once durable in the store."""
        if service is not None and not isinstance(service, str):
            raise BadRequest(f"service must be a string, got {service!r}")
        self._check_target(region, service)
        clean = validate_feed_values(values)

        def plan(status: Status):
            feeds = dict(status.feeds)
            merged = MappingProxyType({**feeds.get((region, service), {}), **clean})
            feeds[(region, service)] = merged
            event = {"action": "feed", "region": region, "service": service, "values": dict(clean)}
            return (status.drains, MappingProxyType(feeds), event, (),
                    lambda: Result(True, f"fed {self._name(region, service)}", {"values": dict(merged)}))

        return await self._mutate(plan)

    async def reload(self, actor: str = "operator") -> tuple[bool, list[str]]:
        """Build and swap a new config (one at a time); count, audit and report orphans."""
        if self._reload is None:
            return False, ["reload is not available in this process"]
        async with self._reload_lock:
            try:
                ok, reasons = await self._reload()
            except Exception as e:  # the reload callback should not raise; report if it does
                log.exception("reload failed")
                ok, reasons = False, [f"reload crashed: {type(e).__name__}: {e}"]
            generation = getattr(self.get_state(), "generation", 0)
            if self.metrics is not None:
                self.metrics.reload_result(ok, generation, self.clock())
            await self._audit(action="reload", actor=actor, cause="operator",
                        detail={"ok": ok, "generation": generation, "reasons": list(reasons)})
            if ok:
                self.report_orphans()
            else:
                for r in reasons:
                    log.error("reload rejected: %s", r)
            return ok, list(reasons)

    # -- views ----------------------------------------------------------------------------------
    def regions(self) -> dict:
        """Per region and service: addresses, metadata, health, drain state, feeds, effective up."""
        state = self.get_state()
        status = self.inventory.status
        out = {}
        for rname, region in sorted(self._regions().items()):
            rdrain = status.drains.get((rname, None))
            services = {}
            for sname, svc in sorted(region.services.items()):
                answer, region_level = status.overrides(rname, sname)
                h = status.health.get((rname, sname))
                sdrain = status.drains.get((rname, sname))
                up = answer.get("up", region_level.get("up", svc.meta.get("up", region.meta.get("up", True))))
                services[sname] = {
                    "v4": list(svc.v4), "v6": list(svc.v6), "meta": dict(svc.meta),
                    "health": "unknown" if h is None else ("up" if h else "down"),
                    "drain": sdrain.to_json() if sdrain else None,
                    "drained": status.drained(rname, sname) is not None,
                    "feeds": dict(status.feeds.get((rname, sname), {})),
                    "up": bool(up),
                }
            out[rname] = {
                "code": region.code, "country": region.country, "subdivision": region.subdivision,
                "continent": region.continent, "lat": region.lat, "lon": region.lon,
                "meta": dict(region.meta), "drain": rdrain.to_json() if rdrain else None,
                "feeds": dict(status.feeds.get((rname, None), {})), "services": services,
            }
        return {
            "config_generation": getattr(state, "generation", None),
            "status_generation": status.generation,
            "max_drain_share": self.max_drain_share,
            "regions": out,
            "orphans": self.orphans(),
            "restore_error": self.restore_error,
            "store": self.store.describe(),
            "fleet": self.store.fleet_view(),
        }

    @staticmethod
    def _name(region: str, service: str | None) -> str:
        return f"region {region}" + (f" service {service}" if service else "")


__all__ = ["Controller", "OpError", "BadRequest", "NotFound", "Refused", "Result",
           "validate_feed_values", "Drain", "StoreFailed"]
