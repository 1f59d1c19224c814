"""Many DNS queries at once over UDP, each with its own ECS subnet (RFC 7871).

``Batch.resolve(items)`` sends every query of a list through one non-blocking socket with a
sliding window (``window`` in flight), matches answers by ID and question, retransmits what is
not answered within ``timeout`` (``tries`` times), and returns one ``Answer`` per item, in order.

The queries are what a recursive resolver sends an authoritative server: RD clear, EDNS0 with
a 1232-byte payload, and an ECS option carrying the client's subnet with the source prefix the
resolver uses. Answers are parsed with ``struct`` and slices (the A records, their TTL, the
rcode and the ECS scope); nothing else of the message is needed.

Order: the window is filled in list order and refilled as answers arrive, so a single-worker
server reads the queries in list order (one socket, loopback, FIFO) unless one is lost and
retransmitted; ``Batch.retransmits`` counts those (a seeded run is reproducible when it is 0).
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass

_HDR = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int  # -1: no answer (timed out after every try)
    addresses: tuple[str, ...]
    ttl: int
    scope: int  # ECS scope prefix of the answer (0 when the answer had no ECS)


TIMEOUT = Answer(-1, (), 0, 0)


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        b = label.encode("ascii")
        if not 0 < len(b) < 64:
            raise ValueError(f"bad DNS name {name!r}")
        out.append(len(b))
        out += b
    out.append(0)
    return bytes(out)


def _skip_name(msg: bytes, off: int) -> int:
    n = len(msg)
    while off < n:
        ln = msg[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            return off + 2
        off += ln + 1
    raise ValueError("truncated name")


def parse_answer(msg: bytes, qtype: int = 1) -> tuple[int, int, Answer]:
    """(id, question end offset, Answer) of one response; raises ValueError on bad bytes."""
    if len(msg) < 12:
        raise ValueError("short message")
    qid, flags, qd, an, ns, ar = _HDR.unpack_from(msg, 0)
    if not flags & 0x8000:
        raise ValueError("not a response")
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    qend = off
    addrs = []
    ttl = None
    for _ in range(an):
        off = _skip_name(msg, off)
        t, _cls, rttl, rdlen = _RR.unpack_from(msg, off)
        off += 10
        if t == qtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[off:off + 4]))
            ttl = rttl if ttl is None else min(ttl, rttl)
        off += rdlen
    for _ in range(ns):
        off = _skip_name(msg, off)
        _t, _c, _ttl, rdlen = _RR.unpack_from(msg, off)
        off += 10 + rdlen
    scope = 0
    rcode = flags & 0xF
    for _ in range(ar):
        off = _skip_name(msg, off)
        t, _c, rttl, rdlen = _RR.unpack_from(msg, off)
        off += 10
        if t == 41:
            rcode |= (rttl >> 24) << 4
            o, end = off, off + rdlen
            while o + 4 <= end:
                code, olen = struct.unpack_from("!HH", msg, o)
                if code == 8 and olen >= 4:
                    scope = msg[o + 7]
                o += 4 + olen
        off += rdlen
    if off > len(msg):
        raise ValueError("truncated message")
    return qid, qend, Answer(rcode, tuple(addrs), ttl or 0, scope)


class Batch:
    """A UDP client for one server address that answers lists of (name, subnet) queries."""

    def __init__(self, server: tuple[str, int], source_prefix: int = 24, window: int = 256,
                 timeout: float = 1.0, tries: int = 4):
        self.server = server
        self.source_prefix = source_prefix
        self.window = window
        self.timeout = timeout
        self.tries = tries
        fam = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        self.sock.connect(server)
        self.sock.setblocking(False)
        self._names: dict[str, bytes] = {}
        self._next_id = 1
        self.sent = 0
        self.retransmits = 0
        self.timeouts = 0
        self.seconds = 0.0

    def close(self) -> None:
        self.sock.close()

    def _question(self, name: str) -> bytes:
        q = self._names.get(name)
        if q is None:
            q = self._names[name] = encode_name(name) + b"\x00\x01\x00\x01"
        return q

    def _ecs(self, subnet: int) -> bytes:
        sp = self.source_prefix
        nbytes = (sp + 7) // 8
        addr = (subnet & (0xFFFFFFFF << (32 - sp)) & 0xFFFFFFFF).to_bytes(4, "big")[:nbytes]
        opt = struct.pack("!HBB", 1, sp, 0) + addr
        return b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00" + struct.pack("!HHH", 4 + len(opt), 8, len(opt)) + opt

    def resolve(self, items: list[tuple[str, int]]) -> list[Answer]:
        """Answer every (name, IPv4 subnet as int) of ``items``, in order."""
        t0 = time.perf_counter()
        n = len(items)
        out: list[Answer | None] = [None] * n
        if not n:
            return []
        packets: list[bytes] = []
        questions: list[bytes] = []
        for name, subnet in items:
            q = self._question(name)
            questions.append(q)
            packets.append(q + self._ecs(subnet))
        pending: dict[int, tuple[int, float, int]] = {}  # id -> (index, deadline, tries)
        nxt = 0
        done = 0
        sock = self.sock
        retry: list[int] = []
        while done < n:
            while len(pending) < self.window and (retry or nxt < n):
                if retry:
                    i, tries = retry.pop(0)
                    self.retransmits += 1
                else:
                    i, tries = nxt, 0
                    nxt += 1
                qid = self._next_id
                self._next_id = (qid % 65535) + 1
                if qid in pending:  # a 65535-query window would be needed for this; be safe
                    continue
                msg = _HDR.pack(qid, 0, 1, 0, 0, 1) + packets[i]
                try:
                    sock.send(msg)
                except BlockingIOError:
                    select.select([], [sock], [], 0.05)
                    retry.insert(0, (i, tries))
                    self.retransmits -= 1
                    continue
                self.sent += 1
                pending[qid] = (i, time.monotonic() + self.timeout, tries + 1)
            if not pending:
                continue
            r, _, _ = select.select([sock], [], [], 0.05)
            if r:
                while True:
                    try:
                        data = sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionRefusedError:
                        break
                    try:
                        qid, qend, ans = parse_answer(data)
                    except (ValueError, struct.error, IndexError):
                        continue
                    p = pending.get(qid)
                    if p is None:
                        continue
                    i = p[0]
                    if data[12:qend].lower() != questions[i].lower():
                        continue
                    del pending[qid]
                    if out[i] is None:
                        out[i] = ans
                        done += 1
            now = time.monotonic()
            for qid, (i, deadline, tries) in list(pending.items()):
                if deadline <= now:
                    del pending[qid]
                    if tries >= self.tries:
                        out[i] = TIMEOUT
                        self.timeouts += 1
                        done += 1
                    else:
                        retry.append((i, tries))
        self.seconds += time.perf_counter() - t0
        return out  # type: ignore[return-value]
