"""DNS listeners: bind the UDP and TCP sockets of every --listen address, and serve them.

``bind_sockets`` is called once per server (by the single process, or by the supervisor, whose
workers inherit the sockets). Its errors name the address and the transport, since "Address
already in use" alone does not say which of several listeners failed, or whether it was UDP
or TCP. ``DnsListeners`` serves already-bound sockets with one Responder.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

from filterdns.serve import gctune
from filterdns.serve.address import format_hostport
from filterdns.serve.tcp import TcpProtocol, TcpServerState
from filterdns.serve.udp import open_udp

log = logging.getLogger("filterdns")


class ListenError(OSError):
    """A listen address that cannot be used; the message names it and the transport."""


def _explain(addr: str, transport: str, e: OSError) -> ListenError:
    why = e.strerror or str(e)
    if e.errno == errno.EADDRINUSE:
        why = "address already in use (another server, or another filterdns, listens there)"
    elif e.errno == errno.EADDRNOTAVAIL:
        why = "address not available on this host (no interface has it"
        why += "; is IPv6 enabled?)" if addr.startswith("[") else ")"
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif e.errno == errno.EAFNOSUPPORT:
        why = "IPv6 is not available on this host" if addr.startswith("[") else why
    return ListenError(e.errno, f"cannot listen on {addr} ({transport}): {why}")


def bind_sockets(listen: list[tuple[str, int]]) -> list[tuple[socket.socket, socket.socket]]:
    """A (UDP, TCP) socket pair per address; port 0: the kernel picks one, the same for both.
    Raises ListenError (and closes what it bound) when an address cannot be used."""
    out: list[tuple[socket.socket, socket.socket]] = []
    bound: list[socket.socket] = []
    try:
        for host, port in listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            addr = format_hostport(host, port)
            try:
                usock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as e:
                raise _explain(addr, "UDP", e) from None
            bound.append(usock)
            try:
                if family == socket.AF_INET6:
                    usock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                usock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                usock.bind((host, port))
            except OSError as e:
                raise _explain(addr, "UDP", e) from None
            port = usock.getsockname()[1]
            addr = format_hostport(host, port)
            tsock = socket.socket(family, socket.SOCK_STREAM)
            bound.append(tsock)
            try:
                tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    tsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                tsock.bind((host, port))
                tsock.listen(1024)
            except OSError as e:
                raise _explain(addr, "TCP", e) from None
            out.append((usock, tsock))
    except OSError:
        for s in bound:
            s.close()
        raise
    return out


def sockets_text(socks) -> str:
    return ", ".join(format_hostport(*u.getsockname()[:2]) for u, _t in socks)


class DnsListeners:
    """UDP and TCP transports of one process, all answering through one Responder."""

    def __init__(self, responder, metrics, tcp: dict, rrl: dict | None = None, rrl_table=None,
                 standby: bool = False):
        """``tcp``: ServeOptions.tcp_limits(); ``rrl``: RrlConfig.to_dict() or None (off);
        ``rrl_table``: the server's shared RrlTable (workers), None for one of its own."""
        self.responder = responder
        if rrl:
            from filterdns.dns.rrl import Rrl, RrlConfig

            responder.rrl = Rrl(RrlConfig.from_dict(rrl), metrics, table=rrl_table)
        self.tcp_state = TcpServerState(responder, metrics, **tcp)
        #: UDP: another worker leads; read only while it does not keep up (serve/udp.py)
        self.standby = standby
        self.transports: list = []
        self.servers: list = []
        self.is_open = False
        self._gc_task: asyncio.Task | None = None
        self._gc_pace: asyncio.Task | None = None

    async def open(self, socks: list[tuple[socket.socket, socket.socket]]) -> None:
        loop = asyncio.get_running_loop()
        for usock, tsock in socks:
            usock.setblocking(False)
            tsock.setblocking(False)
            self.transports.append(await open_udp(usock, self.responder, self.responder.metrics,
                                                   standby=self.standby))
            srv = await loop.create_server(lambda: TcpProtocol(self.tcp_state), sock=tsock, backlog=1024)
            self.servers.append(srv)
        self.is_open = True
        if gctune.tune():  # the config is loaded: freeze it, collect on a clock (serve/gctune.py)
            self._gc_task = asyncio.create_task(self._refreeze_on_reload())
            self._gc_pace = asyncio.create_task(gctune.pace())

    async def _refreeze_on_reload(self, interval: float = 5.0) -> None:
        holder = getattr(self.responder, "holder", None)
        gen = holder.state.generation if holder is not None else None
        while holder is not None:
            await asyncio.sleep(interval)
            if holder.state.generation != gen:
                gen = holder.state.generation
                gctune.refreeze()

    async def close(self) -> None:
        self.is_open = False
        if self._gc_task is not None:
            self._gc_task.cancel()
        if self._gc_pace is not None:
            self._gc_pace.cancel()
        for tr in self.transports:
            tr.close()
        for srv in self.servers:
            srv.close()
        for p in list(self.tcp_state.protocols):
            if p.transport is not None:
                p.transport.close()
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
