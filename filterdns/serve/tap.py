"""What the server answered, written aside: the query log (``--query-log``) and dnstap
(``--dnstap``). Off by default; when both are off the query path pays one attribute check
(``Responder.tap is None``).

The responder calls ``Tap.__call__`` once per answered query, after rendering, with the query,
its source, the bytes in and out and the rcode. What the log says is read from the response
that was sent (the addresses, the ECS scope), so it shows what the client got; the region is
the one whose service has the answered address (a look-up in the config, built once per
generation). Queries that got no normal answer (dropped, FORMERR) are not logged here: the
``filterdns_malformed_total`` metric counts them.

Writing never blocks the query path: entries go to a bounded in-memory queue and a thread
writes them out; when the disk (or the dnstap reader) is slower than the queries, new entries
are dropped and counted (``filterdns_tap_dropped_total{sink}``), never waited for.

Query log (``--query-log PATH|-``, ``-`` = stdout; ``--query-log-sample P``, default 0.01):
one JSON object per line::

    {"time": "2026-12-02T06:48:11.123456Z", "client": "192.0.2.1", "port": 53123,
     "transport": "udp", "ecs": "81.2.69.0/24", "name": "wss-primary.example.com.",
     "type": "A", "rcode": "NOERROR", "region": ["eu-west-2"], "scope": 24,
     "addresses": ["192.0.2.10"], "latency_ms": 0.041, "size": 89}

``ecs`` and ``scope`` are null without ECS; ``region`` is empty for a static answer.

dnstap (``--dnstap PATH``): an ``AUTH_QUERY`` and an ``AUTH_RESPONSE`` message per query
(``filterdns/dns/dnstap.py``), to a Frame Streams file, or to a Unix socket (``unix:PATH``, or a
PATH that is a socket) of a dnstap collector. With several workers each writes ``PATH.N``
(worker N) for a file (a Frame Streams file has one writer); each connects for a socket.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import socket
import stat
import struct
import threading
import time

from filterdns.dns import dnstap, identity, wire

log = logging.getLogger("filterdns.tap")

#: entries waiting per sink; beyond, new ones are dropped and counted (FILTERDNS_TEST_TAP_QUEUE
#: sets a smaller one, for the tests of a slow sink)
QUEUE_MAX = int(os.environ.get("FILTERDNS_TEST_TAP_QUEUE") or 10_000)
RETRY_SECONDS = 2.0  # a dnstap collector's socket is tried again this often
_perf = time.perf_counter
_HDR = struct.Struct("!6H")
_RR = struct.Struct("!HHIH")
OPT, A, AAAA = 41, 1, 28


class Sink:
    """A bounded queue drained by one thread into a file or socket. ``put`` never blocks."""

    def __init__(self, name: str, opener, metrics, header: bytes = b"", footer: bytes = b"",
                 capacity: int = QUEUE_MAX, retry: bool = False):
        self.name = name
        self._open = opener  # () -> object with write(bytes), flush(), close(); may block
        self._metrics = metrics
        self._header = header
        self._footer = footer
        self.capacity = capacity
        self.retry = retry  # reopen after an error (a collector's socket), else give up
        self._q: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"filterdns-{name}", daemon=True)
        self._thread.start()

    def put(self, item: bytes) -> None:
        q = self._q
        if len(q) >= self.capacity:
            self.dropped += 1
            self._metrics.tap_dropped(self.name)
            return
        q.append(item)
        if len(q) == 1:
            self._wake.set()

    def _run(self) -> None:
        self._lost = False
        while True:
            try:
                self._serve()
                return
            except Exception as e:  # noqa: BLE001 - the sink is lost; the server keeps answering
                if not self.retry or self._closing:
                    log.error("%s: %s: writing stopped; further entries are dropped", self.name, e)
                    self.capacity = 0
                    return
                if not self._lost:  # a collector that went away: dropped until it is back
                    log.error("%s: %s; trying again every %.0f s, dropping entries meanwhile",
                              self.name, e, RETRY_SECONDS)
                    self._lost = True
                stale = len(self._q)
                self._q.clear()
                if stale:
                    self.dropped += stale
                    self._metrics.tap_dropped(self.name, stale)
                deadline = time.monotonic() + RETRY_SECONDS
                while not self._closing and time.monotonic() < deadline:
                    time.sleep(0.1)
                if self._closing:
                    return

    def _serve(self) -> None:
        out = self._open()
        if self._lost:
            log.info("%s: connected again", self.name)
            self._lost = False
        try:
            if self._header:
                out.write(self._header)
                out.flush()
            q = self._q
            while True:
                self._wake.wait(0.5)
                self._wake.clear()
                batch = []
                while q:
                    batch.append(q.popleft())
                if batch:
                    out.write(b"".join(batch))
                    out.flush()
                    self.written += len(batch)
                    self._metrics.tap_written(self.name, len(batch))
                elif self._closing:
                    break
            if self._footer:
                out.write(self._footer)
                out.flush()
        finally:
            try:
                out.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self, timeout: float = 2.0) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)


class _FdOut:
    """A file descriptor written with os.write (stdout, or a file opened O_APPEND)."""

    def __init__(self, fd: int, owned: bool):
        self.fd, self.owned = fd, owned

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.owned:
            os.close(self.fd)


def _append(path: str):
    def opener():
        if path == "-":
            return _FdOut(1, owned=False)
        # O_APPEND: the workers' lines interleave whole (each batch is one write)
        return _FdOut(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640), owned=True)
    return opener


class _FstrmSocket:
    """A Frame Streams writer on a Unix socket: READY -> ACCEPT, START ... STOP -> FINISH."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.sock.sendall(dnstap.control_frame(dnstap.READY))
        ctype, types = dnstap.read_control(self._read_frame())
        if ctype != dnstap.ACCEPT or (types and dnstap.CONTENT_TYPE not in types):
            raise OSError(f"dnstap reader at {path} did not accept {dnstap.CONTENT_TYPE.decode()}")
        self.sock.sendall(dnstap.control_frame(dnstap.START))
        self.sock.settimeout(None)

    def _read_frame(self) -> bytes:
        head = self._recv(8)
        return head + self._recv(struct.unpack("!I", head[4:])[0])

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("dnstap reader closed the connection")
            buf += chunk
        return buf

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.sock.settimeout(2)
            self.sock.sendall(dnstap.control_frame(dnstap.STOP, None))
            self._read_frame()  # FINISH
        except OSError:
            pass
        self.sock.close()


