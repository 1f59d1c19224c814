"""dnstap (https://dnstap.info) encoding: the protobuf ``Dnstap`` message and Frame Streams.

The schema is small (dnstap.proto: ``Dnstap`` with ``identity``, ``version``, ``type`` and
``message``; ``Message`` with type, socket family and protocol, addresses, ports, times and the
wire bytes), so it is encoded here by hand: a few varints and length-delimited fields, no
protobuf runtime (whose generated code would also need a build step). Field numbers and enum
values are those of dnstap.proto; ``dnstap-read`` (BIND) and the Go ``dnstap`` tool decode the
result (tests/test_dnstap.py checks it with ``dnstap-read -y``).

Frame Streams (fstrm, https://github.com/farsightsec/fstrm): a data frame is a 32-bit
big-endian length and the payload; a control frame is an escape (a zero length), the control
frame's length, its type and fields. A file is START(content type) data... STOP; a socket is
the bidirectional handshake READY -> ACCEPT -> START ... STOP -> FINISH.
"""

from __future__ import annotations

import struct

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"

# fstrm control frame types and the content-type field
ACCEPT, START, STOP, READY, FINISH = 0x01, 0x02, 0x03, 0x04, 0x05
FIELD_CONTENT_TYPE = 0x01

# dnstap.proto enums
DNSTAP_MESSAGE = 1
AUTH_QUERY, AUTH_RESPONSE = 1, 2
INET, INET6 = 1, 2
UDP, TCP = 1, 2

_U32 = struct.Struct("!I")


_SMALL = [bytes((i,)) for i in range(128)]
_FIXED32 = struct.Struct("<I")


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _uint(field: int, n: int) -> bytes:
    return _key(field, 0) + _varint(n)


def _bytes(field: int, b: bytes) -> bytes:
    return _key(field, 2) + _varint(len(b)) + b


# keys of the Message fields written per query (field << 3 | wire type), made once
_K_QSEC, _K_QNSEC, _K_QMSG = _key(8, 0), _key(9, 5), _key(10, 2)
_K_RSEC, _K_RNSEC, _K_RMSG = _key(12, 0), _key(13, 5), _key(14, 2)
_TYPE = {t: _uint(1, t) for t in (AUTH_QUERY, AUTH_RESPONSE)}
_TAIL = _uint(15, DNSTAP_MESSAGE)
_K_MESSAGE = _key(14, 2)


def peer(family: int, protocol: int, query_address: bytes, query_port: int,
         response_address: bytes, response_port: int) -> bytes:
    """The socket fields of a ``Message`` (family, protocol, addresses, ports), encoded once
    for the query and the response of one exchange."""
    return b"".join((_uint(2, family), _uint(3, protocol), _bytes(4, query_address),
                     _bytes(5, response_address), _uint(6, query_port), _uint(7, response_port)))


def _time(ksec: bytes, knsec: bytes, t: float) -> bytes:
    sec = int(t)
    return ksec + _varint(sec) + knsec + _FIXED32.pack(int((t - sec) * 1e9) % 1_000_000_000)


def message(mtype: int, peer_fields: bytes, query_time: float, query_message: bytes | None = None,
            response_time: float | None = None, response_message: bytes | None = None,
            query_zone: bytes | None = None) -> bytes:
    """A dnstap ``Message`` (times in seconds since the epoch; ``peer_fields`` from ``peer``)."""
    parts = [_TYPE.get(mtype) or _uint(1, mtype), peer_fields, _time(_K_QSEC, _K_QNSEC, query_time)]
    if query_message is not None:
        parts += (_K_QMSG, _varint(len(query_message)), query_message)
    if query_zone is not None:
        parts.append(_bytes(11, query_zone))
    if response_time is not None:
        parts.append(_time(_K_RSEC, _K_RNSEC, response_time))
    if response_message is not None:
        parts += (_K_RMSG, _varint(len(response_message)), response_message)
    return b"".join(parts)


def header(identity: bytes = b"", version: bytes = b"") -> bytes:
    """The ``Dnstap`` fields before the message (identity, version), encoded once."""
    return (_bytes(1, identity) if identity else b"") + (_bytes(2, version) if version else b"")


def frame(head: bytes, msg: bytes) -> bytes:
    """One data frame holding a ``Dnstap`` (``head`` from ``header``) around one ``Message``."""
    n = len(head) + 1 + len(_varint(len(msg))) + len(msg) + len(_TAIL)
    return b"".join((_U32.pack(n), head, _K_MESSAGE, _varint(len(msg)), msg, _TAIL))


def dnstap(msg: bytes, identity: bytes = b"", version: bytes = b"") -> bytes:
    """The top-level ``Dnstap`` wrapping one ``Message``."""
    return header(identity, version) + _K_MESSAGE + _varint(len(msg)) + msg + _TAIL


def data_frame(payload: bytes) -> bytes:
    return _U32.pack(len(payload)) + payload


def control_frame(ctype: int, content_type: bytes | None = CONTENT_TYPE) -> bytes:
    body = _U32.pack(ctype)
    if content_type is not None:
        body += _U32.pack(FIELD_CONTENT_TYPE) + _U32.pack(len(content_type)) + content_type
    return _U32.pack(0) + _U32.pack(len(body)) + body


def read_control(data: bytes) -> tuple[int, list[bytes]]:
    """Parse one control frame (escape, length, type, fields): (type, content types)."""
    if len(data) < 12 or _U32.unpack_from(data, 0)[0] != 0:
        raise ValueError("not a Frame Streams control frame")
    length = _U32.unpack_from(data, 4)[0]
    if len(data) < 8 + length or length < 4:
        raise ValueError("short control frame")
    ctype = _U32.unpack_from(data, 8)[0]
    types, o, end = [], 12, 8 + length
    while o + 8 <= end:
        ftype, flen = _U32.unpack_from(data, o)[0], _U32.unpack_from(data, o + 4)[0]
        if ftype == FIELD_CONTENT_TYPE:
            types.append(data[o + 8:o + 8 + flen])
        o += 8 + flen
    return ctype, types
