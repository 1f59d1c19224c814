"""The private channel between the supervisor and its workers, and what travels on it.

Messages are length-prefixed pickles over an AF_UNIX socketpair between our own processes
(dicts with an ``op``). Supervisor -> worker:

* ``install`` (generation, digest, blob): serve this packed State now (at spawn, and for a
  worker that started while a reload was being prepared);
* ``status``: the inventory (drains, health, feeds), whole, after every change;
* ``go`` (generation, status_generation): start reading the sockets (the answer to a
  ``loaded`` that names the generation being served; see ``serve/supervisor.py``);
* ``prepare`` (seq, generation, digest, blob) / ``commit`` (seq) / ``abort`` (seq): the two
  phases of a reload.

Worker -> supervisor: ``loaded`` (generation, digest, status_generation: what a starting
worker holds; it reads no socket yet), ``ready`` (pid, generation, digest: its listeners are
open), ``status_applied`` (generation),
``prepared`` (seq, ok, reasons, digest), ``committed`` (seq, generation), ``metrics``.

The geo database is read once by the supervisor into a sealed memory file that every worker
maps (``share_geo`` / ``open_shared_geo``): a worker started later serves the same bytes even
if the file on disk was replaced meanwhile.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pickle
import struct
from pathlib import Path

from filterdns.errors import ConfigError

log = logging.getLogger("filterdns.serve")

_LEN = struct.Struct("!I")
MAX_MSG = 256 << 20


async def read(reader: asyncio.StreamReader) -> dict:
    n = _LEN.unpack(await reader.readexactly(4))[0]
    if n > MAX_MSG:
        raise ValueError(f"message of {n} bytes")
    return pickle.loads(await reader.readexactly(n))


def write(writer: asyncio.StreamWriter, msg: dict) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LEN.pack(len(data)) + data)


def share_geo(path: str | None):
    """(GeoDB, fd): the database at ``path`` (None: the embedded one) copied once into a sealed
    memory file; workers open the same fd. (None, None) when the file cannot be used: then
    ``build_state`` opens ``path`` itself and reports why, with the other problems."""
    from filterdns.routing.geo import DEFAULT_DB

    src = str(DEFAULT_DB if path is None else path)
    try:
        data = Path(src).read_bytes()
    except OSError:
        return None, None
    try:
        fd = os.memfd_create("filterdns-geo", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):  # no memfd: workers open the file themselves
        return None, None
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    try:
        geo = open_shared_geo(fd, src)
    except ConfigError:
        os.close(fd)
        return None, None
    return geo, fd


def open_shared_geo(fd: int, shown_path: str):
    """The GeoDB of a memory file made by ``share_geo`` (memory-mapped, not copied)."""
    from filterdns.routing.geo import GeoDB

    geo = GeoDB.open(f"/proc/self/fd/{fd}")
    geo.path = shown_path
    return geo
