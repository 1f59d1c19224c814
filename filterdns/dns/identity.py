"""Which server answered: ``--server-id`` as NSID (RFC 5001) and CHAOS TXT (RFC 4892).

A fleet behind one name needs to know which instance answered a query. With an identity set,

* a query carrying an empty NSID option gets ``NSID = <identity>`` in our OPT record (``dig
  +nsid``); it is left out rather than truncate an answer that would not fit with it;
* ``id.server`` and ``hostname.bind`` in class CHAOS, type TXT (``dig CH TXT id.server``), are
  answered with it (AA, TTL 0; another type at those names is NODATA).

Without one (the default) no NSID is sent and every CHAOS query is REFUSED, as any class but IN
is: a server's host name is not published unless the operator asks (RFC 4892 §4 leaves it to
the operator; NSD and Knot keep it off unless configured). ``version.bind`` and the other
CHAOS names stay REFUSED either way. ``--server-id @hostname`` uses this host's name.

The identity is a process-wide constant: set once by the serving process (and each worker)
before any listener opens, read by ``wire.render`` and ``core.decide``.
"""

from __future__ import annotations

import socket
import struct

NSID_CODE = 3
MAX_LEN = 64

#: the identity as bytes; b"" = none
SERVER_ID: bytes = b""
#: the NSID option as it goes in our OPT record (code, length, identity); b"" = none
NSID_OPTION: bytes = b""
#: the TXT rdata (one character-string); b"" = none
TXT_RDATA: bytes = b""


def resolve(value: str | None) -> str | None:
    """The identity a ``--server-id`` value stands for; ValueError says what is wrong."""
    if value is None or value == "":
        return None
    if value == "@hostname":
        value = socket.gethostname()
    if len(value) > MAX_LEN or not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise ValueError(f"--server-id must be 1-{MAX_LEN} printable ASCII characters without spaces, "
                         f"got {value!r}")
    return value


def set_server_id(value: str | None) -> None:
    """Set this process's identity (None: none). ``value`` has passed ``resolve``."""
    global SERVER_ID, NSID_OPTION, TXT_RDATA
    raw = value.encode("ascii") if value else b""
    SERVER_ID = raw
    NSID_OPTION = struct.pack("!HH", NSID_CODE, len(raw)) + raw if raw else b""
    TXT_RDATA = bytes([len(raw)]) + raw if raw else b""
