"""``filterdns explain``: show how a query is routed, filter by filter.

``explain(state, name, qtype, client)`` is pure: it runs the record's chain once with tracing on
(a fixed-seed RNG, so random filters show one sample outcome) and formats the trace: the client's
location (country, coordinates, matched prefix), each filter's input → output with reasons
("eu-west-1 removed: up=false", "ap-south-1 shed: connections 9000 above high watermark 8000"),
the final addresses and the ECS scope. Runtime status defaults to the configuration alone (no
drains, no feed values); pass a ``Status`` to explain a live situation.

``explain_main`` is the CLI entry point (wired in ``filterdns.cli``); it builds the full
``State`` with ``filterdns.config.build.build_state``, the same function start-up, reload and
``filterdns check`` use.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import sys
from collections import defaultdict
from typing import Any, Iterable

from filterdns.errors import ConfigError
from filterdns.routing.inventory import Status
from filterdns.model import AAAA, A, Client

QTYPES = {"A": A, "AAAA": AAAA}


def client_from(ip: str | None = None, subnet: str | None = None) -> Client:
    """A ``Client`` from ``--client IP`` (a resolver, no ECS) or ``--subnet CIDR`` (ECS)."""
    if subnet is not None:
        net = ipaddress.ip_network(subnet, strict=False)
        addr = net.network_address
        plen = net.prefixlen
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr, plen = addr.ipv4_mapped, max(0, plen - 96)
        return Client(str(addr), addr.version, plen, True)
    if ip is None:
        raise ValueError("give a client address or a subnet")
    a = ipaddress.ip_address(ip)
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return Client(str(a), a.version, 32 if a.version == 4 else 128, False)


def _absname(name: str) -> str:
    n = name.strip().lower()
    return n if n.endswith(".") else n + "."


def _addr_text(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(b) == 4 else socket.AF_INET6, b)


def _net_text(client: Client, plen: int) -> str:
    try:
        return str(ipaddress.ip_network(f"{client.address}/{plen}", strict=False))
    except ValueError:
        return f"/{plen}"


def _group(notes: Iterable[tuple[str, str]]) -> list[str]:
    """Removal reasons, one line per reason (answers sharing a reason are listed together)."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for ans, reason in notes:
        by_reason[reason].append(ans)
    out = []
    for reason, names in by_reason.items():
        who = ", ".join(n for n in names if n != "*")
        out.append(f"{who} {reason}" if who else reason)
    return out


def _state_lines(rec: Any, status: Status) -> list[str]:
    """Each region whose effective state (filterdns.routing.region_state, the one DNS acts on)
    is not plainly "up": serving or not, the state and why."""
    return [f"  {st.region}: {'serving' if st.serving else 'not serving'} [{st.reason}] {st.why}"
            for st in rec.states(status) if st.reason != "up"]


