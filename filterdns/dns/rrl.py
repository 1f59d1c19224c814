"""Response rate limiting (RRL) for UDP, as BIND and Knot DNS do it.

An authoritative server answers anyone, so a spoofed-source flood turns it into an amplifier
(a 29-byte query here gets a 153-byte answer). RRL counts the responses going to each client
*prefix* (IPv4 /24, IPv6 /56: one attacker usually spoofs one victim's addresses, and one
site's resolvers share a prefix) and *answer class*, and once a bucket goes over its rate it
stops answering it - except every ``slip``-th limited response, which goes out truncated
(TC=1, no records) so that a real resolver behind that prefix retries over TCP, where a
spoofed source cannot follow. TCP is never limited.

Buckets are keyed (prefix, class, name), the name being the query's name and type for
positive answers and NODATA (so one popular name cannot starve the rest), and nothing for
NXDOMAIN, referrals and errors (so random names do not make new buckets). Classes::

    response   NOERROR with answer records (also a truncated big answer)
    nodata     NOERROR, AA, no answer records
    nxdomain   NXDOMAIN
    referral   NOERROR, not authoritative, authority records only (a delegation)
    error      every other rcode (REFUSED, FORMERR, SERVFAIL, NOTIMP, BADVERS, ...)

Each bucket earns ``rate`` credits per second, holds at most one second's worth (the burst)
and may go ``window`` seconds' worth into debt: a source that keeps flooding stays limited
until it has been below its rate for up to ``window`` seconds (BIND's accounting window).

**One table for the whole server.** The buckets live in a fixed table of 32-byte slots in
shared memory (``RrlTable``, as Knot DNS's shared RRL table): the supervisor creates it once
and every worker maps the same memory file, so ``--workers N`` still lets a prefix through at
its rate, not N times it (the kernel gives one source's datagrams to whichever worker is
waiting). A key's slot is found by a stable hash (the same in every process) among the 8
slots of its group; when they are all taken, the group's least recently used is taken over.
The workers update slots without a lock (whole 8-byte words, never a torn key): two workers
charging the same bucket at the same instant may lose one of the two updates, letting one
response through that a lock would have stopped - an error of a response per collision,
against two system calls per response for a lock.

Options (``filterdns serve --rrl-*``; defaults in brackets)::

    rate         responses per second per bucket; 0 turns RRL off                       [0]
    class rates  nxdomain / nodata / referral / error rates (--rrl-class-rate CLASS=N)   [rate]
    slip         send every Nth limited response truncated; 0 never, 1 always           [2]
    window       seconds of debt a bucket may build up                                   [15]
    ipv4-prefix  IPv4 prefix length that makes one client                                [24]
    ipv6-prefix  IPv6 prefix length that makes one client                                [56]
    exempt       CIDR prefixes never limited (repeatable)                                [none]
    log-only     count and log what would be limited, but send every response            [off]
    table-size   buckets kept, for the whole server (least recently used taken over)     [100000]

Metrics: ``filterdns_rrl_responses_total{class,action}`` with action ``passed``, ``dropped``,
``slipped``, ``logged`` (log-only: would have been limited) or ``exempt``;
``filterdns_rrl_buckets`` (gauge: slots in use in the server's table) and
``filterdns_rrl_evictions_total``. A bucket that starts
being limited is logged once (at most 10 such lines a second).
"""

from __future__ import annotations

import ipaddress
import logging
import mmap
import os
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field

log = logging.getLogger("filterdns.rrl")

CLASSES = ("response", "nodata", "nxdomain", "referral", "error")
_HDR = struct.Struct("!6H")
_RRFIX = struct.Struct("!HHIH")
_AA, _TC = 0x0400, 0x0200
_PREFIX_CACHE_MAX = 65536
_CLASS_BYTE = {c: bytes([i]) for i, c in enumerate(CLASSES)}


