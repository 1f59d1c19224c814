"""ADDR:PORT text: the one parser for every address flag (--listen, --metrics, --control, the
operator CLI's --control and explain --live) and the one way to show an address in messages."""

from __future__ import annotations

import random
import socket


def parse_hostport(text: str, default_port: int | None = None, *, names: bool = False) -> tuple[str, int]:
    """``'127.0.0.1:8053'``, ``'[::1]:8053'``, ``'::1'`` (with a default port) -> (host, port).

    ``names=True`` also accepts a host name (``localhost:9154``), for clients that connect;
    a server binds to IP addresses only. Raises ValueError saying what is wrong.
    """
    text = text.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:  # no colon, or a bare IPv6 address
        host, port = text, ""
    if not host:
        raise ValueError(f"{text!r}: an address is required (ADDR:PORT)")
    if not port:
        if default_port is None:
            raise ValueError(f"{text!r}: a port is required (ADDR:PORT)")
        port = str(default_port)
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: bad port {port!r}")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        if not names or ":" in host or not _is_hostname(host):
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def _is_hostname(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return all(0 < len(x) <= 63 and x.replace("-", "").isalnum() and x.isascii() for x in labels)


def format_hostport(host: str, port: int) -> str:
    """(host, port) -> ``127.0.0.1:8053`` or ``[::1]:8053``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1, below the kernel's ephemeral range: a
    port the kernel handed out would be free only until some process's next outgoing
    connection or query takes it as its local port, before our server binds it."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, low) if low > 11000 else 0
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind(("127.0.0.1", port))
            port = t.getsockname()[1]
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        return port
    raise RuntimeError("no free port")
