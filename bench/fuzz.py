#!/usr/bin/env python3
"""Fuzz a real server over UDP and TCP and count what went wrong.

    python3 bench/fuzz.py [--udp 1000000] [--tcp 20000] [--workers 2] [--max-seconds 1800]
                          [--seed 1] [--json]

Starts ``filterdns serve`` from this checkout on a free loopback port, on the static test
zones (tests/fixtures/zones, no dynamic records, so every answer is deterministic), fires
``--udp`` fuzzed datagrams and ``--tcp`` fuzzed connections (1-4 framed messages each, some
with broken framing) at it, checks every reply, and prints::

    crashes                 worker or server exits, tracebacks in the server log, failed probes
    unparseable replies     replies dnspython (strict: no trailing octets) cannot parse
    answers to malformed    replies to queries dnspython rejects that are not FORMERR (or NOTIMP
                            for another opcode), or carry records
    wrong answers           replies whose id/question do not match the query, replies to
                            packets that must be dropped, and answers to well-formed queries
                            that differ (rcode, AA, TC, answer and authority records) from the
                            answer to the same query re-encoded cleanly (an in-process
                            Responder on the same zones is the reference)
    lost                    a reply was due but none came (UDP loss shows up here)

plus informational counts (sent, dropped as expected, FORMERR to well-formed queries). Time
bounded: stops after --max-seconds and says how much it sent. Exit status 1 when any of the
first four counts is not zero. tests/test_fuzz_counts.py runs a small sample in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.tsig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterdns.serve.address import free_port  # noqa: E402 - after the path is set

ZONES = ROOT / "tests" / "fixtures" / "zones"
NAMES = ["test.example.", "www.test.example.", "nope.test.example.", "x.wild.test.example.",
         "big.test.example.", "www.sub.test.example.", "sub.test.example.", "example.org.", "."]
TYPES = ["A", "AAAA", "SOA", "NS", "TXT", "MX", "ANY", "CNAME", "SRV", "DS", "AXFR", "CAA"]


# ------------------------------------------------------------------------------ packets

def seeds(rng: random.Random) -> list[bytes]:
    out = []
    key = dns.tsig.Key("k.example.", "c2VjcmV0c2VjcmV0c2VjcmV0", "hmac-sha256")
    for name in NAMES:
        for t in TYPES:
            out.append(dns.message.make_query(name, t).to_wire())
            out.append(dns.message.make_query(name, t, use_edns=0, want_dnssec=rng.random() < 0.5,
                                              payload=rng.choice([512, 1232, 4096])).to_wire())
        out.append(dns.message.make_query(name, "A", use_edns=0, options=[
            dns.edns.ECSOption("81.2.69.0", 24)]).to_wire())
        out.append(dns.message.make_query(name, "AAAA", use_edns=0, options=[
            dns.edns.ECSOption("2a02:8010::", 56), dns.edns.CookieOption(b"c" * 8, b"")]).to_wire())
        out.append(dns.message.make_query(name, "TXT", use_edns=0, options=[
            dns.edns.GenericOption(3, b""), dns.edns.GenericOption(12, b"\x00" * 8)]).to_wire())
        q = dns.message.make_query(name, "SOA", use_edns=0)
        q.use_tsig(key)
        out.append(q.to_wire())
        q = dns.message.make_query(name, "A", use_edns=0)
        q.additional.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
        out.append(q.to_wire())
    return out


def opt(version=0, options=b"", owner=b"\x00", payload=1232):
    return owner + struct.pack("!HHIH", 41, payload, version << 16, len(options)) + options


def mutate(rng: random.Random, base: bytes) -> bytes:
    p = bytearray(base)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(10)
        if op <= 2 and p:  # flip a byte (most often in the header and question)
            i = rng.randrange(min(len(p), 40) if rng.random() < 0.6 else len(p))
            p[i] = rng.randrange(256)
        elif op == 3 and p:  # cut
            del p[rng.randrange(len(p)):]
        elif op == 4:  # insert junk
            i = rng.randrange(len(p) + 1)
            p[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 5 and len(p) >= 12:  # a header count
            i = rng.choice([4, 6, 8, 10])
            p[i:i + 2] = struct.pack("!H", rng.choice([0, 1, 2, 3, 255]))
        elif op == 6 and len(p) >= 12:  # an OPT somewhere it does not belong, or a second one
            sec = rng.choice([6, 8, 10])
            p[sec:sec + 2] = struct.pack("!H", ((p[sec] << 8 | p[sec + 1]) + 1) & 0xFFFF)
            p += opt(version=rng.choice([0, 0, 1]), owner=rng.choice([b"\x00", b"\xc0\x0c", b"\x01a\x00"]))
        elif op == 7 and len(p) >= 12:  # an option with a bad length or content
            body = rng.randbytes(rng.randint(0, 12))
            code = rng.choice([3, 8, 10, 11, 12, 15, 18, 65001])
            p += opt(options=struct.pack("!HH", code, max(0, len(body) + rng.choice([0, 0, 1, -1]))) + body)
            p[10:12] = struct.pack("!H", ((p[10] << 8 | p[11]) + 1) & 0xFFFF)
        elif op == 8 and len(p) >= 4:  # QR / opcode / flags
            p[2] = rng.randrange(256)
        else:  # trailing junk
            p += rng.randbytes(rng.randint(1, 4))
    return bytes(p)


def packet(rng: random.Random, pool: list[bytes]) -> bytes:
    r = rng.random()
    if r < 0.05:
        return rng.randbytes(rng.randint(0, 80))
    if r < 0.10:
        return rng.choice(pool)  # well-formed as is
    return mutate(rng, rng.choice(pool))


# ------------------------------------------------------------------------------ checking

class Checker:
    """Judges one (query, reply) pair; counts by category. Thread-safe enough (GIL, += on
    dict entries under a lock)."""

    COUNTS = ("sent", "replies", "expected_drops", "crashes", "unparseable", "answers_to_malformed",
              "wrong_answers", "lost", "formerr_to_wellformed", "notimp")

    def __init__(self, zones: Path):
        from filterdns.config.state import StateHolder
        from filterdns.dns.responder import Responder
        from filterdns.routing.inventory import Inventory
        from tests.conftest import static_state

        self.ref = Responder(StateHolder(static_state(zones)), Inventory())
        self.c = dict.fromkeys(self.COUNTS, 0)
        self.examples: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self._ref_cache: dict[bytes, tuple] = {}

    def add(self, what: str, query: bytes | None = None, reply: bytes | None = None, why: str = "") -> None:
        with self.lock:
            self.c[what] += 1
            if query is not None and what not in ("sent", "replies", "expected_drops", "notimp"):
                ex = self.examples.setdefault(what, [])
                if len(ex) < 5:
                    ex.append(f"{why}: query {query.hex()} reply {(reply or b'').hex()[:200]}")

    @staticmethod
    def must_drop(query: bytes) -> bool:
        return len(query) < 12 or bool(query[2] & 0x80)

    def check(self, query: bytes, reply: bytes | None, tcp: bool) -> None:
        if reply is None:
            if self.must_drop(query):
                self.add("expected_drops")
            else:
                self.add("lost", query, None, "no reply")
            return
        self.add("replies")
        if self.must_drop(query):
            self.add("wrong_answers", query, reply, "reply to a packet that must be dropped")
            return
        try:
            r = dns.message.from_wire(reply, keyring=False)
        except Exception as e:  # noqa: BLE001
            self.add("unparseable", query, reply, f"{type(e).__name__}: {e}")
            return
        qid = struct.unpack_from("!H", query)[0]
        if r.id != qid or not r.flags & dns.flags.QR:
            self.add("wrong_answers", query, reply, "id or QR")
            return
        if not tcp and len(reply) > 1232:
            self.add("wrong_answers", query, reply, "UDP reply over 1232 octets")
            return
        opcode = (query[2] >> 3) & 0xF
        rcode = r.rcode()
        try:
            q = dns.message.from_wire(query, keyring=False)
        except Exception:  # noqa: BLE001 - malformed: FORMERR (or NOTIMP), never an answer
            if rcode == dns.rcode.NOTIMP and opcode != 0:
                self.add("notimp")
            elif rcode != dns.rcode.FORMERR or r.answer or r.authority:
                self.add("answers_to_malformed", query, reply, f"rcode {dns.rcode.to_text(rcode)}")
            return
        if opcode != 0:
            if rcode != dns.rcode.NOTIMP:
                self.add("wrong_answers", query, reply, "opcode not NOTIMP")
            else:
                self.add("notimp")
            return
        if r.question and q.question and r.question[0].name != q.question[0].name:
            self.add("wrong_answers", query, reply, "question")
            return
        if len(q.question) != 1:  # RFC 1035 servers take exactly one question
            if rcode != dns.rcode.FORMERR or r.answer:
                self.add("wrong_answers", query, reply, f"{len(q.question)} questions not FORMERR")
            return
        if q.tsig is not None:  # signed, and we hold no keys: NOTAUTH, TSIG error BADKEY
            if rcode != 9 or r.answer or r.tsig is None or r.tsig[0].error != 17:
                self.add("wrong_answers", query, reply, "TSIG query not NOTAUTH/BADKEY")
            return
        ref = self.reference(q, tcp)
        if rcode == dns.rcode.FORMERR and ref[0] != dns.rcode.FORMERR:
            self.add("formerr_to_wellformed", query, reply, "FORMERR, the clean query is answered")
            return
        got = (rcode, bool(r.flags & dns.flags.AA), bool(r.flags & dns.flags.TC),
               sorted(x.to_text() for x in r.answer), sorted(x.to_text() for x in r.authority))
        if got != ref:
            self.add("wrong_answers", query, reply, f"differs from the clean query's answer {ref}")

    def reference(self, q: dns.message.Message, tcp: bool) -> tuple:
        """The answer to the same question asked cleanly (id, flags, question, EDNS kept)."""
        m = dns.message.Message(id=q.id)
        m.flags = q.flags
        m.question = list(q.question)
        if q.edns >= 0:
            m.use_edns(q.edns, q.ednsflags, q.payload, options=q.options)
        try:
            wire = m.to_wire()
        except Exception:  # noqa: BLE001 - dnspython cannot re-encode it: nothing to compare
            return (dns.rcode.FORMERR, False, False, [], [])
        key = wire[2:] + (b"t" if tcp else b"u")
        hit = self._ref_cache.get(key)
        if hit is not None:
            return hit
        raw = self.ref.respond(wire, ("127.0.0.1", 5353), "tcp" if tcp else "udp", 65535 if tcp else 0)
        if raw is None:
            out = (None, False, False, [], [])
        else:
            r = dns.message.from_wire(raw, keyring=False)
            out = (r.rcode(), bool(r.flags & dns.flags.AA), bool(r.flags & dns.flags.TC),
                   sorted(x.to_text() for x in r.answer), sorted(x.to_text() for x in r.authority))
        if len(self._ref_cache) > 200_000:
            self._ref_cache.clear()
        self._ref_cache[key] = out
        return out


# ------------------------------------------------------------------------------ traffic

def fire_udp(port: int, n: int, rng: random.Random, pool, chk: Checker, deadline: float,
             window: int = 64, timeout: float = 1.0) -> int:
    """Send n packets with up to ``window`` in flight, one per socket, so each reply is
    matched to its query. Packets the server must drop go out on a separate socket."""
    sel = selectors.DefaultSelector()
    free = []
    for _ in range(window):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        free.append(s)
    drop_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    drop_sock.connect(("127.0.0.1", port))
    drop_sock.setblocking(False)
    sel.register(drop_sock, selectors.EVENT_READ, None)
    inflight: dict[socket.socket, tuple[bytes, float]] = {}
    sent = 0

    def renew(s):
        sel.unregister(s)
        s.close()
        t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t.connect(("127.0.0.1", port))
        t.setblocking(False)
        return t

    while (sent < n or inflight) and time.monotonic() < deadline + (timeout if sent >= n else 0):
        while free and sent < n:
            p = packet(rng, pool)
            sent += 1
            chk.add("sent")
            if chk.must_drop(p):
                try:
                    drop_sock.send(p)
                except OSError:
                    pass
                chk.check(p, None, False)
                continue
            s = free.pop()
            try:
                s.send(p)
            except OSError:
                free.append(s)
                chk.add("lost", p, None, "send failed")
                continue
            inflight[s] = (p, time.monotonic())
            sel.register(s, selectors.EVENT_READ, None)
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                data = s.recv(65535)
            except OSError:
                continue
            if s is drop_sock:
                chk.add("wrong_answers", b"?", data, "reply to a packet that must be dropped")
                continue
            q, _t = inflight.pop(s)
            sel.unregister(s)
            chk.check(q, data, False)
            free.append(s)
        now = time.monotonic()
        for s, (q, t) in list(inflight.items()):
            if now - t > timeout:
                del inflight[s]
                chk.check(q, None, False)
                free.append(renew(s))  # a late reply must not be taken for the next query's
    for s in free + list(inflight):
        s.close()
    drop_sock.close()
    return sent


def server_view(stream: bytes) -> list[bytes]:
    """The messages the server takes from a TCP byte stream (it closes at a zero length)."""
    out, i = [], 0
    while i + 2 <= len(stream):
        n = stream[i] << 8 | stream[i + 1]
        if n == 0 or i + 2 + n > len(stream):
            break
        out.append(stream[i + 2:i + 2 + n])
        i += 2 + n
    return out


def one_tcp(port: int, rng: random.Random, pool, chk: Checker) -> None:
    msgs = [packet(rng, pool) for _ in range(rng.randint(1, 4))]
    parts = []
    for m in msgs:
        r = rng.random()
        if r < 0.05:
            parts.append(struct.pack("!H", rng.randrange(65536)) + m)  # a wrong length
        elif r < 0.08:
            parts.append(m)  # no length at all
        else:
            parts.append(struct.pack("!H", len(m)) + m)
    stream = b"".join(parts)
    if rng.random() < 0.1:
        stream = stream[:rng.randrange(len(stream) + 1)]  # cut mid-message
    queries = server_view(stream)
    for _ in queries:
        chk.add("sent")
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    data = bytearray()
    try:
        s.sendall(stream)
        s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        s.close()
    replies = server_view(bytes(data))
    expected = [q for q in queries if not chk.must_drop(q)]
    for q in queries:
        if chk.must_drop(q):
            chk.add("expected_drops")
    for i, q in enumerate(expected):
        chk.check(q, replies[i] if i < len(replies) else None, True)
    for extra in replies[len(expected):]:
        chk.add("wrong_answers", b"?", extra, "more TCP replies than queries")


def fire_tcp(port: int, m: int, seed: int, pool, chk: Checker, deadline: float, threads: int = 8) -> int:
    done = [0]
    lock = threading.Lock()

    def run(k):
        rng = random.Random(seed * 1000 + k)
        while time.monotonic() < deadline:
            with lock:
                if done[0] >= m:
                    return
                done[0] += 1
            try:
                one_tcp(port, rng, pool, chk)
            except OSError as e:
                chk.add("lost", b"?", None, f"connect: {e}")

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done[0]


def probe(port: int) -> bool:
    import dns.query

    try:
        r = dns.query.udp(dns.message.make_query("test.example.", "SOA"), "127.0.0.1", port=port, timeout=2)
        return r.rcode() == 0 and bool(r.answer)
    except Exception:  # noqa: BLE001
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--udp", type=int, default=1_000_000, help="fuzzed UDP packets (default: %(default)s)")
    ap.add_argument("--tcp", type=int, default=20_000, help="fuzzed TCP connections (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes (default: %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=1800, help="stop after this long (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    pool = seeds(rng)
    chk = Checker(ZONES)
    port = free_port()
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    with tempfile.TemporaryDirectory() as tmp:
        chains = Path(tmp) / "chains"
        chains.mkdir()
        (chains / "empty.yaml").write_text("regions: {}\nrecords: {}\n")
        log_path = Path(tmp) / "server.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "filterdns", "serve", "--listen", f"127.0.0.1:{port}", "--zones",
                 str(ZONES), "--chains", str(chains), "--state-dir", str(Path(tmp) / "state"), "--metrics",
                 "off", "--control", "off", "--workers", str(args.workers), "--no-watch"],
                stdout=logf, stderr=subprocess.STDOUT, env=env)
        try:
            up = time.monotonic() + 30
            while not probe(port):
                if proc.poll() is not None or time.monotonic() > up:
                    print(log_path.read_text(errors="replace"), file=sys.stderr)
                    raise SystemExit("server did not start")
                time.sleep(0.1)
            udp_sent = 0
            step = 20_000
            while udp_sent < args.udp and time.monotonic() < deadline:
                udp_sent += fire_udp(port, min(step, args.udp - udp_sent), rng, pool, chk, deadline)
                if not probe(port):
                    chk.add("crashes", b"?", None, f"probe failed after {udp_sent} UDP packets")
            tcp_done = fire_tcp(port, args.tcp, args.seed, pool, chk, deadline)
            if not probe(port):
                chk.add("crashes", b"?", None, "probe failed after TCP")
            alive = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        text = log_path.read_text(errors="replace")
    exits = text.count(" exited with status ")
    tracebacks = text.count("Traceback")
    chk.c["crashes"] += exits + tracebacks + (0 if alive else 1)
    if tracebacks:
        chk.examples.setdefault("crashes", []).append(text[text.index("Traceback"):][:1500])
    out = dict(chk.c, udp_packets=udp_sent, tcp_connections=tcp_done,
               seconds=round(time.monotonic() - t0, 1), workers=args.workers, seed=args.seed)
    bad = sum(out[k] for k in ("crashes", "unparseable", "answers_to_malformed", "wrong_answers"))
    if args.json:
        print(json.dumps({**out, "examples": chk.examples}))
    else:
        print(f"fuzzed {udp_sent} UDP packets and {tcp_done} TCP connections in {out['seconds']} s "
              f"({args.workers} workers, seed {args.seed})")
        for k in Checker.COUNTS:
            print(f"  {k:24s} {out[k]}")
        for k, ex in chk.examples.items():
            print(f"examples of {k}:")
            for e in ex:
                print("   ", e[:400])
        if udp_sent < args.udp or tcp_done < args.tcp:
            print(f"stopped by --max-seconds {args.max_seconds}: sent less than asked")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