def dnstap_target(path: str, worker: int | None) -> tuple[str, str]:
    """("socket" | "file", path) for ``--dnstap PATH`` in this process."""
    if path.startswith("unix:"):
        return "socket", path[5:]
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            return "socket", path
    except OSError:
        pass
    return "file", path if worker is None else f"{path}.{worker}"


class Tap:
    """The responder's one hook: sample into the query log, and copy to dnstap."""

    def __init__(self, holder, metrics, query_log: str | None = None, sample: float = 0.01,
                 dnstap_path: str | None = None, listen=(), worker: int | None = None,
                 version: str = ""):
        self.holder = holder
        self.sample = sample
        self._random = random.Random().random
        self.query_log = Sink("query_log", _append(query_log), metrics) if query_log else None
        self.dnstap = None
        if dnstap_path:
            kind, target = dnstap_target(dnstap_path, worker)
            if kind == "socket":
                opener = lambda: _FstrmSocket(target)  # noqa: E731
                header = footer = b""
            else:
                opener = lambda: open(target, "wb")  # noqa: E731
                header, footer = dnstap.control_frame(dnstap.START), dnstap.control_frame(dnstap.STOP, None)
            self.dnstap = Sink("dnstap", opener, metrics, header=header, footer=footer,
                               retry=kind == "socket")
        self._local = {4: ("0.0.0.0", 0), 6: ("::", 0)}
        for host, port in listen:  # the response address: the first listener of the family
            fam = 6 if ":" in host else 4
            if self._local[fam][1] == 0:
                self._local[fam] = (host, port)
        self._version = version.encode()
        self._head: bytes | None = None
        self._head_id = b""
        self._regions_gen = -1
        self._regions: dict[bytes, str] = {}

    @property
    def enabled(self) -> bool:
        return self.query_log is not None or self.dnstap is not None

    def __call__(self, q, src, transport: str, data: bytes, msg: bytes, rcode: int, t0: float) -> None:
        try:
            now = time.time()
            latency = _perf() - t0
            if self.query_log is not None and (self.sample >= 1.0 or self._random() < self.sample):
                self.query_log.put(self._line(q, src, transport, msg, rcode, now, latency))
            if self.dnstap is not None:
                self._tap(q, src, transport, data, msg, now - latency, now)
        except Exception:  # noqa: BLE001 - logging a query must never fail answering it
            log.exception("query log entry failed")

    # ---------------------------------------------------------------- query log
    def _region_of(self) -> dict[bytes, str]:
        state = self.holder.state
        if state.generation != self._regions_gen:
            out = {}
            for rname, region in (getattr(state, "regions", None) or {}).items():
                for svc in region.services.values():
                    for a in svc.v4:
                        out[socket.inet_pton(socket.AF_INET, a)] = rname
                    for a in svc.v6:
                        out[socket.inet_pton(socket.AF_INET6, a)] = rname
            self._regions, self._regions_gen = out, state.generation
        return self._regions

    def _line(self, q, src, transport, msg, rcode, now, latency) -> bytes:
        addrs, scope = _read_response(msg, len(q.question))
        regions = self._region_of()
        region = []
        for a in addrs:
            r = regions.get(a)
            if r is not None and r not in region:
                region.append(r)
        e = q.ecs
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}Z",
            "client": src[0] if src else None, "port": src[1] if src else None, "transport": transport,
            "ecs": f"{e.address}/{e.source}" if e is not None else None,
            "name": wire.name_to_text(q.qname), "type": _type_text(q.qtype), "rcode": _rcode_text(rcode),
            "region": region, "scope": scope if e is not None else None,
            "addresses": [socket.inet_ntop(socket.AF_INET if len(a) == 4 else socket.AF_INET6, a) for a in addrs],
            "latency_ms": round(latency * 1000, 3), "size": len(msg),
        }
        return json.dumps(entry, separators=(",", ":")).encode() + b"\n"

    # ---------------------------------------------------------------- dnstap
    def _tap(self, q, src, transport, data, msg, qtime, rtime) -> None:
        host = src[0] if src else "0.0.0.0"
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        v6 = ":" in host
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        lhost, lport = self._local[6 if v6 else 4]
        try:
            qaddr, raddr = socket.inet_pton(fam, host), socket.inet_pton(fam, lhost)
        except OSError:
            return
        pf = dnstap.peer(dnstap.INET6 if v6 else dnstap.INET, dnstap.TCP if transport == "tcp" else dnstap.UDP,
                         qaddr, src[1] if src else 0, raddr, lport)
        head = self._head
        if head is None or identity.SERVER_ID != self._head_id:
            self._head_id = identity.SERVER_ID
            head = self._head = dnstap.header(identity.SERVER_ID, self._version)
        put = self.dnstap.put
        put(dnstap.frame(head, dnstap.message(dnstap.AUTH_QUERY, pf, qtime, query_message=data)))
        put(dnstap.frame(head, dnstap.message(dnstap.AUTH_RESPONSE, pf, qtime, response_time=rtime,
                                              response_message=msg)))

    def close(self) -> None:
        for s in (self.query_log, self.dnstap):
            if s is not None:
                s.close()