@dataclass(frozen=True)
class RrlConfig:
    rate: float = 0.0
    class_rates: dict = field(default_factory=dict)  # class -> rate (others: ``rate``)
    slip: int = 2
    window: float = 15.0
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    exempt: tuple = ()  # CIDR strings
    log_only: bool = False
    table_size: int = 100_000

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or any(v > 0 for v in self.class_rates.values())

    def rate_of(self, cls: str) -> float:
        return float(self.class_rates.get(cls, self.rate))

    def to_dict(self) -> dict:
        """Plain values (passed to worker processes)."""
        return {"rate": self.rate, "class_rates": dict(self.class_rates), "slip": self.slip,
                "window": self.window, "ipv4_prefix": self.ipv4_prefix,
                "ipv6_prefix": self.ipv6_prefix, "exempt": list(self.exempt),
                "log_only": self.log_only, "table_size": self.table_size}

    @classmethod
    def build(cls, rate=0.0, class_rates=None, slip=2, window=15.0, ipv4_prefix=24,
              ipv6_prefix=56, exempt=(), log_only=False, table_size=100_000) -> "RrlConfig":
        """Validated options; ValueError naming the option and the bad value."""
        problems = []
        rates = {}
        if not (0 <= rate <= 1_000_000):
            problems.append(f"--rrl-rate must be between 0 and 1000000, got {rate}")
        for item in class_rates or ():
            if isinstance(class_rates, dict):
                name, value = item, class_rates[item]
            else:
                name, sep, value = str(item).partition("=")
                if not sep:
                    problems.append(f"--rrl-class-rate expects CLASS=N, got {item!r}")
                    continue
            if name not in CLASSES:
                problems.append(f"--rrl-class-rate: unknown class {name!r} (one of {', '.join(CLASSES)})")
                continue
            try:
                v = float(value)
            except ValueError:
                v = -1.0
            if not 0 <= v <= 1_000_000:
                problems.append(f"--rrl-class-rate {name}: rate must be a number 0-1000000, got {value!r}")
                continue
            rates[name] = v
        if not (isinstance(slip, int) and 0 <= slip <= 10):
            problems.append(f"--rrl-slip must be an integer 0-10, got {slip}")
        if not (1 <= window <= 3600):
            problems.append(f"--rrl-window must be 1-3600 seconds, got {window}")
        if not (8 <= ipv4_prefix <= 32):
            problems.append(f"--rrl-ipv4-prefix must be 8-32, got {ipv4_prefix}")
        if not (16 <= ipv6_prefix <= 128):
            problems.append(f"--rrl-ipv6-prefix must be 16-128, got {ipv6_prefix}")
        nets = []
        for text in exempt or ():
            try:
                nets.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                problems.append(f"--rrl-exempt: {text!r} is not an IP prefix (e.g. 192.0.2.0/24)")
        if not (1000 <= table_size <= 10_000_000):
            problems.append(f"--rrl-table-size must be 1000-10000000, got {table_size}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(float(rate), rates, slip, float(window), ipv4_prefix, ipv6_prefix,
                   tuple(nets), bool(log_only), table_size)

    @classmethod
    def from_dict(cls, d: dict) -> "RrlConfig":
        return cls.build(**d)


def classify(msg: bytes) -> str:
    """The answer class of a rendered response (header only)."""
    flags, an, ns = msg[2] << 8 | msg[3], msg[6] << 8 | msg[7], msg[8] << 8 | msg[9]
    rcode = flags & 0xF
    if rcode == 0:
        if an:
            return "response"
        if ns and not flags & _AA:
            return "referral"
        return "nodata"
    if rcode == 3:
        return "nxdomain"
    return "error"


def _question_end(msg: bytes) -> int:
    """Offset after the question of one of our responses (its name is never compressed)."""
    if msg[4] << 8 | msg[5] == 0:
        return 12
    off = 12
    n = msg[off]
    while n:
        off += n + 1
        n = msg[off]
    return off + 5


def _skip_name(msg: bytes, off: int) -> int:
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n >= 0xC0:
            return off + 2
        off += n + 1


def slipped(msg: bytes) -> bytes:
    """The truncated form of a response: header with TC, the question, and the OPT record (with
    its ECS echo) if it had one; no other records."""
    qid, flags, qd, an, ns, ar = _HDR.unpack_from(msg)
    qend = _question_end(msg)
    opt = b""
    if ar:
        off = qend
        for _ in range(an + ns + ar):
            start = off
            off = _skip_name(msg, off)
            rtype, _c, _t, rdlen = _RRFIX.unpack_from(msg, off)
            off += 10 + rdlen
            if rtype == 41:
                opt = msg[start:off]
    return _HDR.pack(qid, flags | _TC, qd, 0, 0, 1 if opt else 0) + msg[12:qend] + opt


