"""UDP transport: one datagram in, at most one datagram out, sized to the client's limit."""

from __future__ import annotations

import asyncio


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder):
        self.responder = responder
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        # the limit is refined per query from its OPT (wire.udp_limit); pass the cap here
        resp = self.responder.respond_udp(data, addr)
        if resp is not None:
            self.transport.sendto(resp, addr)

    def error_received(self, exc):  # ICMP unreachable etc.: nothing to do for a server
        pass

