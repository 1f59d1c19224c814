"""Operator commands that talk to the control API: status, audit, drain, undrain, reload, feed.

Each ``*_main(args)`` returns the exit status: 0 done (including "already so"), 1 refused or
failed (safety rule, rejected reload, authentication, server unreachable), 2 usage (bad
arguments, unknown region or service). ``--json`` prints the API's JSON answer instead of text.

Common options: ``--control ADDR:PORT`` (default ``127.0.0.1:9154`` or ``$FILTERDNS_CONTROL``),
``--token-file PATH`` (default ``$FILTERDNS_CONTROL_TOKEN``), ``--json``.

Examples::

    filterdns status
    filterdns audit --limit 20
    filterdns drain fra --service wss --reason "LB maintenance, CHG-1234"
    filterdns drain fra --reason "last one, I know" --force
    filterdns drain fra --reason "kernel upgrade" --for 2h
    filterdns undrain fra --service wss
    filterdns reload
    filterdns feed fra --service wss --loadavg 0.7 --connections 1200 --ttl 5m
    filterdns feed fra --service wss --clear up
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from filterdns.ops.api import DEFAULT_CONTROL, TOKEN_ENV, TokenError, load_token
from filterdns.serve.address import format_hostport, parse_hostport

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT = 30.0


class _Failure(Exception):
    def __init__(self, code: int, message: str, body: Any = None):
        super().__init__(message)
        self.code, self.message, self.body = code, message, body


def _base_url(args: argparse.Namespace) -> str:
    control = getattr(args, "control", None) or os.environ.get("FILTERDNS_CONTROL") or DEFAULT_CONTROL
    try:
        host, port = parse_hostport(control, names=True)
    except ValueError as e:
        raise _Failure(EXIT_USAGE, f"--control: {e}") from None
    return f"http://{format_hostport(host, port)}"


def _token(args: argparse.Namespace) -> str | None:
    try:
        return load_token(getattr(args, "token_file", None))
    except TokenError as e:
        raise _Failure(EXIT_USAGE, str(e)) from None


def _call(args: argparse.Namespace, method: str, path: str, body: dict | None = None,
          auth: bool = False) -> dict:
    """One API call; returns the JSON answer or raises ``_Failure`` with the exit status."""
    url = _base_url(args) + path
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if auth:
        token = _token(args)
        if token is None:
            raise _Failure(EXIT_USAGE, f"no control token: pass --token-file PATH or set ${TOKEN_ENV}")
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {"error": raw.decode("utf-8", "replace").strip() or e.reason}
        code = EXIT_USAGE if e.code in (400, 404) else EXIT_FAILED
        raise _Failure(code, f"{answer.get('error', e.reason)} (HTTP {e.code})", answer) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _Failure(EXIT_FAILED, f"cannot reach the control API at {url}: {reason}") from None
    except ValueError as e:
        raise _Failure(EXIT_FAILED, f"bad answer from the control API at {url}: {e}") from None


def _run(args: argparse.Namespace, fn, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        answer = fn()
    except _Failure as f:
        if getattr(args, "json", False) and f.body is not None:
            print(json.dumps(f.body, indent=1, sort_keys=True), file=out)
        else:
            print(f"error: {f.message}", file=sys.stderr)
            if isinstance(f.body, dict):
                for line in f.body.get("reasons") or f.body.get("problems") or []:
                    print(f"  {line}", file=sys.stderr)
        return f.code
    if getattr(args, "json", False):
        print(json.dumps(answer, indent=1, sort_keys=True), file=out)
    return EXIT_OK


def _actor() -> str:
    try:
        name = getpass.getuser()
    except Exception:
        return "cli"
    clean = "".join(ch for ch in name if ch.isalnum() or ch in "_.@-")[:48]
    return clean or "cli"


def _ago(since: float | None, now: float) -> str:
    if not since:
        return "?"
    s = max(0, int(now - since))
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    if s < 172800:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def _drain_text(d: dict | None, now: float, inherited: bool = False) -> str:
    if not d:
        return "-"
    who = d.get("actor") or d.get("cause") or "?"
    why = d.get("reason") or "no reason"
    return f"{'region ' if inherited else ''}drained by {who} {_ago(d.get('since'), now)}: {why}"


def _load_text(feeds: dict) -> str:
    parts = []
    for key in ("loadavg", "connections", "requests"):
        if key in feeds:
            v = feeds[key]
            parts.append(f"{key}={v:g}" if isinstance(v, (int, float)) else f"{key}={v}")
    if "up" in feeds:
        parts.append(f"feed-up={'yes' if feeds['up'] else 'no'}")
    return " ".join(parts) or "-"


def _until_text(until: float | None, now: float) -> str:
    if not until:
        return ""
    left = max(0, int(until - now))
    return f", expires in {left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else \
        f", expires in {left // 60}m{left % 60:02d}s"


def format_status(data: dict, now: float | None = None) -> str:
    """The ``status`` table: one row per region and service, saying what DNS does and why."""
    now = time.time() if now is None else now
    rows = [("REGION", "SERVICE", "ADDRS", "HEALTH", "DNS", "LOAD", "WHY")]
    notes: list[str] = []
    for rname, region in data.get("regions", {}).items():
        services = region.get("services", {})
        if not services:
            rows.append((rname, "-", "0", "-", "-", _load_text(region.get("feeds", {})),
                         _drain_text(region.get("drain"), now)))
        for sname, svc in services.items():
            feeds = {**region.get("feeds", {}), **svc.get("feeds", {})}
            dns = "held" if svc.get("held") else ("yes" if svc.get("serving") else "NO")
            why = svc.get("why") or "-"
            d = svc.get("drain") or region.get("drain")
            if d and d.get("until") and svc.get("reason") == "operator_drain":
                why += _until_text(d["until"], now)
            if d and svc.get("reason") == "operator_drain":
                why += f" ({_ago(d.get('since'), now)})"
            rows.append((rname, sname, str(len(svc.get("v4", [])) + len(svc.get("v6", []))),
                         svc.get("health", "unknown"), dns, _load_text(feeds), why))
            for rec, st in (svc.get("records") or {}).items():
                notes.append(f"  {rec} sees {rname}/{sname} differently: "
                             f"{'serving' if st.get('serving') else 'not serving'} ({st.get('why')})")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]
    lines.insert(0, f"config generation {data.get('config_generation')}, "
                    f"status generation {data.get('status_generation')}")
    services = data.get("services") or {}
    if services:
        lines.append("")
        for svc, text in services.items():
            lines.append(f"{svc}: {text}")
    if notes:
        lines.append("")
        lines.append("records that see a region differently from their service:")
        lines.extend(notes)
    orphans = data.get("orphans") or []
    if orphans:
        lines.append("")
        lines.append("not in the current config (undrain to remove):")
        for o in orphans:
            target = o["region"] + (f"/{o['service']}" if o.get("service") else "")
            lines.append(f"  {o['kind']} {target}" + (f" by {o.get('actor')}: {o.get('reason') or 'no reason'}"
                                                      if o["kind"] == "drain" else ""))
    if data.get("restore_error"):
        lines.append("")
        lines.append(f"warning: {data['restore_error']}")
    lines += _store_text(data.get("store"), data.get("fleet"))
    return "\n".join(lines)


def _store_text(store: dict | None, fleet: dict | None) -> list[str]:
    """The state store line and, for a fleet, one row per connected instance."""
    if not store or store.get("kind") == "file":
        return []
    lines = [""]
    head = f"state store: {store.get('kind')} {','.join(store.get('endpoints') or [])}{store.get('prefix', '')}"
    if store.get("up"):
        lines.append(f"{head}: up, revision {store.get('revision')}")
    else:
        lines.append(f"{head}: UNREACHABLE for {store.get('stale_seconds', 0):.0f} s "
                     f"({store.get('error') or 'no answer'}): serving the last known state "
                     f"(revision {store.get('revision')}); changes are refused")
    if not fleet:
        return lines
    instances = fleet.get("instances") or {}
    hashes = [v.get("config_hash") for v in instances.values()]
    common = max(set(hashes), key=hashes.count) if hashes else None
    lines.append(f"fleet: {len(instances)} instance(s) connected; health policy {fleet.get('policy')}; "
                 f"drain automation on {fleet.get('leader') or 'nobody'}; this is {fleet.get('instance')}")
    rows = [("INSTANCE", "GENERATION", "CONFIG", "CONTROL", "HEALTH VERDICTS")]
    for name, v in instances.items():
        cfg = str(v.get("config_hash") or "?") + (" (differs)" if v.get("config_hash") != common else "")
        verdicts = " ".join(f"{k}={x}" for k, x in sorted((v.get("verdicts") or {}).items())) or "-"
        rows.append((name + (" *" if v.get("leader") else ""), str(v.get("generation", "?")), cfg,
                     str(v.get("control") or "-"), verdicts))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]
    eff = fleet.get("effective_health") or {}
    if eff:
        lines.append("effective health: " + " ".join(f"{k}={v or 'unknown'}" for k, v in sorted(eff.items())))
    return lines


def audit_main(args: argparse.Namespace) -> int:
    """Print the audit log: this server's, or the whole fleet's with an etcd state store."""
    limit = getattr(args, "limit", 50)
    if not 1 <= limit <= 10000:
        print("error: --limit must be 1-10000", file=sys.stderr)
        return EXIT_USAGE

    def go():
        answer = _call(args, "GET", f"/audit?limit={limit}")
        if not getattr(args, "json", False):
            print(format_audit(answer.get("entries") or []))
        return answer
    return _run(args, go)


def format_audit(entries: list[dict]) -> str:
    """One line per entry: when, which instance, who, what, where, why."""
    rows = []
    for e in entries:
        target = (e.get("region") or "") + (f"/{e['service']}" if e.get("service") else "")
        action = str(e.get("action") or "?") + (" (forced)" if e.get("force") else "")
        why = e.get("reason") or ""
        detail = e.get("detail")
        if e.get("action") == "refused" and isinstance(detail, list):
            why = (why + ": " if why else "") + "; ".join(map(str, detail))
        elif e.get("action") == "reload" and isinstance(detail, dict):
            why = f"generation {detail.get('generation')}, {'ok' if detail.get('ok') else 'rejected'}"
        rows.append((str(e.get("iso") or e.get("time") or "?"), str(e.get("instance") or "-"),
                     str(e.get("actor") or "-"), action, target or "-", why))
    if not rows:
        return "(no audit entries)"
    head = ("TIME", "INSTANCE", "ACTOR", "ACTION", "TARGET", "REASON")
    rows.insert(0, head)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def status_main(args: argparse.Namespace) -> int:
    """Print regions x services: addresses, health, effective up, load, drain state."""
    def go():
        data = _call(args, "GET", "/regions")
        if not getattr(args, "json", False):
            print(format_status(data))
        return data
    return _run(args, go)


def _region_path(region: str, what: str) -> str:
    return f"/regions/{urllib.parse.quote(region, safe='')}/{what}"


def drain_main(args: argparse.Namespace) -> int:
    """Drain a region (or one service of it); refused for the last serving region without --force."""
    body = {"service": getattr(args, "service", None), "reason": getattr(args, "reason", None) or "",
            "force": bool(getattr(args, "force", False)), "actor": _actor()}
    if getattr(args, "duration", None):
        body["for"] = args.duration
    if not body["reason"].strip():
        print("error: --reason is required (say why, for the audit log)", file=sys.stderr)
        return EXIT_USAGE

    def go():
        answer = _call(args, "POST", _region_path(args.region, "drain"), body, auth=True)
        if not getattr(args, "json", False):
            print(answer.get("message", "done") if answer.get("changed", True) else answer.get("message"))
        return answer
    return _run(args, go)


def undrain_main(args: argparse.Namespace) -> int:
    """Undrain a region (or one service of it)."""
    body = {"service": getattr(args, "service", None), "reason": getattr(args, "reason", None) or "",
            "actor": _actor()}

    def go():
        answer = _call(args, "DELETE", _region_path(args.region, "drain"), body, auth=True)
        if not getattr(args, "json", False):
            print(answer.get("message", "done"))
        return answer
    return _run(args, go)


def reload_main(args: argparse.Namespace) -> int:
    """Ask the server to reload its config; prints every reason and exits 1 when rejected."""
    def go():
        answer = _call(args, "POST", "/reload", {"actor": _actor()}, auth=True)
        if not getattr(args, "json", False):
            print(f"reloaded: now serving generation {answer.get('generation')}")
            for r in answer.get("reasons") or []:
                print(f"  {r}")
        return answer
    return _run(args, go)


def feed_main(args: argparse.Namespace) -> int:
    """Push data-feed values (up, connections, requests, loadavg) for a region or service, or
    clear them (--clear KEY, or --clear all)."""
    clear = getattr(args, "clear", None) or []
    values: dict[str, Any] = {}
    up = getattr(args, "up", None)
    if up is not None:
        if str(up).lower() not in ("true", "false", "yes", "no", "1", "0"):
            print(f"error: --up must be true or false (or 1/0), got {up!r}", file=sys.stderr)
            return EXIT_USAGE
        values["up"] = str(up).lower() in ("true", "yes", "1")
    for key in ("connections", "requests", "loadavg"):
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    if clear:
        if values or getattr(args, "ttl", None):
            print("error: --clear cannot be combined with values or --ttl", file=sys.stderr)
            return EXIT_USAGE
        cbody: dict[str, Any] = {"service": getattr(args, "service", None), "actor": _actor(),
                                 "reason": getattr(args, "reason", None) or ""}
        if "all" not in clear:
            cbody["keys"] = clear

        def go_clear():
            answer = _call(args, "DELETE", _region_path(args.region, "feed"), cbody, auth=True)
            if not getattr(args, "json", False):
                print(answer.get("message", "done"))
                for svc, text in (answer.get("dns") or {}).items():
                    print(f"  DNS now: {svc}: {text}")
            return answer
        return _run(args, go_clear)
    if not values:
        print("error: give at least one of --up, --connections, --requests, --loadavg (or --clear KEY)",
              file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"service": getattr(args, "service", None), "values": values}
    if getattr(args, "ttl", None):
        body["ttl"] = args.ttl

    def go():
        answer = _call(args, "POST", _region_path(args.region, "feed"), body, auth=True)
        if not getattr(args, "json", False):
            print(f"{answer.get('message', 'done')}: {json.dumps(answer.get('values', {}), sort_keys=True)}")
            for svc, text in (answer.get("dns") or {}).items():
                print(f"  DNS now: {svc}: {text}")
        return answer
    return _run(args, go)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", metavar="ADDR:PORT", default=None,
                   help=f"control API address (default $FILTERDNS_CONTROL or {DEFAULT_CONTROL})")
    p.add_argument("--token-file", metavar="PATH", default=None,
                   help=f"file holding the control token (default ${TOKEN_ENV})")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer (for scripts)")


def add_subparsers(subparsers: Any) -> None:
    """Register status, drain, undrain, reload and feed; each sets ``func`` to its ``*_main``."""
    p = subparsers.add_parser("status", help="show regions, services, health, drains and load",
                              description=status_main.__doc__)
    _common(p)
    p.set_defaults(func=status_main)

    p = subparsers.add_parser("audit", help="show the audit log (the whole fleet's with an etcd store)",
                              description=audit_main.__doc__)
    p.add_argument("--limit", type=int, default=50, help="how many of the latest entries (default: %(default)s)")
    _common(p)
    p.set_defaults(func=audit_main)

    p = subparsers.add_parser("drain", help="take a region (or one service) out of DNS answers",
                              description=drain_main.__doc__)
    p.add_argument("region", help="region name as configured")
    p.add_argument("--service", help="drain only this service of the region")
    p.add_argument("--reason", help="why (required; goes to the audit log)")
    p.add_argument("--force", action="store_true",
                   help="drain even if it leaves the service with no (or too few) serving regions")
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help="undrain by itself after this long (90s, 15m, 2h, 1d); the expiry is audited")
    _common(p)
    p.set_defaults(func=drain_main)

    p = subparsers.add_parser("undrain", help="put a drained region (or service) back into DNS answers",
                              description=undrain_main.__doc__)
    p.add_argument("region", help="region name")
    p.add_argument("--service", help="undrain only this service's drain")
    p.add_argument("--reason", help="why (goes to the audit log)")
    _common(p)
    p.set_defaults(func=undrain_main)

    p = subparsers.add_parser("reload", help="reload zones and chains in the running server",
                              description=reload_main.__doc__)
    _common(p)
    p.set_defaults(func=reload_main)

    p = subparsers.add_parser("feed", help="push data-feed values (up, load) for a region or service",
                              description=feed_main.__doc__)
    p.add_argument("region", help="region name")
    p.add_argument("--service", help="feed values for this service instead of the whole region")
    p.add_argument("--up", metavar="true|false|1|0", help="up metadata value")
    p.add_argument("--connections", type=float, help="current connections")
    p.add_argument("--requests", type=float, help="current request rate")
    p.add_argument("--loadavg", type=float, help="load average")
    p.add_argument("--ttl", metavar="DURATION",
                   help="drop these values after this long (90s, 5m, 1h), so a dead feeder cannot pin them")
    p.add_argument("--clear", action="append", metavar="KEY",
                   help="clear this feed value (repeatable; 'all' clears every value); audited")
    p.add_argument("--reason", help="why (with --clear; goes to the audit log)")
    _common(p)
    p.set_defaults(func=feed_main)
