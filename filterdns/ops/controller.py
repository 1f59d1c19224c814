"""The operator's hands, without HTTP: drain, undrain, data feeds, region view, reload.

``Controller`` validates every request against the config being served (``get_state()``),
applies it to the ``Inventory`` in one step, appends an audit line and persists what must
survive a restart. The control API (``control.py``) and the Edge PoP Drain automation
(``drainer.py``) both go through it, so the safety rule and the audit log cannot be bypassed.

Safety rule (per service, on *effective* state: ``filterdns.routing.region_state.check_drain``,
a pure function of the config ``State`` and the runtime ``Status``, checked in the commit plan
against the state the change commits on): a drain that takes a region out of DNS is refused
when, afterwards, no region of the service would be serving and up (health drains, feeds, ``up``
metadata and other drains counted; fail-open does not count), or when more than
``max_drain_share`` of the service's regions would then be out or down. The default share is
1.0, so only the first part applies. A region-level drain is checked for every service of the
region. Operators may pass ``force``; the health automation never does: a failing region it may
not drain stays in DNS, "failing, held in DNS by the safety rule" (audited as ``held``), and is
drained as soon as the rule allows. Every reply says what DNS does afterwards.

Operator drains are hard (the region is no candidate: fail-open never brings it back); health
drains are soft (``up: false``, subject to fail-open). A drain may carry an expiry (``for``
seconds); feed values may be pushed with a ``ttl`` and cleared. ``expire()`` drops what has
expired (committed and audited as ``expire``); ``run_expiry()`` calls it at each expiry time.

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
refused | held | expire | feed_clear | reload), ``cause``, ``actor``, ``reason``, ``instance`` and,
where it applies, ``force``, ``until``, ``dns`` (what DNS does afterwards) and ``detail``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from types import MappingProxyType

from filterdns.config.schema import check_values
from filterdns.ops.store import Conflict, NotDurable, Unavailable, audit_line
from filterdns.routing import region_state
from filterdns.routing.inventory import (FEED_KEYS, Drain, Inventory, Status, cleared, expired, fed,
                                         load_status)

log = logging.getLogger("filterdns.ops.controller")

MAX_REASON = 512
MAX_ACTOR = 64
#: longest drain expiry / feed ttl accepted, seconds (a year)
MAX_DURATION = 366 * 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
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


def parse_duration(value: Any, what: str = "for") -> float | None:
    """``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` (or ``"1h30m"``) -> seconds; None stays None."""
    if value is None:
        return None
    bad = BadRequest(f"{what} must be a duration such as 90, 15m, 2h or 1d, got {value!r}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        secs = float(value)
    elif isinstance(value, str) and value.strip():
        secs, num = 0.0, ""
        for ch in value.strip().lower():
            if ch.isdigit() or (ch == "." and "." not in num):
                num += ch
            elif ch in _UNITS and num and num != ".":
                secs += float(num) * _UNITS[ch]
                num = ""
            else:
                raise bad
        if num:
            if num == ".":
                raise bad
            secs += float(num)
    else:
        raise bad
    if not math.isfinite(secs) or secs <= 0 or secs > MAX_DURATION:
        raise BadRequest(f"{what} must be more than 0 and at most {MAX_DURATION // 86400} days, got {value!r}")
    return secs


def validate_feed_values(values: Any) -> dict[str, Any]:
    """Check data-feed values against the schema (``FEED_KEYS`` = ``config.schema.FEED``, the
    fields the config's ``meta`` uses too); every problem in one ``BadRequest``."""
    if not isinstance(values, Mapping) or not values:
        raise BadRequest('"values" must be a non-empty object, e.g. {"up": true, "loadavg": 0.5}')
    out, problems = check_values(FEED_KEYS, values, "feed key")
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
        self._expiry_wake: asyncio.Event | None = None
        inventory.subscribe(self._wake_expiry)

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
                {k: dict(v) for k, v in saved.feeds.items()} == {k: dict(v) for k, v in status.feeds.items()} \
                and dict(saved.feed_until) == dict(status.feed_until):
            return
        self.inventory.commit(saved.drains, saved.feeds, {"action": "remote", "revision": revision},
                              saved.feed_until)

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

    def _safety(self, status: Status, region: str, service: str | None,
                cause: str = "operator") -> region_state.DrainCheck:
        """The safety rule's verdict on draining (region, service) under ``status``."""
        probe = Drain(region, service, "", "", cause, 0.0)
        return region_state.check_drain(self.get_state(), status, probe, self.max_drain_share)

    def check_drain(self, region: str, service: str | None, cause: str = "operator") -> list[str]:
        """What the safety rule would object to in draining (region, service) now (no side effects)."""
        self._check_target(region, service)
        return list(self._safety(self.inventory.status, region, service, cause).problems)

    def dns_for(self, status: Status, services: list[str] | None = None) -> dict[str, str]:
        """One sentence per service saying what DNS does under ``status`` (replies, audit log)."""
        snap = region_state.snapshot(self.get_state(), status) if status is self.inventory.status \
            else region_state.compute(self.get_state(), status)
        names = services if services is not None else sorted({s for (_, s) in snap.services})
        return {svc: region_state.summarize(snap.of_service(svc))["dns"] for svc in names}

    def _services_of(self, region: str, service: str | None) -> list[str]:
        if service is not None:
            return [service]
        r = self._regions().get(region)
        return sorted(r.services) if r is not None else []

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
                drains, feeds, event, audit, done, *rest = out
                # feed expiries: as planned, else those of values still present
                fu = rest[0] if rest else {k: t for k, t in status.feed_until.items()
                                           if k[2] in feeds.get((k[0], k[1]), {})}
                doc = Status(drains=drains, feeds=feeds, feed_until=fu).to_json()
                try:
                    await self.store.commit(revision, doc, audit)
                except Conflict:
                    pass
                except (NotDurable, Unavailable) as e:
                    log.error("not done (%s): %s", event.get("action"), e.message)
                    raise StoreFailed(f"not done, nothing was changed: {e.message}",
                                      store=self.store.describe()) from None
                else:
                    self.inventory.commit(drains, feeds, event, fu)
                    return done()
                try:  # another instance changed the state: re-read it, then plan again on it
                    await self.store.refresh()
                except Unavailable as e:
                    raise StoreFailed(f"not done, nothing was changed: {e.message}",
                                      store=self.store.describe()) from None
            raise StoreFailed(f"not done: the state changed {MAX_CONFLICTS} times while committing; try again")

    # -- operations ---------------------------------------------------------------------------
    async def drain(self, region: str, service: str | None = None, reason: str = "",
                    actor: str = "operator", cause: str = "operator", force: bool = False,
                    duration: Any = None) -> Result:
        """Drain a region or one service of it, subject to the safety rule unless ``force``.
        ``duration`` (seconds, or "2h"-style text) makes the drain expire by itself.
        Acknowledged (returns) only once the drain is durable in the store."""
        reason = _clean_text(reason, "reason", MAX_REASON)
        actor = _clean_text(actor, "actor", MAX_ACTOR) or "operator"
        if not isinstance(force, bool):
            raise BadRequest(f"force must be true or false, got {force!r}")
        if service is not None and not isinstance(service, str):
            raise BadRequest(f"service must be a string, got {service!r}")
        secs = parse_duration(duration, "for")
        self._check_target(region, service)

        def plan(status: Status):
            existing = status.drains.get((region, service))
            if existing is not None and existing.cause == "operator" and cause != "operator":
                return Result(False, f"{self._name(region, service)} is already drained by {existing.actor}",
                              {"drain": existing.to_json()})
            verdict = self._safety(status, region, service, cause)
            problems = list(verdict.problems)
            if problems and not force:
                if cause == "health":
                    held = region_state.MEANING["held"]
                    raise Refused(f"{self._name(region, service)} is {held}: " + "; ".join(problems),
                                  problems=problems, services=dict(verdict.after), state="held")
                raise Refused("refused: " + "; ".join(problems) + " (use force to drain anyway)",
                              problems=problems, services=dict(verdict.after))
            now = self.clock()
            until = None if secs is None else now + secs
            d = Drain(region, service, reason, actor, cause, now, until)
            drains = dict(status.drains)
            drains[(region, service)] = d
            dns_after = {svc: v["dns"] for svc, v in verdict.after.items()}
            audit = [self._entry(region=region, service=service, action="drain", cause=cause, actor=actor,
                                 reason=reason, force=force, until=until, dns=dns_after,
                                 detail=problems or None)]

            def done() -> Result:
                self._count("drain", cause)
                msg = f"drained {self._name(region, service)}"
                if until is not None:
                    msg += f" until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}"
                if dns_after:
                    msg += "; DNS now: " + "; ".join(f"{svc}: {t}" for svc, t in dns_after.items())
                if problems:
                    msg += " [forced past: " + "; ".join(problems) + "]"
                log.warning("%s by %s (%s): %s", msg, actor, cause, reason or "no reason")
                return Result(True, msg, {"drain": d.to_json(), "services": dict(verdict.after)})
            return (MappingProxyType(drains), status.feeds, {"action": "drain", **d.to_json()}, audit, done)

        try:
            return await self._mutate(plan)
        except Refused as e:
            services = self._services_of(region, service)
            if e.detail.get("state") == "held":
                await self._audit(region=region, service=service, action="held", cause=cause, actor=actor,
                                  reason=reason, state=region_state.MEANING["held"],
                                  detail=e.detail.get("problems"),
                                  dns=self.dns_for(self.inventory.status, services))
            else:
                await self._audit(region=region, service=service, action="refused", cause=cause, actor=actor,
                                  reason=reason, detail=e.detail.get("problems"),
                                  dns=self.dns_for(self.inventory.status, services))
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
            dns = self.dns_for(replace(status, drains=MappingProxyType(drains)),
                               self._services_of(region, service))
            audit = [self._entry(region=region, service=service, action="undrain", cause=cause, actor=actor,
                                 reason=reason, dns=dns, detail={"was": existing.to_json()})]

            def done() -> Result:
                self._count("undrain", cause)
                msg = f"undrained {self._name(region, service)} (was drained by {existing.actor})"
                if dns:
                    msg += "; DNS now: " + "; ".join(f"{svc}: {t}" for svc, t in dns.items())
                log.warning("%s by %s (%s)", msg, actor, cause)
                return Result(True, msg, {"undrained": existing.to_json()})
            event = {"action": "undrain", "region": region, "service": service, "actor": actor, "cause": cause}
            return (MappingProxyType(drains), status.feeds, event, audit, done)

        return await self._mutate(plan)

    async def feed(self, region: str, service: str | None, values: Any, ttl: Any = None) -> Result:
        """Merge data-feed values (``up``, ``connections``, ``requests``, ``loadavg``);
        acknowledged only once durable in the store. ``ttl`` (seconds, or "5m"-style text): the
        values pushed are dropped after it (audited), so a dead feeder cannot pin them forever."""
        if service is not None and not isinstance(service, str):
            raise BadRequest(f"service must be a string, got {service!r}")
        self._check_target(region, service)
        clean = validate_feed_values(values)
        secs = parse_duration(ttl, "ttl")

        def plan(status: Status):
            until = None if secs is None else self.clock() + secs
            feeds, fu = fed(status, region, service, clean, until)
            merged = feeds[(region, service)]
            event = {"action": "feed", "region": region, "service": service, "values": dict(clean)}
            data: dict[str, Any] = {"values": dict(merged)}
            msg = f"fed {self._name(region, service)}"
            if until is not None:
                event["until"] = data["until"] = until
                msg += f" (until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))})"
            if "up" in clean:
                data["dns"] = self.dns_for(replace(status, feeds=feeds, feed_until=fu),
                                           self._services_of(region, service))
            return (status.drains, feeds, event, (), lambda: Result(True, msg, data), fu)

        return await self._mutate(plan)

    async def clear_feed(self, region: str, service: str | None = None, keys: Any = None,
                         actor: str = "operator", reason: str = "") -> Result:
        """Drop feed values of (region, service): ``keys`` (a list), or all of them. Audited;
        acknowledged only once durable in the store."""
        reason = _clean_text(reason, "reason", MAX_REASON)
        actor = _clean_text(actor, "actor", MAX_ACTOR) or "operator"
        if service is not None and not isinstance(service, str):
            raise BadRequest(f"service must be a string, got {service!r}")
        if keys is not None:
            if isinstance(keys, str):
                keys = [keys]
            if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
                raise BadRequest(f"keys must be a list of feed keys, got {keys!r}")
            bad = [k for k in keys if k not in FEED_KEYS]
            if bad:
                raise BadRequest(f"unknown feed key(s) {', '.join(map(repr, bad))} (known: {', '.join(FEED_KEYS)})")
        if self.inventory.status.feeds.get((region, service)) is None:
            self._check_target(region, service)  # an orphaned feed can still be cleared

        def plan(status: Status):
            feeds, fu, gone = cleared(status, region, service, None if keys is None else tuple(keys))
            if not gone:
                return Result(False, f"{self._name(region, service)} has no such feed value", {"cleared": {}})
            dns = self.dns_for(replace(status, feeds=feeds, feed_until=fu),
                               self._services_of(region, service)) if "up" in gone else None
            audit = [self._entry(region=region, service=service, action="feed_clear", cause="operator",
                                 actor=actor, reason=reason, dns=dns, detail={"cleared": gone})]
            msg = f"cleared {', '.join(sorted(gone))} of {self._name(region, service)}"
            event = {"action": "feed_clear", "region": region, "service": service, "values": dict(gone)}

            def done() -> Result:
                log.warning("%s by %s", msg, actor)
                return Result(True, msg, {"cleared": gone, **({"dns": dns} if dns else {})})
            return (status.drains, feeds, event, audit, done, fu)

        return await self._mutate(plan)

    # -- expiry ---------------------------------------------------------------------------------
    async def expire(self) -> dict:
        """Drop drains and feed values whose time has come, in one commit; audit each."""
        def plan(status: Status):
            drains, feeds, fu, gone_d, gone_f = expired(status, self.clock())
            if not gone_d and not gone_f:
                return Result(False, "nothing expired", {})
            after = replace(status, drains=drains, feeds=feeds, feed_until=fu)
            audit = []
            for d in gone_d:
                audit.append(self._entry(region=d.region, service=d.service, action="expire", cause=d.cause,
                                         actor="expiry", reason=d.reason, until=d.until,
                                         dns=self.dns_for(after, self._services_of(d.region, d.service)),
                                         detail={"was": d.to_json()}))
            for region, service, key, value in gone_f:
                audit.append(self._entry(region=region, service=service, action="expire", cause="feed",
                                         actor="expiry", reason=f"feed value {key}={value!r} expired",
                                         detail={"key": key, "value": value}))
            event = {"action": "expire", "drains": [d.to_json() for d in gone_d],
                     "feeds": [list(x[:3]) for x in gone_f]}

            def done() -> Result:
                for d in gone_d:
                    self._count("undrain", d.cause)
                    log.warning("drain of %s expired (was drained by %s: %s)", self._name(d.region, d.service),
                                d.actor, d.reason or "no reason")
                for region, service, key, value in gone_f:
                    log.info("feed value %s=%r of %s expired", key, value, self._name(region, service))
                return Result(True, "expired", {"drains": gone_d, "feeds": gone_f})
            return (drains, feeds, event, audit, done, fu)

        r = await self._mutate(plan)
        return dict(r.data) if r.changed else {}

    def _wake_expiry(self, status: Status, event: dict) -> None:
        if self._expiry_wake is not None:
            self._expiry_wake.set()

    async def run_expiry(self) -> None:
        """Call ``expire`` at each expiry time (woken early by any inventory change); runs until
        cancelled. A store failure is retried a second later."""
        self._expiry_wake = asyncio.Event()
        while True:
            self._expiry_wake.clear()
            retry = None
            try:
                await self.expire()
            except OpError as e:
                log.warning("expiry not committed: %s; retrying", e.message)
                retry = 1.0
            except Exception:  # keep expiring; the next change or deadline retries
                log.exception("expiry failed")
                retry = 1.0
            nxt = self.inventory.status.next_expiry()
            timeout = None if nxt is None else max(0.0, nxt - self.clock()) + 0.001
            if retry is not None:
                timeout = retry if timeout is None else min(timeout, retry)
            try:
                await asyncio.wait_for(self._expiry_wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def reload(self, actor: str = "operator", cause: str | None = None) -> tuple[bool, list[str]]:
        """Build and swap a new config (one at a time); count, audit and report orphans.
        ``cause`` is what the reload logs say started it (default: ``api by <actor>``); the
        reload callback logs the outcome and every problem, once."""
        if self._reload is None:
            return False, ["reload is not available in this process"]
        async with self._reload_lock:
            try:
                ok, reasons = await self._reload(cause or f"api by {actor}")
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
            return ok, list(reasons)

    # -- views ----------------------------------------------------------------------------------
    def regions(self) -> dict:
        """Per region and service: addresses, metadata, health, drain, feeds, and the effective
        state (``filterdns.routing.region_state``: serving, reason, why), as DNS acts on it."""
        state = self.get_state()
        status = self.inventory.status
        snap = region_state.snapshot(state, status)
        out = {}
        for rname, region in sorted(self._regions().items()):
            rdrain = status.drains.get((rname, None))
            services = {}
            for sname, svc in sorted(region.services.items()):
                st = snap.get(rname, sname)
                h = status.health.get((rname, sname))
                sdrain = status.drains.get((rname, sname))
                row = {
                    "v4": list(svc.v4), "v6": list(svc.v6), "meta": dict(svc.meta),
                    "health": "unknown" if h is None else ("up" if h else "down"),
                    "drain": sdrain.to_json() if sdrain else None,
                    "drained": status.drained(rname, sname) is not None,
                    "feeds": dict(status.feeds.get((rname, sname), {})),
                    "feed_until": self._feed_until(status, rname, sname),
                }
                if st is not None:
                    row.update(st.to_json())
                differ = {rec: per[rname].to_json() for rec, per in snap.differing.items()
                          if rname in per and per[rname] != st and per[rname].service == sname}
                if differ:
                    row["records"] = differ
                services[sname] = row
            out[rname] = {
                "code": region.code, "country": region.country, "subdivision": region.subdivision,
                "continent": region.continent, "lat": region.lat, "lon": region.lon,
                "meta": dict(region.meta), "drain": rdrain.to_json() if rdrain else None,
                "feeds": dict(status.feeds.get((rname, None), {})),
                "feed_until": self._feed_until(status, rname, None), "services": services,
            }
        return {
            "config_generation": getattr(state, "generation", None),
            "status_generation": status.generation,
            "max_drain_share": self.max_drain_share,
            "regions": out,
            "services": self.dns_for(status),
            "orphans": self.orphans(),
            "restore_error": self.restore_error,
            "store": self.store.describe(),
            "fleet": self.store.fleet_view(),
        }

    @staticmethod
    def _feed_until(status: Status, region: str, service: str | None) -> dict:
        return {k: t for (r, s, k), t in status.feed_until.items() if (r, s) == (region, service)}

    @staticmethod
    def _name(region: str, service: str | None) -> str:
        return f"region {region}" + (f" service {service}" if service else "")


__all__ = ["Controller", "OpError", "BadRequest", "NotFound", "Refused", "Result",
           "validate_feed_values", "parse_duration", "Drain", "StoreFailed"]
