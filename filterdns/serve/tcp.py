"""TCP transport (RFC 1035 §4.2.2, RFC 7766): two-octet length framing, pipelined queries,
frames split across reads, and limits that keep slow or hostile clients from holding the
server (RFC 7766 §6.2.3 - servers decide how long connections stay open and may close them
under pressure):

* **idle timeout**: a connection is closed this long after its last answered query (only a
  completed query restarts this clock - a byte now and then does not);
* **message deadline**: once the first octet of a query has arrived, the whole message must
  arrive within this time (slowloris: a byte every few seconds gets closed);
* **lifetime**: any connection is closed after this long, busy or not;
* **unsent bytes**: answers waiting for a client that does not read are capped: above the cap
  the server stops reading that client's queries (transport write-buffer limits and a small
  socket send buffer), and a client that stays stuck for the idle timeout is cut off;
* **per-source cap**: at most this many connections from one address (IPv6: one /64);
* **server cap**: at most this many connections (with workers: each worker takes an equal
  share of ``--tcp-max-connections``). When full, a new client takes the slot of the oldest
  connection that has not completed a single query in its first quarter second, else of the
  one that has left answers unread longest (a quarter second at least: a client that
  pipelines queries and never reads is not making progress, however recently it was
  answered), else of the one longest without an answered query (if that is at least a
  second), so clients that trickle or stall cannot lock out new ones; otherwise the new
  connection is closed at once (counted), which the client sees as a clean close rather than
  a hang.

Every close the server decides is counted by reason (``filterdns_tcp_closed_total``).
"""

from __future__ import annotations

import asyncio
import socket
import time

from filterdns.dns.responder import frame
from filterdns.dns.wire import TCP_LIMIT

_now = time.monotonic
SWEEP_INTERVAL = 0.25
#: a connection must have gone this long without an answered query to be displaced...
EVICT_AFTER = 1.0
#: ...or this long since it opened without completing a single query (a real client sends its
#: query right after connecting; slowloris never does)
EVICT_SILENT_AFTER = 0.25
#: a closing connection that has not gone away after this long is aborted
CLOSE_GRACE = 2.0


def source_key(peer) -> str:
    """The per-source counting key: the address, IPv6 /64 (IPv4-mapped counts as IPv4)."""
    host = peer[0] if peer else "?"
    if ":" in host:
        if host.startswith("::ffff:") and "." in host:
            return host[7:]
        try:
            raw = socket.inet_pton(socket.AF_INET6, host.split("%")[0])
        except OSError:
            return host
        return raw[:8].hex()
    return host


class TcpServerState:
    def __init__(self, responder, metrics, max_connections: int = 256, idle_timeout: float = 10.0,
                 per_source: int = 32, message_timeout: float = 5.0, lifetime: float = 120.0,
                 max_unsent: int = 131072):
        self.responder = responder
        self.metrics = metrics
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.per_source = per_source
        self.message_timeout = message_timeout
        self.lifetime = lifetime
        self.max_unsent = max_unsent
        self.open = 0
        self.protocols: set = set()
        self.sources: dict[str, int] = {}
        self._sweeper = None

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        """Enforce the deadlines of every connection (one timer for all of them)."""
        self._sweeper = None
        now = _now()
        for p in list(self.protocols):
            p.check(now)
        if self.protocols:
            self._ensure_sweeper()

    def admit(self, new: "TcpProtocol") -> str | None:
        """Count a new connection in, or say why not ("per_source", "refused")."""
        key = new.source
        if self.sources.get(key, 0) >= self.per_source:
            return "per_source"
        if self.open >= self.max_connections:
            victim = self._victim(_now())
            if victim is None:
                return "refused"
            if victim.closing is not None:  # already closing: free its slot now
                self.release(victim)
                if victim.transport is not None:
                    victim.transport.abort()
            else:
                victim.shut("evicted", abort=True)
        self.open += 1
        self.sources[key] = self.sources.get(key, 0) + 1
        self.protocols.add(new)
        self.metrics.tcp_connections(1)
        self._ensure_sweeper()
        return None

    def _victim(self, now: float) -> "TcpProtocol | None":
        """The connection a new one may displace: one already closing, then those that never
        completed a query (oldest first), then the one leaving answers unread longest, then
        the one longest without an answered query; None when every connection is too
        recently active to displace."""
        for p in self.protocols:
            if p.closing is not None:  # on its way out anyway
                return p
        live = [p for p in self.protocols if p.closing is None]
        silent = [p for p in live if not p.answered]
        if silent:
            p = min(silent, key=lambda p: p.opened)
            if now - p.opened >= EVICT_SILENT_AFTER:
                return p
        unread = [p for p in live if p.unread_since(now) is not None]
        if unread:
            p = min(unread, key=lambda p: p.unread_since(now))
            if now - p.unread_since(now) >= EVICT_SILENT_AFTER:
                return p
        p = min(live, key=lambda p: p.last_progress, default=None)
        if p is not None and now - p.last_progress >= EVICT_AFTER:
            return p
        return None

    def release(self, p: "TcpProtocol") -> None:
        if p in self.protocols:
            self.protocols.discard(p)
            self.open -= 1
            n = self.sources.get(p.source, 1) - 1
            if n:
                self.sources[p.source] = n
            else:
                self.sources.pop(p.source, None)
            self.metrics.tcp_connections(-1)


