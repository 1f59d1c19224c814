#!/usr/bin/env python3
"""What batched UDP costs per datagram, in-process over loopback, three ways:

    python3 bench/udp_batch.py [--packets 200000] [--batch 32]

* ``plain``: ``sock.recvfrom`` + ``sock.sendto`` per datagram (what any Python loop does);
* ``native``: ``filterdns.serve._mmsg.recv_batch`` / ``send_batch`` (recvmmsg/sendmmsg in C);
* ``ctypes``: the same two system calls through ctypes, the headers and addresses built in Python.

A client socket sends ``--batch`` queries, the "server" socket takes them and echoes each back to
its source, the client drains the replies; CPU time (process_time) per datagram of the whole
loop is printed, so the client's share is the same in each row. The server side is what differs.
This is the measurement behind the choice of a C extension (see bench/README.md).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    from filterdns.serve import _mmsg
except ImportError:
    _mmsg = None

MSG_DONTWAIT = 0x40


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", msghdr), ("msg_len", ctypes.c_uint)]


class CtypesBatch:
    """recvmmsg/sendmmsg through ctypes, IPv4 only (enough to measure)."""

    def __init__(self, n: int, size: int = 4096):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.n = n
        self.bufs = [ctypes.create_string_buffer(size) for _ in range(n)]
        self.names = [ctypes.create_string_buffer(28) for _ in range(n)]
        self.iov = (iovec * n)()
        self.msgs = (mmsghdr * n)()
        for i in range(n):
            self.iov[i].iov_base = ctypes.addressof(self.bufs[i])
            self.iov[i].iov_len = size
            h = self.msgs[i].msg_hdr
            h.msg_name = ctypes.addressof(self.names[i])
            h.msg_iov = ctypes.pointer(self.iov[i])
            h.msg_iovlen = 1
        self.siov = (iovec * n)()
        self.smsgs = (mmsghdr * n)()

    def recv(self, fd: int) -> list:
        for i in range(self.n):
            self.msgs[i].msg_hdr.msg_namelen = 28
        got = self.libc.recvmmsg(fd, self.msgs, self.n, MSG_DONTWAIT, None)
        out = []
        for i in range(max(got, 0)):
            name = self.names[i].raw
            addr = (socket.inet_ntop(socket.AF_INET, name[4:8]), int.from_bytes(name[2:4], "big"))
            out.append((self.bufs[i].raw[:self.msgs[i].msg_len], addr))
        return out

    def send(self, fd: int, replies: list) -> int:
        keep = []
        for i, (data, (host, port)) in enumerate(replies):
            name = ctypes.create_string_buffer(b"\x02\x00" + port.to_bytes(2, "big") + socket.inet_aton(host), 16)
            buf = ctypes.create_string_buffer(data, len(data))
            keep += [name, buf]
            self.siov[i].iov_base = ctypes.addressof(buf)
            self.siov[i].iov_len = len(data)
            h = self.smsgs[i].msg_hdr
            h.msg_name = ctypes.addressof(name)
            h.msg_namelen = 16
            h.msg_iov = ctypes.pointer(self.siov[i])
            h.msg_iovlen = 1
        return self.libc.sendmmsg(fd, self.smsgs, len(replies), 0)


def run(kind: str, packets: int, batch: int) -> float:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    srv.setblocking(False)
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.bind(("127.0.0.1", 0))
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    cli.settimeout(5)
    dst = srv.getsockname()
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01" + b"x" * 23
    fd = srv.fileno()
    cb = CtypesBatch(batch) if kind == "ctypes" else None
    t0 = time.process_time()
    done = 0
    while done < packets:
        for _ in range(batch):
            cli.sendto(query, dst)
        got = 0
        while got < batch:
            if kind == "plain":
                try:
                    data, addr = srv.recvfrom(4096)
                except BlockingIOError:
                    continue
                srv.sendto(data, addr)
                got += 1
            elif kind == "native":
                b = _mmsg.recv_batch(fd, batch)
                _mmsg.send_batch(fd, b)
                got += len(b)
            else:
                b = cb.recv(fd)
                if b:
                    cb.send(fd, b)
                got += len(b)
        for _ in range(batch):
            cli.recv(4096)
        done += batch
    t = time.process_time() - t0
    srv.close()
    cli.close()
    return t / done * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    kinds = ["plain", "ctypes"] + (["native"] if _mmsg is not None else [])
    print(f"{a.packets} datagrams in batches of {a.batch}; CPU us per datagram (client + server), best of 3")
    for kind in kinds:
        best = min(run(kind, a.packets, a.batch) for _ in range(3))
        print(f"  {kind:<7} {best:6.2f}")
    if _mmsg is None:
        print("  native  (filterdns.serve._mmsg is not built: pip install . with a C compiler)")


if __name__ == "__main__":
    main()
