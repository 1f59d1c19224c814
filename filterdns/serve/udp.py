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
goes to the responder as before. A random answer (shuffle, shed_load between its watermarks)
whose distribution is fixed for the key (``Resolution.pooled``) is kept as a pool of up to 8
of Python's own draws: one query in 4, chosen at random, goes to Python and its draw grows the
pool or replaces a slot chosen at random, the others get a slot chosen at random, so every
replayed answer has exactly the probabilities of Python's draw (``_mmsg.c`` explains why);
not under ``--seed``, which promises the same answers in the same order. The Replay only
replays bytes the responder made: it decides nothing, so the policy keeps one path. It is
reset (every entry forgotten) on the first batch after a reload or any change of region
state, is off while RRL, the query log or dnstap must see each query, and is bounded: two
generations of ``REPLAY_MAX`` keys and ``REPLAY_BYTES`` octets of keys and replies in all,
replies <= 4096 octets. ``FILTERDNS_NO_REPLAY=1`` turns it off. Its hits are counted into
``/metrics`` as the Python path counts them (``Metrics.replay_cell``).

Wake-ups. Every worker of ``serve --workers N`` serves the same inherited socket, and an
event loop watching a socket is woken by every datagram: at moderate rates each query woke
every worker, all but one to find nothing (the bench's fixed-rate run, 2 workers: 15.3 us of
CPU per query against 8.4 with one worker). ``BatchedUdp`` therefore re-registers its socket
in the loop's own epoll instance with ``EPOLLEXCLUSIVE`` (Linux >= 4.5, made for this): the
kernel wakes one worker that is waiting, and another only while that one is busy, so load
still spreads over every worker at saturation. The loop's epoll is found as the one epoll of
this process that watches the socket (``/proc/self/fdinfo``); the registration keeps the
loop's event data (the fd), and the writer waits on a duplicate of the socket's fd so the
loop never modifies the exclusive entry (which the kernel refuses). Where any of it is not
possible, or ``FILTERDNS_UDP_SHARED_WAKEUPS`` is set, wake-ups stay shared (correct, more
CPU); the log says which. ``filterdns_udp_wakeups_total{result}`` counts them.

Even exclusive, a second worker woken whenever the first is busy costs more than it gives at
moderate rates (its caches are cold; 2 workers reading: 12.5 us per query at the fixed rate,
one reading: 8.6). So worker 0 leads and the others stand by (``standby``): a standby worker
is not in its loop's epoll at all; every ``TICK`` it reads the socket's queued octets
(``SO_MEMINFO``) and starts reading when the queue stays deep (``DEEP_TICKS`` looks over
``DEEP``: the lead is saturated) or stays non-empty (``BUSY_TICKS`` looks: the lead is
stalled, in a long pause, or dead and being restarted; within about 35 ms), and stops after
``QUIET_TICKS`` looks (0.5 s) without a deep queue. It looks every ``TICK`` while the queue
is non-empty or it reads, every ``IDLE_TICK`` while the queue stays empty: an idle standby
worker costs about 0.3% of a core. ``filterdns_udp_standby_arms_total`` counts the starts,
``filterdns_udp_sockets_reading`` shows who reads now.

``native()`` says which is available; ``mode()`` which one a new listener uses.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import struct
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
#: standby workers (every one but the first) look at the shared socket's queue this often (s)
#: while it is non-empty or they read it, and every IDLE_TICK while it stays empty
TICK = 0.004
IDLE_TICK = 0.016
#: a queue this deep (receive memory, octets: about 8 small datagrams) is one the lead worker
#: is not keeping up with; DEEP_TICKS looks in a row start a standby worker reading, and so do
#: BUSY_TICKS looks in a row at a non-empty queue (the lead is stalled or gone: 20-35 ms)
DEEP = 8 * 768
DEEP_TICKS = 2
BUSY_TICKS = 5
#: a reading standby worker stops after this many looks in a row without a deep queue (0.5 s)
QUIET_TICKS = 125
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
#: replayed keys kept per generation (two generations: at most twice this), and the octets of
#: keys and replies the two hold at most (each generation half of it)
REPLAY_MAX = 32768
REPLAY_BYTES = 16 << 20