def _read_response(msg: bytes, qlen: int) -> tuple[list[bytes], int]:
    """(A/AAAA rdata of the answer section, ECS scope of our OPT or 0) of a response we made."""
    _, _, qd, an, ns, ar = _HDR.unpack_from(msg)
    off = 12 + (qlen if qd else 0)
    end = len(msg)
    addrs, scope = [], 0
    for i in range(an + ns + ar):
        _, off = wire._read_name(msg, off, end)
        rtype, _, _, rdlen = _RR.unpack_from(msg, off)
        off += 10
        if i < an and rtype in (A, AAAA):
            addrs.append(msg[off:off + rdlen])
        elif rtype == OPT:
            o, oend = off, off + rdlen
            while o + 4 <= oend:
                code, olen = struct.unpack_from("!HH", msg, o)
                if code == wire.EDNS_ECS and olen >= 4:
                    scope = msg[o + 7]
                o += 4 + olen
        off += rdlen
    return addrs, scope


_TYPES: dict[int, str] = {}


def _type_text(t: int) -> str:
    s = _TYPES.get(t)
    if s is None:
        import dns.rdatatype
        s = _TYPES[t] = dns.rdatatype.to_text(t)
    return s


def _rcode_text(r: int) -> str:
    import dns.rcode
    try:
        return dns.rcode.to_text(r)
    except Exception:  # noqa: BLE001
        return str(r)


def options(opts) -> dict | None:
    """The tap settings of ``ServeOptions`` as plain data (handed to workers); None when off."""
    if not (opts.query_log or opts.dnstap):
        return None
    return {"query_log": opts.query_log, "sample": opts.query_log_sample, "dnstap": opts.dnstap,
            "listen": list(opts.listen)}


def build(holder, metrics, settings: dict | None, worker: int | None = None) -> Tap | None:
    """The tap of this process from ``options(...)`` (None when both outputs are off)."""
    if not settings:
        return None
    from filterdns import __version__
    return Tap(holder, metrics, query_log=settings["query_log"], sample=settings["sample"],
               dnstap_path=settings["dnstap"], listen=settings["listen"], worker=worker,
               version=f"filterdns {__version__}")
