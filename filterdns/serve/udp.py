"""UDP transport: one datagram in, at most one datagram out, sized to the client's limit.

Two paths, the same answers (the Responder decides and sizes every reply; the transport only
moves bytes):

* ``BatchedUdp`` (Linux, when the native ``_mmsg`` module was built at install): on each
  wake-up of the event loop it takes every waiting query with one ``recvmmsg`` call (up to
  ``BATCH``), answers them in order and sends the replies with one ``sendmmsg`` call. Under
  load that is two system calls per batch instead of two per query. The loop over a batch is
  ``_mmsg.serve``, in C: it calls the responder for each datagram and sends each reply to the
  address its query came from without building a Python list of replies or parsing the
  address back (the bench's 17-subnet mix through a BatchedUdp over loopback, in-process:
  65,600 -> 62,200 user-space instructions per query, callgrind). When the socket's send
  buffer is full the unsent replies wait (at most ``PENDING_MAX``) for the socket to become
  writable, as the event loop's own transport would buffer them.
* ``UdpProtocol``: the event loop's datagram transport, one callback and one ``sendto`` per
  query. Used where the native module is missing (no C compiler at install, not Linux) or
  when ``FILTERDNS_UDP_PLAIN`` is set.

The Replay (``BatchedUdp`` only; ``new_replay``, ``Responder.replay_for``): an answer the
policy path marked fixed (``Resolution.fixed``: the same for every query from the client's
geo database network with the same ECS source prefix until the region state changes, or a
static answer) is kept in C with its key: the query's octets but the ID and the ECS address,
then the database network of the peer and of the ECS address, read from the same search tree
``GeoDB`` walks. A later datagram with the same key is answered in C (the kept reply with the
new ID and ECS address patched in) without reaching Python; anything else — a shape it does
not key (compression, several options, a scope, bits past the source prefix, TCP), a miss —
goes to the responder as before. The Replay only replays bytes the responder made: it decides
nothing, so the policy keeps one path. It is reset (every entry forgotten) on the first batch
after a reload or any change of region state, is off while RRL, the query log or dnstap must
see each query, and is bounded: two generations of ``REPLAY_MAX`` entries, replies <= 4096
octets. ``FILTERDNS_NO_REPLAY=1`` turns it off. Its hits are counted into ``/metrics`` as the
Python path counts them (``Metrics.replay_cell``).

``native()`` says which is available; ``mode()`` which one a new listener uses.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections import deque

try:
    from filterdns.serve import _mmsg
except ImportError:  # not built (no compiler at install) or not Linux: the pure-Python path
    _mmsg = None

log = logging.getLogger("filterdns")

#: queries taken per recvmmsg call, and rounds per wake-up before yielding to other tasks
BATCH = 32
ROUNDS = 8
#: replies kept while the send buffer is full; beyond this a reply is dropped (and counted)
PENDING_MAX = 4096
#: replayed answers kept per generation (two generations: at most twice this)
REPLAY_MAX = 16384


def new_replay(bounds=None):
    """A Replay for a responder (``Responder.replay_for``) counting its hits' time in buckets
    with these upper ``bounds`` (seconds), or None where it is off: ``FILTERDNS_NO_REPLAY``
    set, or the native module missing."""
    if _mmsg is None or os.environ.get("FILTERDNS_NO_REPLAY"):
        return None
    return _mmsg.Replay(REPLAY_MAX, bounds or ())


def native() -> bool:
    return _mmsg is not None


def mode() -> str:
    """'batched' (recvmmsg/sendmmsg) or 'plain' (one sendto per query)."""
    if _mmsg is None or os.environ.get("FILTERDNS_UDP_PLAIN"):
        return "plain"
    return "batched"


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


class BatchedUdp:
    """Serve one bound, non-blocking UDP socket with recvmmsg/sendmmsg from the running loop."""

    def __init__(self, sock, responder, metrics=None, loop=None):
        self.sock = sock
        self.fd = sock.fileno()
        self.responder = responder
        self.metrics = metrics
        self.loop = loop or asyncio.get_running_loop()
        self.pending: deque = deque()  # (data, addr) waiting for the socket to be writable
        self.dropped = 0
        self.closed = False
        sock.setblocking(False)
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        serve, respond, fd = _mmsg.serve, self.responder.respond_udp, self.fd
        # the Replay of this config and region state (reset here when either changed), or None
        replay = self.responder.replay_for(new_replay)
        for _ in range(ROUNDS):
            if self.pending:  # replies wait for the socket: new ones queue behind them
                got = self._round_behind()
            else:
                try:  # recvmmsg, respond to each datagram, sendmmsg: one call (_mmsg.serve)
                    got, unsent = serve(fd, BATCH, respond, replay)
                except OSError as e:  # ECONNREFUSED from an ICMP error and the like: nothing to do
                    if e.errno in (errno.EBADF, errno.ENOTSOCK):
                        return
                    continue
                if unsent:
                    self._queue(unsent, 0)
            if got < BATCH:
                return

    def _round_behind(self) -> int:
        """One round while earlier replies wait for the socket: receive, answer, queue."""
        try:
            batch = _mmsg.recv_batch(self.fd, BATCH)
        except OSError as e:
            return 0 if e.errno in (errno.EBADF, errno.ENOTSOCK) else BATCH
        respond = self.responder.respond_udp
        out = []
        for data, addr in batch:
            resp = respond(data, addr)
            if resp is not None:
                out.append((resp, addr))
        if out:
            self._queue(out, 0)
        return len(batch)

    def _queue(self, out: list, start: int) -> None:
        """Keep replies the kernel could not take yet; send them when the socket is writable."""
        was_empty = not self.pending
        for item in out[start:]:
            if len(self.pending) >= PENDING_MAX:
                self.dropped += 1
                continue
            self.pending.append(item)
        if was_empty and self.pending and not self.closed:
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        while self.pending:
            chunk = [self.pending.popleft() for _ in range(min(len(self.pending), 64))]
            sent, err = _mmsg.send_batch(self.fd, chunk)
            if err:
                self.pending.extendleft(reversed(chunk[sent:]))
                return
        self.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.pending.clear()
        self.sock.close()


async def open_udp(sock, responder, metrics=None):
    """Serve ``sock``: a BatchedUdp where the native module is available (and not disabled),
    else the event loop's datagram transport with UdpProtocol. Returns an object with close()."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    where = sock.getsockname()[:2]
    if mode() == "batched":
        log.info("udp %s:%d: batched (recvmmsg/sendmmsg, up to %d queries per call)", *where, BATCH)
        return BatchedUdp(sock, responder, metrics, loop)
    why = "FILTERDNS_UDP_PLAIN is set" if _mmsg is not None else "the native _mmsg module is not built"
    log.info("udp %s:%d: plain (one sendto per query; %s)", *where, why)
    tr, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(responder), sock=sock)
    return tr