def new_replay(bounds=None):
    """A Replay for a responder (``Responder.replay_for``) counting its hits' time in buckets
    with these upper ``bounds`` (seconds), or None where it is off: ``FILTERDNS_NO_REPLAY``
    set, or the native module missing."""
    if _mmsg is None or os.environ.get("FILTERDNS_NO_REPLAY"):
        return None
    return _mmsg.Replay(REPLAY_MAX, bounds or (), max_bytes=REPLAY_BYTES)


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


def _epolls_watching(fd: int) -> list[int]:
    """The epoll descriptors of this process that watch ``fd`` (from /proc/self/fdinfo)."""
    found = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/self/fdinfo/{name}") as f:
                if any(line.split()[1:2] == [str(fd)] for line in f if line.startswith("tfd:")):
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


def _epoll(epfd: int):
    """An epoll object on a duplicate of ``epfd``: closing it leaves the loop's own open."""
    return select.epoll.fromfd(os.dup(epfd))


def forget(fd: int) -> None:
    """Take ``fd`` out of every epoll of this process that still watches it."""
    for epfd in _epolls_watching(fd):
        try:
            ep = _epoll(epfd)
        except OSError:
            continue
        try:
            ep.unregister(fd)
        except OSError:
            pass
        finally:
            ep.close()


def make_exclusive(fd: int) -> str | None:
    """Re-register ``fd`` in the one epoll of this process that watches it with
    ``EPOLLIN | EPOLLEXCLUSIVE``; None when done, else why not (nothing changed)."""
    flag = getattr(select, "EPOLLEXCLUSIVE", None)
    if flag is None:
        return "this Python has no EPOLLEXCLUSIVE"
    eps = _epolls_watching(fd)
    if len(eps) != 1:
        return f"{len(eps)} epoll instances watch the socket, not one"
    ep = _epoll(eps[0])
    try:
        ep.unregister(fd)
        try:  # level-triggered: a datagram that arrived meanwhile makes it ready at once
            ep.register(fd, select.EPOLLIN | flag)
        except OSError as e:
            ep.register(fd, select.EPOLLIN)
            return f"EPOLLEXCLUSIVE refused ({e.strerror})"
    except OSError as e:
        return f"epoll_ctl failed ({e.strerror})"
    finally:
        ep.close()
    return None