def explain(state: Any, name: str, qtype: str | int, client: Client, status: Status | None = None,
            rng: random.Random | None = None) -> str:
    """The text of ``filterdns explain`` (pure; raises KeyError for a name with no chain)."""
    key = _absname(name)
    rec = state.records.get(key)
    if rec is None:  # a unique record whose name starts with the given labels ("wss-primary")
        matches = [r for k, r in state.records.items() if k.startswith(key)]
        rec = matches[0] if len(matches) == 1 else None
    if rec is None:
        known = ", ".join(sorted(state.records)) or "none"
        raise KeyError(f"{key} is not a dynamic record (known: {known})")
    qt = QTYPES[qtype.upper()] if isinstance(qtype, str) else int(qtype)
    qname = "AAAA" if qt == AAAA else "A"
    status = status if status is not None else Status()
    res = rec.resolve(qt, client, state.geo, status, rng or random.Random(0), trace=True)
    lines: list[str] = []
    w = lines.append
    types = "/".join(t for t, v in QTYPES.items() if v in rec.types)
    w(f"{rec.name} {qname}: service {rec.service}, types {types}, ttl {rec.ttl}, "
      f"ecs {'on' if rec.ecs else 'off'}, chain {rec.chain_name}"
      + (f" ({rec.file}:{rec.line})" if rec.file else ""))
    if qt not in rec.types:
        w(f"  note: the record does not answer {qname}; the server returns NODATA")
    src = (f"ECS subnet {_net_text(client, client.prefix)}" if client.ecs
           else f"resolver address {client.address}")
    w(f"client: {src}")
    loc = res.location if res.location is not None else state.geo.locate(client)
    if not rec.reads_client:
        w("location: not used (no enabled filter reads the client)")
    elif loc.country is None and loc.lat is None:
        w(f"location: unknown (no match in the geo database; matched network "
          f"{_net_text(client, loc.prefix_len)}); routed as if at the default region "
          f"{rec.default_region or '(none configured)'}")
    else:
        coords = f"{loc.lat:.2f}, {loc.lon:.2f}" if loc.lat is not None else "no coordinates"
        sub = f"-{loc.subdivision}" if loc.subdivision else ""
        asn = f", AS{loc.asn}" if loc.asn is not None else ""
        w(f"location: {loc.country or '??'}{sub} (continent {loc.continent or '?'}), {coords}{asn}; "
          f"matched network {_net_text(client, loc.prefix_len)} (prefix {loc.prefix_len})")
    w(f"candidates: {len(rec.candidates)} region(s) with service {rec.service}")
    lines.extend(_state_lines(rec, status))
    for st in res.trace or ():
        head = f"{st.position}. {st.filter}" + (f"({st.options})" if st.options else "")
        if st.disabled:
            w(f"  {head}: disabled, skipped")
            continue
        removed = [n for n in st.before if n not in st.after]
        reordered = not removed and st.before != st.after
        change = (f"{len(st.before)} -> {len(st.after)}" if removed
                  else "reordered" if reordered else "no change")
        w(f"  {head}: {change}")
        notes = dict(st.notes)
        removal_notes = [(a, r) for a, r in st.notes if a == "*" or a in removed]
        for text in _group(removal_notes):
            w(f"       {text}")
        unexplained = [n for n in removed if n not in notes]
        if unexplained:
            w(f"       {', '.join(unexplained)} removed")
        if st.after and (reordered or any(a in notes for a in st.after)) and st.filter != "fallback":
            shown = [f"{a} ({notes[a]})" if a in notes else a for a in st.after]
            w(f"       order: {', '.join(shown)}")
    if res.fallback:
        w(f"fallback: the chain left no answer; fallback '{rec.fallback}' applied")
    if res.addresses:
        w(f"answer ({qname}, ttl {rec.ttl}): {', '.join(res.regions)}")
        for a in res.addresses:
            w(f"  {_addr_text(a)}")
    elif res.regions:
        w(f"answer: NODATA (selected region(s) {', '.join(res.regions)} have no {qname} address)")
    else:
        w("answer: NODATA (no region selected)")
    if not rec.ecs:
        w("ECS scope: /0 (ecs: false - the answer depends only on the resolver, never on ECS)")
        if client.ecs:
            w("note: this record ignores ECS; real queries are routed by the resolver's address, "
              "which --client IP shows")
    elif rec.reads_client:
        if any(s.filter.needs_prefix for s in rec.steps if not s.disabled):
            why = ("the geo database's matched network, raised to what sticky/netfence_prefix need "
                   "of the client's prefix")
        else:
            why = (f"{_net_text(client, res.scope)}: the widest prefix around the client whose every "
                   f"address gets this decision with this region state; database network "
                   f"/{loc.prefix_len}")
        w(f"ECS scope: /{res.scope} ({why}; never above the source prefix /{client.prefix})")
    else:
        w("ECS scope: /0 (no enabled filter reads the client)")
    if any(s.filter.random for s in rec.steps if not s.disabled):
        w("note: the chain has random filters; this is one sample run")
    return "\n".join(lines) + "\n"


def _build(args: Any):
    from filterdns.config.build import build_state

    return build_state(args.zones, args.chains, getattr(args, "geoip", None))


def _live_status(control: str):
    """The running server's drains, health verdicts and feed values (GET /status)."""
    import json
    import urllib.request

    from filterdns.routing.inventory import load_status
    from filterdns.serve.address import format_hostport, parse_hostport

    try:
        where = format_hostport(*parse_hostport(control, names=True))
    except ValueError as e:
        raise OSError(f"--live: {e}") from None
    with urllib.request.urlopen(f"http://{where}/status", timeout=5) as resp:
        return load_status(json.loads(resp.read()))


def explain_main(args: Any) -> int:
    """``filterdns explain NAME [TYPE] (--client IP | --subnet CIDR)``."""
    try:
        client = client_from(getattr(args, "client", None), getattr(args, "subnet", None))
    except ValueError as e:
        print(f"filterdns explain: {e}", file=sys.stderr)
        return 2
    try:
        state = _build(args)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 1
    status = None
    if getattr(args, "live", None):
        try:
            status = _live_status(args.live)
        except OSError as e:
            print(f"filterdns explain: cannot read the running server's state from {args.live}: {e}",
                  file=sys.stderr)
            return 1
    try:
        text = explain(state, args.name, getattr(args, "qtype", "A") or "A", client, status=status)
    except KeyError as e:
        print(f"filterdns explain: {e.args[0]}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
