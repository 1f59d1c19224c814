"""Reload when files under the zones or chains directories change (polled, debounced).

A poll takes the directories' signature (path, mtime, size of every file) off the event loop,
in a thread. When it differs from the signature of the files the serving config was built
from, the watcher waits for writes to settle, takes the signature again, and reloads only if
the two agree (a burst of writes is still going on otherwise; the next poll looks again).
The reload itself records the signature it builds from (``Runtime.files_sig``), taken before
it reads the files, so an edit made during a build is seen by the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Awaitable, Callable, Iterable

log = logging.getLogger("filterdns")

Signature = tuple


def signature(dirs: Iterable[str]) -> Signature:
    """(path, mtime_ns, size) of every non-hidden file under ``dirs``; blocking (a tree walk)."""
    sig = []
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            sig.append((str(p), "missing"))
            continue
        for f in sorted(p.rglob("*")):
            if f.name.startswith("."):
                continue
            try:
                st = f.stat()
            except OSError:
                continue
            if f.is_file():
                sig.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(sig)


def describe_change(old, new, most: int = 3) -> str:
    """What differs between two signatures, for the reload's log line and audit entry:
    ``zones/example.com.zone changed, chains/x.yaml added`` (at most ``most`` paths)."""
    def paths(sig) -> dict:
        if not isinstance(sig, tuple):
            return {}
        return {e[0]: e[1:] for e in sig if isinstance(e, tuple) and e}

    a, b = paths(old), paths(new)
    out = []
    for path in sorted(set(a) | set(b)):
        if path not in a:
            out.append(f"{path} added")
        elif path not in b:
            out.append(f"{path} removed")
        elif a[path] != b[path]:
            out.append(f"{path} removed" if b[path] == ("missing",) else f"{path} changed")
    if not out:
        return "files changed"
    more = f" and {len(out) - most} more" if len(out) > most else ""
    return ", ".join(out[:most]) + more


class FileWatcher:
    def __init__(self, dirs: Iterable[str], interval: float, baseline: Callable[[], Signature | None],
                 on_change: Callable[[str], Awaitable], settle: float = 0.3):
        self.dirs = tuple(dirs)
        self.interval = interval
        self.baseline = baseline
        self.on_change = on_change
        self.settle = min(settle, interval)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> bool:
        """Sleep; True when asked to stop meanwhile."""
        try:
            await asyncio.wait_for(stop.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def run(self, stop: asyncio.Event) -> None:
        while not await self._sleep(stop, self.interval):
            try:
                sig = await asyncio.to_thread(signature, self.dirs)
                if sig == self.baseline():
                    continue
                if await self._sleep(stop, self.settle):  # let a burst of writes settle
                    return
                settled = await asyncio.to_thread(signature, self.dirs)
                if settled != sig or settled == self.baseline():
                    continue  # still being written (or already reloaded): look again next poll
                await self.on_change("file watcher: " + describe_change(self.baseline(), settled))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad poll
                log.exception("watching the config directories failed")
