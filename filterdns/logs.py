"""Log output of every filterdns process: ``--log-format text|json`` and ``-v``.

One handler on the root logger, on stderr, set up once per process (the CLI, and each worker
of ``serve --workers N`` with the same settings, so their lines look alike). Two formats:

* ``text`` (default): ``2026-12-02 06:48:11,123 INFO filterdns: message key=value ...``
* ``json``: one JSON object per line, ``{"ts", "level", "logger", "msg", "fields"}``:
  ``ts`` is RFC 3339 UTC with milliseconds, ``level`` lower case (debug, info, warning, error,
  critical), ``fields`` the structured values the call passed (always an object, maybe empty)
  and, for an exception, ``exc`` holds the traceback text.

Structured values go in ``extra={"fields": {...}}`` (the JSON format's ``fields``; a text
line's message already says them in words). A worker's lines carry ``worker`` in ``fields``
(text: ``logger[worker N]:``).

Levels: ERROR for what failed (a rejected reload, a worker that died), WARNING for what an
operator should look at (a drain, a health check going DOWN, a config warning), INFO for what
changed as intended (start-up, a reload in service, a health check coming UP), DEBUG (``-v``)
for the phases in between (reload build and commit, worker start, each health probe).
"""

from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(worker)s: %(message)s"


def _fields(record: logging.LogRecord) -> dict:
    f = getattr(record, "fields", None)
    return f if isinstance(f, dict) else {}


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None):
        super().__init__(TEXT_FORMAT)
        self.worker = "" if worker is None else f"[worker {worker}]"

    def format(self, record: logging.LogRecord) -> str:
        record.worker = self.worker
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (no newline inside: a traceback goes in ``exc``)."""

    def __init__(self, worker: int | None = None):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(_fields(record))
        if self.worker is not None:
            fields.setdefault("worker", self.worker)
        ms = int(record.msecs)
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "fields": fields,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(fmt: str = "text", verbose: bool = False, worker: int | None = None,
              stream=None, force: bool = False) -> None:
    """Install the one stderr handler on the root logger at DEBUG with ``verbose``, else INFO.
    A handler installed by an earlier call is replaced, so no line is ever printed twice. Like
    ``logging.basicConfig``, nothing is added when someone else's handler is already there
    (pytest's, an embedding program's) unless ``force``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    reset()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # libraries' chatter stays at INFO even with -v (asyncio's selector line, etc.)
    for noisy in ("asyncio", "urllib3", "hpack", "grpc"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    handler._filterdns = True
    root.addHandler(handler)


def reset() -> None:
    """Remove the handler ``configure`` installed (tests)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_filterdns", False):
            root.removeHandler(h)