class RrlTable:
    """The bucket table: groups of ``WAYS`` slots after a 16-byte header (slots in use), in
    memory that every worker maps. A slot is four 8-byte words: key hash, credit, last time
    (``time.monotonic()``, the same clock in every process of the host), and the limited
    count (32 bits) beside the logged flag (32 bits).

    A key lives in the group its hash names: in its own slot, else a free one, else the
    group's least recently used slot is taken over. ``RrlTable.create(n)`` makes a shared table
    (a memory file; pass ``fd`` to the workers, which call ``RrlTable.attach(fd, n)``);
    ``RrlTable(n)`` a private one for one process.

    No lock: every word is read and written whole (an aligned 8-byte load or store, which no
    other process sees half done), so a reader never sees a torn key; what two workers
    charging one bucket at the same instant can lose is one of their two updates, which lets
    at most one extra response through per such collision. A lock per group (a POSIX record
    lock) would cost two system calls per response, several microseconds."""

    WAYS = 8
    _HEAD = 2  # words of header

    def __init__(self, slots: int, fd: int | None = None):
        self.groups = max(1, -(-slots // self.WAYS))
        self.slots = self.groups * self.WAYS
        self.fd = fd
        self.mem = mmap.mmap(-1 if fd is None else fd, self.size_of(slots))
        self.q = memoryview(self.mem).cast("Q")  # key words, the header
        self.d = memoryview(self.mem).cast("d")  # credit and last-time words
        self.i = memoryview(self.mem).cast("I")  # limited count, logged flag

    @classmethod
    def size_of(cls, slots: int) -> int:
        return 8 * (cls._HEAD + 4 * max(1, -(-slots // cls.WAYS)) * cls.WAYS)

    @classmethod
    def create(cls, slots: int) -> "RrlTable":
        fd = os.memfd_create("filterdns-rrl", os.MFD_CLOEXEC)
        os.ftruncate(fd, cls.size_of(slots))
        return cls(slots, fd)

    @classmethod
    def attach(cls, fd: int, slots: int) -> "RrlTable":
        return cls(slots, fd)

    def close(self) -> None:
        for v in (self.q, self.d, self.i):
            v.release()
        self.mem.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def used(self) -> int:
        return self.q[0]

    def charge(self, h: int, rate: float, floor: float, now: float) -> tuple[float, int, int, int]:
        """Take one response from the bucket of key hash ``h`` (never 0): (credit left,
        responses limited in a row, logged flag before, 0 / 1 new bucket / 2 new by eviction).
        Earns ``rate`` per second up to ``rate``, owes down to ``floor``."""
        q, d, iv = self.q, self.d, self.i
        w, new = self._find(h)
        if new:
            q[w] = h
            d[w + 1] = rate - 1.0
            d[w + 2] = now
            iv[2 * w + 6] = iv[2 * w + 7] = 0
            return rate - 1.0, 0, 0, new
        credit, last = d[w + 1], d[w + 2]
        if now > last:
            credit += (now - last) * rate
            if credit > rate:
                credit = rate
            d[w + 2] = now
        credit -= 1.0
        if credit < floor:
            credit = floor
        d[w + 1] = credit
        logged = iv[2 * w + 7]
        if credit >= 0:  # within the rate (again): the next episode is logged anew
            if logged:
                iv[2 * w + 6] = iv[2 * w + 7] = 0
            return credit, 0, logged, 0
        limited = iv[2 * w + 6] + 1
        iv[2 * w + 6] = limited
        if not logged:
            iv[2 * w + 7] = 1
        return credit, limited, logged, 0

    def _find(self, h: int) -> tuple[int, int]:
        """(first word of the slot, 0 / 1 free slot taken / 2 least recently used taken over)."""
        q, d = self.q, self.d
        w = first = self._HEAD + (h % self.groups) * self.WAYS * 4
        if q[w] == h:  # most often: the first slot of its group
            return w, 0
        oldest, oldest_t = first, None
        for _ in range(self.WAYS):
            key = q[w]
            if key == h:
                return w, 0
            if key == 0:
                q[0] += 1  # slots in use: a count to show, not exact
                return w, 1
            if oldest_t is None or d[w + 2] < oldest_t:
                oldest, oldest_t = w, d[w + 2]
            w += 4
        return oldest, 2


def _hash(key: bytes) -> int:
    """A 64-bit hash of a bucket key, the same in every process (unlike ``hash``), never 0.
    (CRC-32 and Adler-32 side by side: a third of a cryptographic hash's cost on the hot path;
    a collision only makes two keys share a bucket, and an attacker who spoofs a victim's
    prefix shares its buckets anyway.)"""
    return (zlib.crc32(key) << 32 | zlib.adler32(key)) or 1


class _NoMetrics:
    def rrl(self, cls, action):
        pass

    def rrl_buckets(self, n):
        pass

    def rrl_eviction(self):
        pass


class Rrl:
    """Decides, per UDP response, whether it is sent, dropped or sent truncated.

    ``limit(msg, src)`` returns the bytes to send or None. Never raises for a response the
    responder made; cheap on the common path (one prefix cache look-up, one hash, one slot
    read and write). ``table``: the server's shared ``RrlTable`` (workers), or None for a
    private one of ``table_size`` slots (one process).
    """

    def __init__(self, config: RrlConfig, metrics=None, clock=time.monotonic, table: RrlTable | None = None):
        self.cfg = config
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.clock = clock
        self.rates = {c: config.rate_of(c) for c in CLASSES}
        self.table = table if table is not None else RrlTable(config.table_size)
        self.evictions = 0
        self._prefixes: dict = {}  # source address text -> (prefix key, text, exempt)
        self._exempt = [ipaddress.ip_network(n) for n in config.exempt]
        self._log_budget = [0.0, 0]  # second, lines logged in it

    # ------------------------------------------------------------------ the hot path
    def limit(self, msg: bytes, src) -> bytes | None:
        host = src[0] if src else "0.0.0.0"
        p = self._prefixes.get(host)
        if p is None:
            p = self._prefix(host)
        cls = classify(msg)
        m = self.metrics
        if p[2]:
            m.rrl(cls, "exempt")
            return msg
        rate = self.rates[cls]
        if rate <= 0:
            return msg
        if cls == "response" or cls == "nodata":
            qname = msg[12:_question_end(msg)].lower()
            key = p[0] + _CLASS_BYTE[cls] + qname
        else:
            qname = b""
            key = p[0] + _CLASS_BYTE[cls]
        h = _hash(key)
        credit, limited, logged, new = self.table.charge(h, rate, -self.cfg.window * rate, self.clock())
        if new:
            if new == 2:
                self.evictions += 1
                m.rrl_eviction()
            m.rrl_buckets(self.table.used())
        if credit >= 0:
            m.rrl(cls, "passed")
            return msg
        if not logged:
            self._log(p[1], cls, qname, rate)
        if self.cfg.log_only:
            m.rrl(cls, "logged")
            return msg
        slip = self.cfg.slip
        if slip and limited % slip == 0:
            m.rrl(cls, "slipped")
            return slipped(msg)
        m.rrl(cls, "dropped")
        return None

    # ------------------------------------------------------------------ helpers
    def _prefix(self, host: str):
        """(bucket key, prefix text, exempt) for a source address, cached (bounded)."""
        if host.startswith("::ffff:") and "." in host:
            host4 = host[7:]
        else:
            host4 = host
        try:
            if ":" in host4:
                raw = socket.inet_pton(socket.AF_INET6, host4)
                bits = self.cfg.ipv6_prefix
                fam = 6
            else:
                raw = socket.inet_pton(socket.AF_INET, host4)
                bits = self.cfg.ipv4_prefix
                fam = 4
        except OSError:
            raw, bits, fam = b"\x00" * 4, 0, 4
        n = int.from_bytes(raw, "big")
        width = len(raw) * 8
        n &= ((1 << width) - 1) ^ ((1 << (width - bits)) - 1)
        net = ipaddress.ip_network((n, bits)) if fam == 4 else ipaddress.IPv6Network((n, bits))
        addr = ipaddress.ip_address(raw)
        exempt = any(addr in e for e in self._exempt if e.version == addr.version)
        p = (bytes([fam]) + n.to_bytes(16, "big"), str(net), exempt)
        if len(self._prefixes) >= _PREFIX_CACHE_MAX:
            self._prefixes.clear()
        self._prefixes[host] = p
        return p

    def _log(self, prefix: str, cls: str, qname: bytes, rate: float) -> None:
        now = self.clock()
        second = int(now)
        if self._log_budget[0] != second:
            self._log_budget[:] = [second, 0]
        if self._log_budget[1] >= 10:
            return
        self._log_budget[1] += 1
        what = ""
        if qname:  # the question: name, type, class
            from filterdns.dns.wire import name_to_text

            qtype = qname[-4] << 8 | qname[-3]
            what = f" for {name_to_text(qname[:-4])} type {qtype}"
        log.warning("rrl: %s responses to %s%s over %g/s: %s", cls, prefix, what, rate,
                    "logging only (--rrl-log-only)" if self.cfg.log_only
                    else f"limiting (1 in {self.cfg.slip} sent truncated)" if self.cfg.slip
                    else "limiting (dropped)")

    def buckets(self) -> int:
        return self.table.used()
