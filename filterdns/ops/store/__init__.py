"""Where operator state lives: drains and feed values, the audit log and (for a fleet) health.

Two implementations of one interface, ``StateStore``:

* ``file`` (``store/file.py``, the default for a single server): ``state_dir/state.json`` and
  ``state_dir/audit.log``. A commit is a temp file, fsync, rename and fsync of the directory.
* ``etcd`` (``store/etcd.py``, for a fleet): ``--state etcd://host:2379[,host:2379...]/prefix``.
  Commits are compare-and-swap transactions on the revision of one key, watches bring every
  other instance's changes within a second, health verdicts are kept per instance under a lease
  and combined by a policy (``quorum``, ``all``, ``any``), the audit log is fleet-wide.

The contract every store keeps (the Controller relies on it, see ``ops/controller.py``):

* ``load()`` at start-up returns the saved document (``doc.parse_doc`` shape) or raises
  ``StateUnreadable``; a partly bad document keeps every valid entry and names each bad one.
* ``commit(base_revision, doc, audit)`` returns only once the change is durable (fsync'd file
  or etcd commit) and returns the new revision. It raises ``Conflict`` when the state moved
  since ``base_revision`` (the caller re-reads and re-checks the safety rule), ``Unavailable``
  when the store cannot be reached, and ``NotDurable`` when the write failed. In every error
  case nothing was changed, and the Controller leaves its in-memory state alone.
* ``on_remote`` (set by the Controller) is called with ``(doc, revision)`` when another
  instance changed the state (etcd only).
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Iterable


class StoreError(Exception):
    """Base of the errors a store raises; ``message`` is for the operator."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class StateUnreadable(StoreError):
    """The saved state cannot be used at all (start-up refuses unless --discard-state)."""


class NotDurable(StoreError):
    """A commit could not be made durable (disk full, read-only, I/O error): nothing changed."""


class Unavailable(StoreError):
    """The store cannot be reached (etcd down): nothing changed; last known state is served."""


class Conflict(StoreError):
    """The state changed since the revision the caller read: re-read, re-check, retry."""


class StateStore:
    """Interface (see the module docstring). Subclasses: ``FileStore``, ``EtcdStore``."""

    kind = "abstract"
    #: where health verdicts go: None means the local inventory (single server)
    fleet = False

    def __init__(self) -> None:
        self.revision = 0
        self.on_remote: Callable[[dict, int], None] | None = None
        self.on_health: Callable[[str, str, bool | None], None] | None = None
        self.on_leader: Callable[[bool], None] | None = None
        self.instance = ""

    # -- life cycle ------------------------------------------------------------------------
    def load(self, discard: bool = False) -> "Loaded":
        raise NotImplementedError

    async def start(self) -> None:
        """Begin watching (etcd); the file store has nothing to start."""

    async def stop(self) -> None:
        """Stop watching, revoke leases (etcd)."""

    # -- operator state ----------------------------------------------------------------------
    async def commit(self, base_revision: int, doc: dict, audit: Iterable[dict] = ()) -> int:
        raise NotImplementedError

    async def refresh(self) -> None:
        """Re-read the state after a ``Conflict`` (calls ``on_remote``)."""

    async def audit(self, entry: dict) -> None:
        """Append one audit entry that goes with no state change (refusals, reloads)."""
        raise NotImplementedError

    async def read_audit(self, limit: int = 100) -> list[dict]:
        raise NotImplementedError

    # -- fleet -------------------------------------------------------------------------------
    def publish_health(self, region: str, service: str, healthy: bool | None) -> None:
        """This instance's own health verdict (etcd: under its lease)."""

    def is_leader(self) -> bool:
        """Whether this instance runs the drain automation for the fleet (always, alone)."""
        return True

    def publish_instance(self, info: dict) -> None:
        """This instance's generation and config hash, for ``filterdns status``."""

    def describe(self) -> dict:
        """What ``/regions``, ``status`` and metrics show about the store."""
        return {"kind": self.kind, "up": True, "stale_seconds": 0.0, "revision": self.revision}

    def fleet_view(self) -> dict | None:
        """Instances connected and their health verdicts (etcd), or None (single server)."""
        return None


class Loaded:
    """What ``load()`` found: the document, the revision, and a warning naming bad entries."""

    def __init__(self, doc: dict | None, revision: int = 0, warning: str | None = None,
                 source: str = ""):
        self.doc = doc
        self.revision = revision
        self.warning = warning
        self.source = source


def audit_line(entry: dict, instance: str, clock: Callable[[], float] = time.time) -> dict:
    """One audit entry with its time, ISO time and the instance that made it."""
    now = entry.get("time") or clock()
    line = {"time": now, "iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "region": None, "service": None, "action": None, "cause": None, "actor": None,
            "reason": None, "instance": instance}
    line.update(entry)
    line["time"] = now
    return line


def effective_health(verdicts: Iterable[bool], policy: str = "quorum") -> bool | None:
    """The fleet's verdict from the live instances' verdicts (True healthy): None when nobody
    checks it. ``quorum``: down when more than half say down; ``all``: down only when every
    instance says down; ``any``: down when any one says down."""
    votes = list(verdicts)
    if not votes:
        return None
    down = sum(1 for v in votes if not v)
    if policy == "any":
        return down == 0
    if policy == "all":
        return down < len(votes)
    return not down * 2 > len(votes)


def parse_state_spec(spec: str | None) -> dict:
    """``None`` / ``file`` -> file store; ``etcd://h:p[,h:p...]/prefix`` -> etcd settings."""
    if spec is None or spec in ("", "file"):
        return {"kind": "file"}
    if not spec.startswith(("etcd://", "etcds://")):
        raise ValueError(f"--state {spec!r}: expected 'file' or etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    scheme, rest = spec.split("://", 1)
    hosts, slash, prefix = rest.partition("/")
    if not hosts:
        raise ValueError(f"--state {spec!r}: no etcd endpoint")
    endpoints = []
    for h in hosts.split(","):
        h = h.strip()
        if h.startswith("["):
            host, _, port = h[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = h.rpartition(":") if ":" in h else (h, "", "")
        port = port or "2379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--state {spec!r}: bad endpoint {h!r} (HOST:PORT)")
        endpoints.append((host, int(port)))
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else "/filterdns"
    return {"kind": "etcd", "endpoints": endpoints, "prefix": prefix,
            "tls": scheme == "etcds"}


def open_store(spec: str | None, state_dir: str, **options: Any) -> StateStore:
    """The store ``--state`` names (the file store by default)."""
    cfg = parse_state_spec(spec)
    if cfg["kind"] == "file":
        from filterdns.ops.store.file import FileStore
        return FileStore(state_dir)
    from filterdns.ops.store.etcd import EtcdStore
    return EtcdStore(cfg["endpoints"], cfg["prefix"], state_dir, tls=cfg["tls"], **options)


__all__ = ["StateStore", "Loaded", "StoreError", "StateUnreadable", "NotDurable", "Unavailable",
           "Conflict", "effective_health", "open_store", "parse_state_spec", "audit_line", "Awaitable"]
