"""The saved operator-state document, the one place that reads and writes its shape.

Shape (``state.json``, the etcd ``<prefix>/state`` value and the local etcd snapshot)::

    {"version": 1, "saved_at": <unix>, "drains": [<drain>...], "feeds": [<feed>...]}
    drain: {"region": str, "service": str|null, "reason": str, "actor": str,
            "cause": "operator"|"health", "since": <unix>, "until": <unix> (optional expiry)}
    feed:  {"region": str, "service": str|null, "values": {"up": bool, "loadavg": n, ...},
            "until": {key: <unix>} (optional expiry per value)}

``parse_doc`` never raises on content: it returns the clean document and one problem per bad
entry (``drains[2]: ...``) so a partly bad file keeps every valid entry. Only bytes that are not
a JSON object at all (invalid UTF-8, not JSON, a list at the top) raise ``StateUnreadable``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from filterdns.ops.store import StateUnreadable

VERSION = 1
CAUSES = ("operator", "health")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(entry: Any) -> str:
    text = json.dumps(entry, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _target(entry: dict, i: str) -> tuple[str, str | None] | str:
    region, service = entry.get("region"), entry.get("service")
    if not isinstance(region, str) or not region:
        return f"{i}: region must be a non-empty string, got {_show(region)}"
    if service is not None and (not isinstance(service, str) or not service):
        return f"{i}: service must be a non-empty string or null, got {_show(service)}"
    return region, service


def _feed_until(until: Any, feed: dict, where: str, problems: list[str]) -> None:
    """A feed entry's optional ``until`` ({key: unix time}) into ``feed``, or one problem."""
    if until is None:
        return
    if not isinstance(until, dict) or not all(k in feed["values"] and _num(v) for k, v in until.items()):
        problems.append(f"{where}: until must map feed keys to unix times, got {_show(until)}; "
                        f"the values are kept without expiry")
    elif until:
        feed["until"] = {k: float(v) for k, v in until.items()}


def _section(data: dict, section: str, problems: list[str], build) -> list[dict]:
    """The valid entries of the list ``data[section]``, each made by ``build(where, entry,
    target, label)`` (which returns the clean entry, or a problem string). One problem per
    entry that is not an object, has no valid region/service, fails ``build``, or repeats a
    target kept before (the first is kept)."""
    raw = data.get(section, [])
    if not isinstance(raw, list):
        problems.append(f"{section}: must be a list, got {_show(raw)}")
        return []
    kept: dict[tuple, dict] = {}
    for n, entry in enumerate(raw):
        where = f"{section}[{n}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be an object, got {_show(entry)}")
            continue
        t = _target(entry, where)
        if isinstance(t, str):
            problems.append(t)
            continue
        label = f"{t[0]}{'/' + t[1] if t[1] else ''}"
        clean = build(where, entry, t, label)
        if isinstance(clean, str):
            problems.append(clean)
        elif t in kept:
            what = "drain of" if section == "drains" else "feed entry for"
            problems.append(f"{where}: a second {what} {label}; keeping the first")
        else:
            kept[t] = clean
    return list(kept.values())


def _drain(where: str, d: dict, t: tuple, label: str) -> dict | str:
    bad = []
    for key in ("reason", "actor"):
        if not isinstance(d.get(key, ""), str):
            bad.append(f"{key} must be a string")
    if d.get("cause", "operator") not in CAUSES:
        bad.append(f"cause must be one of {', '.join(CAUSES)}")
    if not _num(d.get("since", 0)):
        bad.append("since must be a number")
    if d.get("until") is not None and not _num(d.get("until")):
        bad.append("until must be a number or null")
    if bad:
        return f"{where} ({label}): {'; '.join(bad)}: {_show(d)}"
    drain = {"region": t[0], "service": t[1], "reason": d.get("reason", ""),
             "actor": d.get("actor", ""), "cause": d.get("cause", "operator"),
             "since": float(d.get("since", 0))}
    if d.get("until") is not None:
        drain["until"] = float(d["until"])
    return drain


def parse_doc(data: Any) -> tuple[dict, list[str]]:
    """(clean document, problems). ``data`` is the decoded JSON value."""
    from filterdns.ops.controller import BadRequest, validate_feed_values

    if not isinstance(data, dict):
        raise StateUnreadable(f"top level is a JSON {type(data).__name__}, not an object")
    problems: list[str] = []

    def feed(where: str, f: dict, t: tuple, label: str) -> dict | str:
        try:
            values = validate_feed_values(f.get("values"))
        except BadRequest as e:
            return f"{where} ({label}): {e.message}"
        clean = {"region": t[0], "service": t[1], "values": values}
        _feed_until(f.get("until"), clean, f"{where} ({label})", problems)
        return clean

    drains = _section(data, "drains", problems, _drain)
    feeds = _section(data, "feeds", problems, feed)
    return {"drains": drains, "feeds": feeds}, problems


def decode(raw: bytes) -> tuple[dict, list[str]]:
    """Bytes (file or etcd value) -> (clean document, problems); ``StateUnreadable`` if unusable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StateUnreadable(f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise StateUnreadable(f"not valid JSON ({e})") from None
    except RecursionError:
        raise StateUnreadable("not valid JSON (nested too deeply)") from None
    return parse_doc(data)


def encode(doc: dict, saved_at: float) -> bytes:
    """The document as written (sorted keys, one entry per line for diffs)."""
    out = {"version": VERSION, "saved_at": saved_at, "drains": doc.get("drains", []),
           "feeds": doc.get("feeds", [])}
    return json.dumps(out, indent=1, sort_keys=True).encode()
