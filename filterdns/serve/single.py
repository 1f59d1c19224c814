"""One process does everything (``serve --workers 1``): it answers DNS itself, and holds the
config, the inventory and (wired by ``filterdns.app``) the operator pieces.

A reload swaps one reference (``StateHolder.swap``): queries in flight finish on the State
they started with. The listeners open only in ``start_dns``, after ``filterdns.app`` has
restored the durable drains into the inventory, so no query is answered without them.
"""

from __future__ import annotations

import logging
import random

from filterdns.config.state import State
from filterdns.dns.responder import Responder
from filterdns.serve import tap
from filterdns.serve.listeners import DnsListeners, bind_sockets, sockets_text
from filterdns.serve.runtime import Runtime

log = logging.getLogger("filterdns")


class SingleProcess(Runtime):
    role = "single"

    def __init__(self, opts, metrics):
        super().__init__(opts, metrics)
        self.dns: DnsListeners | None = None
        self.bound: list[tuple[str, int]] = []
        self.tap = None

    @property
    def listeners_open(self) -> bool:
        return self.dns is not None and self.dns.is_open

    async def commit(self, new: State) -> tuple[bool, list[str]]:
        self.holder.swap(new)
        return True, []

    async def start_dns(self) -> None:
        o = self.opts
        socks = bind_sockets(o.listen)
        rng = random.Random(o.seed) if o.seed is not None else None
        responder = Responder(self.holder, self.inventory, self.metrics, rng=rng)
        self.metrics.track_zones(self.holder)  # requests by zone
        responder.tap = self.tap = tap.build(self.holder, self.metrics, tap.options(o))
        self.dns = DnsListeners(responder, self.metrics, o.tcp_limits(), o.rrl)
        await self.dns.open(socks)
        self.bound = [u.getsockname()[:2] for u, _t in socks]
        for u, t in socks:
            log.info("listening on %s (udp, tcp)", sockets_text([(u, t)]))

    async def stop_dns(self) -> None:
        if self.dns is not None:
            await self.dns.close()
        if self.tap is not None:
            self.tap.close()  # flush what is queued; dnstap's STOP frame
