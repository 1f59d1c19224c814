"""The embedded file store: ``state_dir/state.json`` and ``state_dir/audit.log``.

A commit writes a temp file, fsyncs it, renames it over ``state.json`` and fsyncs the directory;
only then is the change acknowledged. Any ``OSError`` on the way (disk full, read-only file
system, I/O error) raises ``NotDurable`` and leaves the previous ``state.json`` in place, so the
Controller does not change its in-memory state either.

Start-up (``load``): a missing file is an empty state. A file that is not a JSON object at all
(invalid UTF-8, not JSON, a list) raises ``StateUnreadable`` (start-up refuses to serve) unless
``discard`` is given, in which case it is moved aside to ``state.json.corrupt-<time>``. A file
with some bad entries keeps every valid one; each bad one is named in the warning, and a copy
of the file is kept as ``state.json.bad-<time>``.

The audit log is one JSON object per line, appended and fsync'd.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

from filterdns.ops.store import Loaded, NotDurable, StateStore, StateUnreadable
from filterdns.ops.store import doc as sdoc

log = logging.getLogger("filterdns.ops.store.file")

STATE_FILE = "state.json"
AUDIT_FILE = "audit.log"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def write_durably(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory. Raises OSError; the old file is kept."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(path: Path, lines: Iterable[dict]) -> None:
    data = "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines)
    if not data:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_audit_file(path: Path, limit: int) -> list[dict]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines()[-limit:] if limit else raw.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"action": "unreadable", "raw": line.decode("utf-8", "replace")[:200]})
    return out


class FileStore(StateStore):
    kind = "file"

    def __init__(self, state_dir: str | os.PathLike, clock=time.time):
        super().__init__()
        self.state_dir = Path(state_dir)
        self.clock = clock

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def audit_path(self) -> Path:
        return self.state_dir / AUDIT_FILE

    def load(self, discard: bool = False) -> Loaded:
        path = self.state_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return Loaded(None, source=str(path))
        except OSError as e:
            raise StateUnreadable(f"{path}: cannot read: {_why(e)}") from None
        try:
            clean, problems = sdoc.decode(raw)
        except StateUnreadable as e:
            if not discard:
                raise StateUnreadable(
                    f"{path}: {e.message}; refusing to serve without the saved drains "
                    "(fix or remove the file, or start with --discard-state to move it aside "
                    "and start with no drains)") from None
            aside = path.with_name(f"{STATE_FILE}.corrupt-{int(self.clock())}")
            os.replace(path, aside)
            msg = f"{path}: {e.message}; moved to {aside.name} (--discard-state), starting with no drains"
            log.error("%s", msg)
            return Loaded(None, warning=msg, source=str(path))
        warning = None
        if problems:
            aside = path.with_name(f"{STATE_FILE}.bad-{int(self.clock())}")
            try:
                shutil.copyfile(path, aside)
                kept = f"; the original is kept as {aside.name}"
            except OSError as e:
                kept = f"; could not keep a copy ({_why(e)})"
            warning = (f"{path}: {len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'} "
                       f"left out, {len(clean['drains'])} drain(s) and {len(clean['feeds'])} "
                       f"feed(s) kept{kept}: " + "; ".join(problems))
            for p in problems:
                log.error("%s: %s (left out)", path, p)
        return Loaded(clean, warning=warning, source=str(path))

    async def commit(self, base_revision: int, doc: dict, audit: Iterable[dict] = ()) -> int:
        try:
            write_durably(self.state_path, sdoc.encode(doc, self.clock()))
        except OSError as e:
            raise NotDurable(f"cannot save the state to {self.state_path}: {_why(e)}") from None
        self.revision = base_revision + 1
        await self.audit_many(audit)
        return self.revision

    async def audit(self, entry: dict) -> None:
        await self.audit_many([entry])

    async def audit_many(self, entries: Iterable[dict]) -> None:
        entries = list(entries)
        try:
            append_durably(self.audit_path, entries)
        except OSError as e:
            log.error("cannot write audit log %s: %s (entries %s)", self.audit_path, _why(e), entries)

    async def read_audit(self, limit: int = 100) -> list[dict]:
        return read_audit_file(self.audit_path, limit)

    def describe(self) -> dict:
        return {"kind": self.kind, "up": True, "stale_seconds": 0.0, "revision": self.revision,
                "path": str(self.state_path)}