class TcpProtocol(asyncio.Protocol):
    def __init__(self, shared: TcpServerState):
        self.shared = shared
        self.transport = None
        self.buf = bytearray()
        self.peer = None
        self.source = "?"
        self.opened = self.last_progress = 0.0
        self.answered = 0  # queries answered on this connection
        self.msg_started: float | None = None  # when the first octet of the pending query came
        self.write_stuck: float | None = None  # since when answers back up (client not reading)
        self.closing: float | None = None
        self.backlog_since: float | None = None  # since when answers wait in our buffer

    def unread_since(self, now: float) -> float | None:
        """Since when this client has left answers unread (answers queued in our buffer
        because its socket is full), or None: it reads what it is sent."""
        tr = self.transport
        if tr is None or not tr.get_write_buffer_size():
            self.backlog_since = None
        elif self.backlog_since is None:
            self.backlog_since = now
        return self.backlog_since

    def connection_made(self, transport):
        self.transport = transport
        s = self.shared
        self.peer = transport.get_extra_info("peername")
        self.source = source_key(self.peer)
        self.opened = self.last_progress = _now()
        why = s.admit(self)
        if why is not None:
            if why == "per_source":
                s.metrics.tcp_closed("per_source")
            s.metrics.tcp_refused()
            self.transport = None
            transport.abort()
            return
        # cap what the kernel holds for a client that does not read, and what we hold
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, s.max_unsent // 2)
            except (OSError, AttributeError):
                pass
        transport.set_write_buffer_limits(high=s.max_unsent, low=s.max_unsent // 4)

    def check(self, now: float) -> None:
        """Called by the sweeper: close this connection if one of its deadlines passed."""
        tr = self.transport
        if tr is None:
            return
        s = self.shared
        if self.closing is not None:
            if now - self.closing > CLOSE_GRACE:
                tr.abort()
            return
        self.unread_since(now)
        if self.write_stuck is not None:
            if now - self.write_stuck > s.idle_timeout:
                self.shut("write_stall", abort=True)
        elif now - self.opened > s.lifetime:
            self.shut("lifetime")
        elif self.msg_started is not None:
            if now - self.msg_started > s.message_timeout:
                self.shut("read_deadline")
        elif now - self.last_progress > s.idle_timeout:
            self.shut("idle")

    def shut(self, reason: str, abort: bool = False) -> None:
        tr = self.transport
        if tr is None or self.closing is not None:
            return
        self.shared.metrics.tcp_closed(reason)
        self.closing = _now()
        if abort or tr.get_write_buffer_size():
            # answers still queued for this client would keep the slot: drop them
            self.shared.release(self)
            tr.abort()
        else:
            tr.close()

    def data_received(self, data):
        if self.closing is not None:
            return
        if self.msg_started is None:
            self.msg_started = _now()
        self.buf += data
        self._process()

    def _process(self):
        buf = self.buf
        responder = self.shared.responder
        tr = self.transport
        done = False
        while len(buf) >= 2 and self.write_stuck is None and tr is not None:
            n = (buf[0] << 8) | buf[1]
            if n == 0:  # not a DNS message: close (RFC 7766 §6.2.4 leaves this to us)
                self.shared.metrics.malformed("tcp", "short")
                self.shut("framing")
                return
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2:2 + n])
            del buf[:2 + n]
            done = True
            resp = responder.respond(msg, self.peer, "tcp", TCP_LIMIT)
            self.last_progress = _now()
            self.answered += 1
            if resp is not None:
                tr.write(frame(resp))  # may call pause_writing, which stops this loop
            tr = self.transport
        if not buf:
            self.msg_started = None
        elif done or self.msg_started is None:
            self.msg_started = _now()  # the next query's first octets are here

    def pause_writing(self):
        self.write_stuck = _now()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self):
        self.write_stuck = None
        self.last_progress = _now()
        if self.transport is not None and self.closing is None:
            self.transport.resume_reading()
            self._process()

    def eof_received(self):
        return False  # close our side too (after what is queued has been sent)

    def connection_lost(self, exc):
        self.shared.release(self)
        self.transport = None