class BatchedUdp:
    """Serve one bound, non-blocking UDP socket with recvmmsg/sendmmsg from the running loop."""

    def __init__(self, sock, responder, metrics=None, loop=None, standby: bool = False):
        self.sock = sock
        self.fd = sock.fileno()
        self.responder = responder
        self.metrics = metrics
        self.loop = loop or asyncio.get_running_loop()
        self.pending: deque = deque()  # (data, addr) waiting for the socket to be writable
        self.dropped = 0
        self.wakeups = 0  # times the loop called _readable
        self.empty = 0  # ... and found no datagram (another worker had taken it)
        self.arms = 0  # times a standby socket started reading (``_tick``)
        self.exclusive: bool | None = None  # None until tried (``_exclusive``)
        self.shared = bool(os.environ.get("FILTERDNS_UDP_SHARED_WAKEUPS"))
        self.closed = False
        self.armed = False
        self._epoch = 0  # bumped by every arm and disarm: a late _exclusive of an old one stops
        self._deep = self._busy = self._quiet = 0
        self._timer = None
        sock.setblocking(False)
        # the writer waits on a duplicate: the loop must never modify the exclusive reader entry
        self.wfd = os.dup(self.fd)
        if metrics is not None:
            metrics.udp_source(self.counts)
        if self.shared:
            log.info("udp %s: wake-ups shared by every worker (FILTERDNS_UDP_SHARED_WAKEUPS)", self._where())
            standby = False
        if standby:  # read only while the queue shows the lead worker cannot keep up alone
            self._timer = self.loop.call_later(IDLE_TICK, self._tick)
        else:
            self._arm()

    def _where(self) -> str:
        try:
            return "%s:%d" % self.sock.getsockname()[:2]
        except OSError:
            return "?"

    def _arm(self) -> None:
        self.armed = True
        self._epoch += 1
        self._quiet = 0
        self.loop.add_reader(self.fd, self._readable)
        if not self.shared:  # after the loop's next iteration, which puts the socket into its epoll
            self.loop.call_soon(self._exclusive, 0, self._epoch)

    def _disarm(self) -> None:
        self.armed = False
        self._epoch += 1
        self._deep = self._busy = 0
        self.loop.remove_reader(self.fd)
        forget(self.fd)  # the loop's epoll no longer holds it, whatever the loop does lazily

    def _depth(self) -> int:
        """Octets queued on the socket (SO_MEMINFO: its receive memory), 0 when unknown."""
        try:
            return struct.unpack_from("I", self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0]
        except OSError:
            return 0

    def _tick(self) -> None:
        """A standby worker's look at the shared socket's queue, every ``TICK`` (``IDLE_TICK``
        while it stays empty): start reading when it stays deep (the lead worker is saturated)
        or stays non-empty (the lead is stalled or gone); stop after ``QUIET_TICKS`` looks
        without a deep queue."""
        if self.closed:
            return
        depth = self._depth()
        if not self.armed:
            self._deep = self._deep + 1 if depth >= DEEP else 0
            self._busy = self._busy + 1 if depth else 0
            if self._deep >= DEEP_TICKS or self._busy >= BUSY_TICKS:
                self.arms += 1
                self._arm()
        else:
            self._quiet = 0 if depth >= DEEP else self._quiet + 1
            if self._quiet >= QUIET_TICKS and not self.pending:
                self._disarm()
        self._timer = self.loop.call_later(TICK if depth or self.armed else IDLE_TICK, self._tick)

    def _exclusive(self, tries: int, epoch: int) -> None:
        if self.closed or epoch != self._epoch:
            return
        why = make_exclusive(self.fd)
        if why is not None and why.startswith("0 epoll") and tries < 20:
            self.loop.call_later(0.05, self._exclusive, tries + 1, epoch)  # not registered yet
            return
        first = self.exclusive is None
        self.exclusive = why is None
        if why is None:
            if first:
                log.debug("udp %s: exclusive wake-ups (EPOLLEXCLUSIVE)", self._where())
        else:
            log.warning("udp %s: wake-ups shared by every worker: %s", self._where(), why)

    def _readable(self) -> None:
        serve, respond, fd = _mmsg.serve, self.responder.respond_udp, self.fd
        # the Replay of this config and region state (reset here when either changed), or None
        replay = self.responder.replay_for(new_replay)
        self.wakeups += 1
        first = True
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
            if first:
                first = False
                if not got:
                    self.empty += 1
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
            self.loop.add_writer(self.wfd, self._writable)

    def _writable(self) -> None:
        while self.pending:
            chunk = [self.pending.popleft() for _ in range(min(len(self.pending), 64))]
            sent, err = _mmsg.send_batch(self.fd, chunk)
            if err:
                self.pending.extendleft(reversed(chunk[sent:]))
                return
        self.loop.remove_writer(self.wfd)

    def counts(self) -> tuple[int, int, int, int, int]:
        """(wake-ups, wake-ups that found nothing, replies dropped, standby arms, reading now)."""
        return self.wakeups, self.empty, self.dropped, self.arms, int(self.armed)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.armed:
            self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.wfd)
        os.close(self.wfd)
        self.pending.clear()
        self.sock.close()


async def open_udp(sock, responder, metrics=None, standby: bool = False):
    """Serve ``sock``: a BatchedUdp where the native module is available (and not disabled),
    else the event loop's datagram transport with UdpProtocol. Returns an object with close().
    ``standby``: another process (the lead worker) reads the same socket; this one reads it
    only while the lead does not keep up (``BatchedUdp._tick``)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    where = sock.getsockname()[:2]
    if mode() == "batched":
        log.info("udp %s:%d: batched (recvmmsg/sendmmsg, up to %d queries per call)", *where, BATCH)
        return BatchedUdp(sock, responder, metrics, loop, standby=standby)
    why = "FILTERDNS_UDP_PLAIN is set" if _mmsg is not None else "the native _mmsg module is not built"
    log.info("udp %s:%d: plain (one sendto per query; %s)", *where, why)
    tr, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(responder), sock=sock)
    return tr
