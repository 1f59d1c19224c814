"""TCP transport (RFC 1035 §4.2.2, RFC 7766): two-octet length framing, pipelined queries,
frames split across reads, an idle timeout, and a cap on concurrent connections.

A connection over the cap is accepted and closed at once (counted), so a client sees a clean
close rather than a hang. Writes that back up pause reading (flow control).
"""

from __future__ import annotations

import asyncio

from filterdns.dns.responder import frame
from filterdns.dns.wire import TCP_LIMIT


class TcpServerState:
    def __init__(self, responder, metrics, max_connections: int = 256, idle_timeout: float = 10.0):
        self.responder = responder
        self.metrics = metrics
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.open = 0
        self.protocols: set = set()


class TcpProtocol(asyncio.Protocol):
    def __init__(self, shared: TcpServerState):
        self.shared = shared
        self.transport = None
        self.buf = bytearray()
        self.peer = None
        self.timer = None
        self.counted = False

    def connection_made(self, transport):
        self.transport = transport
        s = self.shared
        if s.open >= s.max_connections:
            s.metrics.tcp_refused()
            transport.abort()
            return
        s.open += 1
        s.protocols.add(self)
        self.counted = True
        s.metrics.tcp_connections(1)
        self.peer = transport.get_extra_info("peername")
        self._arm()

    def _arm(self):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.shared.idle_timeout, self._idle)

    def _idle(self):
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data):
        buf = self.buf
        buf += data
        responder = self.shared.responder
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if n == 0:  # not a DNS message: close (RFC 7766 §6.2.4 leaves this to us)
                self.shared.metrics.malformed("tcp", "short")
                self.transport.close()
                return
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2:2 + n])
            del buf[:2 + n]
            resp = responder.respond(msg, self.peer, "tcp", TCP_LIMIT)
            if resp is not None:
                self.transport.write(frame(resp))
        self._arm()

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.shared.open -= 1
            self.shared.protocols.discard(self)
            self.shared.metrics.tcp_connections(-1)
        self.transport = None
