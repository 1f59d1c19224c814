"""The immutable configuration snapshot served to queries, and the holder swapped on reload.

``State`` is built aside by ``filterdns.config.build.build_state`` (the same function that
``filterdns check`` and start-up call) and swapped in with one reference assignment, so a query
in flight keeps the state it started with and nothing is ever half-applied.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import pickle
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class State:
    generation: int
    zones: Any  # filterdns.dns.zones.ZoneStore
    dynamic: Mapping[bytes, Any]  # lowercase wire owner -> DynamicRecord
    records: Mapping[str, Any]  # "wss-primary.example.com." -> DynamicRecord
    regions: Mapping[str, Any]  # name -> inventory.Region
    geo: Any  # filterdns.routing.geo.GeoDB
    default_region: str | None = None
    files: tuple[str, ...] = ()
    loaded_at: float = 0.0
    zones_dir: str = ""
    chains_dir: str = ""
    summary: str = ""
    health: tuple = field(default=())  # health-check specs from the chains config, if any
    #: likely mistakes that do not stop loading (``errors.Problem`` with "warning: ..." messages)
    warnings: tuple = field(default=())
    #: how each signed zone is signed: lowercase wire origin -> dnssec.ZoneSigning (keys, options)
    dnssec: Mapping[bytes, Any] = field(default_factory=dict)


class StateHolder:
    """One reference to the live ``State``; ``swap`` replaces it and tells the listeners."""

    def __init__(self, state: State):
        self.state = state
        self._listeners: list[Callable[[State, State], None]] = []

    def subscribe(self, fn: Callable[[State, State], None]) -> None:
        self._listeners.append(fn)

    def swap(self, new: State) -> State:
        old = self.state
        self.state = new
        for fn in list(self._listeners):
            fn(old, new)
        return old


# ---------------------------------------------------------------- one built State, many processes
#
# A reload is built once (by the supervisor) and the very same State is handed to every worker
# process, so no worker ever re-reads the files: ``pack`` turns a State into bytes, ``unpack``
# back. Read-only mappings travel as plain dicts and are frozen again on arrival; the geo
# database is not copied (it is not picklable, and it is the same across reloads): it travels
# as a reference that each process resolves to the database it already holds.

_GEO_REF = "filterdns-geo"


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(d)


class _Pickler(pickle.Pickler):
    dispatch_table = {**copyreg.dispatch_table, MappingProxyType: lambda m: (_frozen, (dict(m),))}

    def __init__(self, file, geo):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._geo = geo

    def persistent_id(self, obj):
        return _GEO_REF if obj is not None and obj is self._geo else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, geo):
        super().__init__(file)
        self._geo = geo

    def persistent_load(self, pid):
        if pid != _GEO_REF:
            raise pickle.UnpicklingError(f"unknown reference {pid!r}")
        if self._geo is None:
            raise pickle.UnpicklingError("this State refers to a geo database; none is loaded here")
        return self._geo


def pack(state: State) -> bytes:
    """The bytes of ``state`` (its geo database by reference); ``unpack`` reverses it."""
    buf = io.BytesIO()
    _Pickler(buf, state.geo).dump(state)
    return buf.getvalue()


def unpack(blob: bytes, geo: Any) -> State:
    """The State packed by ``pack``, bound to this process's copy of the geo database."""
    state = _Unpickler(io.BytesIO(blob), geo).load()
    if not isinstance(state, State):
        raise pickle.UnpicklingError(f"not a State: {type(state).__name__}")
    return state


def digest(blob: bytes) -> str:
    """Content hash of a packed State: proves that two processes hold the same input."""
    return hashlib.sha256(blob).hexdigest()[:16]
