"""Active health checks per region and service, with anti-flap thresholds.

Each check probes one target every ``interval`` seconds, giving up after ``timeout``:

* ``tcp``: a TCP connect succeeds;
* ``http`` / ``https``: ``GET path`` answers with a status in ``expect`` (HTTPS verifies the
  certificate against ``host`` unless ``verify_tls: false``).

Anti-flap: a check goes *down* after ``fall`` consecutive failures and *up* after ``rise``
consecutive successes; anything in between keeps the current verdict.

Cold start: until a check reaches its first verdict (``rise`` successes or ``fall`` failures),
it is *unknown*, and unknown counts as up (``Status.overrides`` only marks a service down on an
explicit ``False``). So a restart never takes regions out of DNS while checks warm up.

Several checks may watch one (region, service); its verdict is down when any of them is down,
up when all that have a verdict are up, unknown when none has one yet. Verdicts go to
``Inventory.set_health(region, service, healthy)``; the drain automation (``drainer.py``) listens
for them there.

YAML (a ``health:`` section of a chains file, parsed by ``filterdns.config.health``; see
``filterdns.config.schema.HEALTH`` for every option and default)::

    health:
      defaults:            # optional; any check option except region/service
        interval: 5
        timeout: 2
        rise: 2
        fall: 3
      checks:
        - region: fra
          service: wss
          type: tcp
          port: 443          # address: omitted = the service's first configured address
        - region: fra
          service: api
          type: https
          address: 192.0.2.10
          port: 443
          path: /healthz
          host: api.example.com
          expect: [200, 204]

Metrics: ``filterdns_health_probes_total{region,service,result}`` and, from the inventory,
``filterdns_region_health{region,service,state}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import Any, Callable

from filterdns.config.health import CheckSpec, check_against_regions, parse_health_config  # noqa: F401 - re-exported
from filterdns.config.schema import HEALTH
from filterdns.routing.inventory import Inventory

log = logging.getLogger("filterdns.ops.health")

KINDS = HEALTH["type"].choices


#: the schema of one check, as data (``filterdns.config.schema.HEALTH``: the loader, the docs
#: and the tests read this table); parsing and CheckSpec live in ``filterdns.config.health``
SCHEMA = HEALTH


async def probe(spec: CheckSpec, address: str) -> tuple[bool, str]:
    """Run one probe; (healthy, short detail). Never raises except on cancellation."""
    try:
        return await asyncio.wait_for(_probe(spec, address), spec.timeout)
    except asyncio.TimeoutError:
        return False, f"timeout after {spec.timeout:g}s"
    except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        return False, f"{type(e).__name__}: {e}"


async def _probe(spec: CheckSpec, address: str) -> tuple[bool, str]:
    ctx = None
    if spec.type == "https":
        ctx = ssl.create_default_context()
        if not spec.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        address, spec.port, ssl=ctx, server_hostname=(spec.host or address) if ctx else None, limit=8192)
    try:
        if spec.type == "tcp":
            return True, "connected"
        host = spec.host or (f"[{address}]" if ":" in address else address)
        writer.write(f"GET {spec.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: filterdns-health\r\n"
                     f"Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        line = await reader.readline()
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return False, f"not an HTTP response: {line[:40]!r}"
        code = int(parts[1])
        return code in spec.expect, f"HTTP {code}"
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 0.5)
        except (Exception, asyncio.CancelledError):
            pass


class _CheckState:
    """Anti-flap counters of one check."""

    __slots__ = ("spec", "verdict", "successes", "failures", "last_detail")

    def __init__(self, spec: CheckSpec):
        self.spec = spec
        self.verdict: bool | None = None  # cold start: unknown, counts as up
        self.successes = 0
        self.failures = 0
        self.last_detail = ""

    def record(self, ok: bool) -> bool:
        """Count one result; returns whether the verdict changed."""
        if ok:
            self.successes += 1
            self.failures = 0
            if self.verdict is not True and self.successes >= self.spec.rise:
                self.verdict = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.verdict is not False and self.failures >= self.spec.fall:
                self.verdict = False
                return True
        return False


class HealthChecker:
    """Runs every check as a task; ``start()`` (needs a running loop) and ``await stop()``.

    ``get_state`` (optional) supplies the configured regions, used when a check has no
    ``address``. ``probe_fn`` can replace the network probe in tests.
    """

    def __init__(self, specs: list[CheckSpec], inventory: Inventory, get_state: Callable[[], Any] | None = None,
                 metrics: Any = None, probe_fn: Callable[[CheckSpec, str], Any] = probe, jitter: bool = True):
        self.inventory = inventory
        self.get_state = get_state
        self.metrics = metrics
        self.probe_fn = probe_fn
        self.jitter = jitter
        self.checks = [_CheckState(s) for s in specs]
        self._tasks: list[asyncio.Task] = []
        self._pending: asyncio.Task | None = None

    def start(self) -> None:
        if self._tasks:
            return
        for c in self.checks:
            self._tasks.append(asyncio.get_running_loop().create_task(self._run(c), name=f"health {c.spec.name}"))
        log.info("started %d health check(s)", len(self.checks))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def replace(self, specs: list[CheckSpec]) -> None:
        """Swap in new checks after a reload; verdicts of checks no longer present are forgotten."""
        running = bool(self._tasks)
        await self.stop()
        old = {(c.spec.region, c.spec.service) for c in self.checks}
        kept = {c.spec: c for c in self.checks}  # unchanged checks keep their counters and verdict
        self.checks = [kept.get(s) or _CheckState(s) for s in specs]
        for region, service in old - {(c.spec.region, c.spec.service) for c in self.checks}:
            self.inventory.set_health(region, service, None)
        if running:
            self.start()

    def on_state_swap(self, old: Any, new: Any) -> None:
        """``StateHolder.subscribe`` listener: apply ``new.health`` when it differs (needs a loop)."""
        if tuple(getattr(old, "health", ())) != tuple(getattr(new, "health", ())):
            task = asyncio.get_running_loop().create_task(self.replace(list(getattr(new, "health", ()))))
            self._pending = task  # keep a reference until it is done

    def _address(self, spec: CheckSpec) -> str | None:
        if spec.address:
            return spec.address
        state = self.get_state() if self.get_state else None
        region = (getattr(state, "regions", None) or {}).get(spec.region)
        svc = region.services.get(spec.service) if region else None
        if svc is None:
            return None
        return (svc.v4 or svc.v6 or (None,))[0]

    async def _run(self, check: _CheckState) -> None:
        spec = check.spec
        if self.jitter:
            await asyncio.sleep(random.uniform(0, min(spec.interval, 1.0)))
        while True:  # runs until stop() cancels it
            await self.run_once(check)
            await asyncio.sleep(spec.interval)

    async def run_once(self, check: _CheckState) -> None:
        """One probe of one check and its consequences (verdict, inventory, metrics)."""
        spec = check.spec
        address = self._address(spec)
        if address is None:
            ok, detail = False, "no address configured for this service"
        else:
            ok, detail = await self.probe_fn(spec, address)
        check.last_detail = detail
        if self.metrics is not None:
            self.metrics.health_probe(spec.region, spec.service, ok)
        f = {"check": spec.name, "region": spec.region, "service": spec.service, "ok": ok}
        log.debug("health %s: probe %s (%s)", spec.name, "ok" if ok else "failed", detail,
                  extra={"fields": f})
        if check.record(ok):
            # coming back is good news (INFO); going down is what an operator must look at
            log.log(logging.INFO if check.verdict else logging.WARNING, "health %s: %s (%s)",
                    spec.name, "UP" if check.verdict else "DOWN", detail,
                    extra={"fields": {**f, "verdict": "up" if check.verdict else "down"}})
            self._publish(spec.region, spec.service)

    def _publish(self, region: str, service: str) -> None:
        verdicts = [c.verdict for c in self.checks if (c.spec.region, c.spec.service) == (region, service)]
        if any(v is False for v in verdicts):
            healthy: bool | None = False
        elif any(v is True for v in verdicts):
            healthy = True
        else:
            healthy = None
        self.inventory.set_health(region, service, healthy)

    def describe(self) -> list[dict]:
        """Current verdict and counters of every check (for logs and debugging)."""
        return [{"check": c.spec.name, "verdict": c.verdict, "successes": c.successes,
                 "failures": c.failures, "detail": c.last_detail} for c in self.checks]
