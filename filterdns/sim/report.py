"""What a simulation run shows, computed from its event log alone, and how it is printed.

The event log (``Model.log``; ``events.csv`` on disk) has one row per observable fact:

    t, event, client, country, region, record, outcome

* ``attempt``: a websocket connection attempt after a lookup of ``record`` (primary/backup);
  ``outcome`` ok | fail (the region is failed) | reject (over capacity) | nodns (no usable answer)
* ``disconnect``: a client lost its connection; ``outcome`` failure | session
* ``degraded`` / ``undegraded``: a client entered / left degraded mode (API only)
* ``region``: a region failed or recovered (simulated); ``control``: a call to the server's
  control API (drain, undrain, feed) and its result
* ``sample``: once a simulated second, the connections a region holds

Peaks (connections, attempts per second) are taken after the ramp-up (``population.ramp``),
so the first connections of the whole population do not count as a herd.

``summarize`` turns the log into the summary (reconnect times per country, peaks per region,
the share of broken clients that hit a failed region again, degraded clients over time);
``format_table`` prints it, side by side for several variants.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict

RECORDS = ("primary", "backup")


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


def series(log, regions: list[str], duration: float) -> dict:
    """Per-second series: connections and attempts per region, degraded clients."""
    n = int(duration) + 1
    conn = {r: [0] * n for r in regions}
    att = {r: [0] * n for r in regions}
    deg = [0] * n
    level = 0
    last = 0
    for t, kind, _c, region, _rec, out in log:
        s = min(int(t), n - 1)
        if kind == "sample":
            conn[region][s] = out
        elif kind == "attempt" and region:
            att[region][s] += 1
        elif kind in ("degraded", "undegraded"):
            while last < s:
                deg[last] = level
                last += 1
            level += 1 if kind == "degraded" else -1
    while last < n:
        deg[last] = level
        last += 1
    return {"connected": conn, "attempts": att, "degraded": deg}


def summarize(log, country_of: list[str], regions: list[str], sc, extra: dict | None = None) -> dict:
    """The summary of one run, from its log (and the scenario's capacities)."""
    return analyze(log, country_of, regions, sc, extra)["summary"]


def analyze(log, country_of: list[str], regions: list[str], sc, extra: dict | None = None) -> dict:
    """{summary, series (per second), reconnect (every reconnect time)} of one run's log."""
    ser = series(log, regions, sc.duration)
    broken_at: dict[int, float] = {}
    hit_again: dict[int, bool] = {}
    hit_backup: dict[int, bool] = {}
    recon: dict[str, list[float]] = defaultdict(list)
    broken_by_country: dict[str, int] = defaultdict(int)
    episodes = 0
    again = 0
    again_backup = 0
    reg = {r: {"attempts": 0, "ok": 0, "fail": 0, "reject": 0} for r in regions}
    nodns = 0
    degraded_ever: set[int] = set()
    control = []
    for t, kind, c, region, rec, out in log:
        if kind == "attempt":
            if region:
                d = reg[region]
                d["attempts"] += 1
                d[out] += 1
            else:
                nodns += 1
            if c in broken_at:
                if out == "ok":
                    recon[country_of[c]].append(t - broken_at.pop(c))
                    again += hit_again.pop(c, False)
                    again_backup += hit_backup.pop(c, False)
                elif out == "fail":
                    hit_again[c] = True
                    if rec == 1:
                        hit_backup[c] = True
        elif kind == "disconnect" and out == "failure":
            broken_at[c] = t
            episodes += 1
            broken_by_country[country_of[c]] += 1
        elif kind == "degraded":
            degraded_ever.add(c)
        elif kind in ("control", "region"):
            if not str(out).startswith("feed "):
                control.append({"t": round(t, 3), "region": region, "what": out})
    # episodes still open at the end: they count for "hit again" too
    again += sum(1 for c in broken_at if hit_again.get(c))
    again_backup += sum(1 for c in broken_at if hit_backup.get(c))
    not_recon: dict[str, int] = defaultdict(int)
    for c in broken_at:
        not_recon[country_of[c]] += 1
    clients: dict[str, int] = defaultdict(int)
    for cc in country_of:
        clients[cc] += 1
    countries = {}
    for cc in sorted(clients, key=lambda x: (-clients[x], x)):
        v = recon.get(cc, [])
        countries[cc] = {"clients": clients[cc], "broken": broken_by_country.get(cc, 0),
                         "reconnected": len(v), "not_reconnected": not_recon.get(cc, 0),
                         "reconnect_p50": _r(percentile(v, 50)), "reconnect_p99": _r(percentile(v, 99))}
    regs = {}
    start = min(int(math.ceil(sc.population["ramp"])), int(sc.duration))  # peaks: after the ramp-up
    for r in regions:
        conn, att = ser["connected"][r][start:], ser["attempts"][r][start:]
        pc = max(conn) if conn else 0
        pa = max(att) if att else 0
        cap = sc.region_spec(r).capacity
        regs[r] = {**reg[r], "capacity": cap, "peak_connections": pc,
                   "peak_connections_at": start + conn.index(pc) if pc else None,
                   "peak_load_pct": round(100.0 * pc / cap, 1) if cap else None,
                   "peak_attempts_per_s": pa, "peak_attempts_at": start + att.index(pa) if pa else None}
    deg = ser["degraded"]
    peak_deg = max(deg) if deg else 0
    all_recon = [x for v in recon.values() for x in v]
    out = {
        "variant": sc.name, "clients": len(country_of), "duration": sc.duration, "seed": sc.seed,
        "countries": countries, "regions": regs,
        "failure": {"broken": episodes, "reconnected": len(all_recon), "not_reconnected": len(broken_at),
                    "reconnect_p50": _r(percentile(all_recon, 50)),
                    "reconnect_p99": _r(percentile(all_recon, 99)),
                    "hit_failed_again": again, "hit_failed_again_share": _r(again / episodes if episodes else 0.0),
                    "hit_failed_again_via_backup": again_backup},
        "degraded": {"peak": peak_deg, "peak_at": deg.index(peak_deg) if peak_deg else None,
                     "clients_ever": len(degraded_ever), "at_end": deg[-1] if deg else 0,
                     "client_seconds": sum(deg)},
        "nodns_attempts": nodns, "control": control,
    }
    if extra:
        out.update(extra)
    return {"summary": out, "series": ser, "reconnect": all_recon}


def _r(x):
    return None if x is None else round(float(x), 3)


def write_events(path: str, log, country_of: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t", "event", "client", "country", "region", "record", "outcome"])
        for t, kind, c, region, rec, out in log:
            w.writerow([f"{t:.4f}", kind, c if c >= 0 else "", country_of[c] if c >= 0 else "", region,
                        RECORDS[rec] if kind in ("attempt", "degraded", "undegraded") else "", out])


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}{unit}"
    return f"{v:,}{unit}"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True))))
    return out


def format_table(summaries: list[dict]) -> str:
    """The summary table(s): one block per variant, then the key numbers side by side."""
    lines: list[str] = []
    for s in summaries:
        f = s["failure"]
        d = s["degraded"]
        lines.append(f"== {s['variant']}: {s['clients']:,} clients, {s['duration']:g} simulated s, seed {s['seed']}")
        dns = s.get("dns", {})
        if dns:
            lines.append(f"DNS: {dns['lookups']:,} lookups, {dns['queries']:,} queries to the server "
                         f"({dns['cache_hit_pct']:.1f}% resolver cache hits), {dns['retransmits']} retransmits, "
                         f"{dns['timeouts']} timeouts; wall {s.get('wall_seconds', 0):.1f} s")
        rows = []
        for cc, v in s["countries"].items():
            rows.append([cc, _fmt(v["clients"]), _fmt(v["broken"]), _fmt(v["reconnected"]),
                         _fmt(v["not_reconnected"]), _fmt(v["reconnect_p50"], " s"), _fmt(v["reconnect_p99"], " s")])
        lines += _table(rows, ["country", "clients", "broken", "reconnected", "not yet", "p50", "p99"])
        lines.append("")
        rows = []
        for r, v in s["regions"].items():
            if not v["attempts"] and not v["peak_connections"]:
                continue
            rows.append([r, _fmt(v["capacity"]), _fmt(v["peak_connections"]), _fmt(v["peak_load_pct"], "%"),
                         _fmt(v["peak_attempts_per_s"]),
                         "-" if v["peak_attempts_at"] is None else f"{v['peak_attempts_at']} s",
                         _fmt(v["attempts"]), _fmt(v["fail"]), _fmt(v["reject"])])
        lines += _table(rows, ["region", "capacity", "peak conns", "peak load", "peak att/s", "at",
                               "attempts", "failed", "rejected"])
        lines.append("")
        share = 100.0 * (f["hit_failed_again_share"] or 0)
        lines.append(f"broken connections: {f['broken']:,}; reconnected {f['reconnected']:,} "
                     f"(p50 {_fmt(f['reconnect_p50'], ' s')}, p99 {_fmt(f['reconnect_p99'], ' s')}), "
                     f"not reconnected {f['not_reconnected']:,}")
        lines.append(f"hit a failed region again before reconnecting: {f['hit_failed_again']:,} ({share:.1f}%), "
                     f"through the backup record: {f['hit_failed_again_via_backup']:,}")
        lines.append(f"degraded mode: peak {d['peak']:,} clients"
                     + (f" at {d['peak_at']} s" if d["peak_at"] is not None else "")
                     + f", {d['clients_ever']:,} clients ever, {d['at_end']:,} at the end, "
                       f"{d['client_seconds']:,} client-seconds")
        if s["control"]:
            lines.append("timeline: " + "; ".join(f"{c['t']:g}s {c['region']} {c['what']}" for c in s["control"]))
        lines.append("")
    if len(summaries) > 1:
        lines.append("== side by side")
        keys = [
            ("reconnect p50 (s)", lambda s: _fmt(s["failure"]["reconnect_p50"])),
            ("reconnect p99 (s)", lambda s: _fmt(s["failure"]["reconnect_p99"])),
            ("not reconnected", lambda s: _fmt(s["failure"]["not_reconnected"])),
            ("hit failed region again", lambda s: f"{100 * (s['failure']['hit_failed_again_share'] or 0):.1f}%"),
            ("... through the backup", lambda s: f"{100 * _share(s['failure']['hit_failed_again_via_backup'], s['failure']['broken']):.1f}%"),
            ("peak degraded clients", lambda s: _fmt(s["degraded"]["peak"])),
        ]
        busiest = _busiest(summaries)
        for r in busiest:
            keys.append((f"{r} peak attempts/s", lambda s, r=r: _fmt(s["regions"][r]["peak_attempts_per_s"])))
            keys.append((f"{r} peak load", lambda s, r=r: _fmt(s["regions"][r]["peak_load_pct"], "%")))
            keys.append((f"{r} rejected", lambda s, r=r: _fmt(s["regions"][r]["reject"])))
        rows = [[k] + [fn(s) for s in summaries] for k, fn in keys]
        lines += _table(rows, [""] + [s["variant"] for s in summaries])
        lines.append("")
    return "\n".join(lines)


def _share(n: int, total: int) -> float:
    return n / total if total else 0.0


def _busiest(summaries: list[dict], n: int = 4) -> list[str]:
    """The regions whose peak attempt rate is highest in any variant."""
    peak: dict[str, int] = defaultdict(int)
    for s in summaries:
        for r, v in s["regions"].items():
            peak[r] = max(peak[r], v["peak_attempts_per_s"])
    return [r for r in sorted(peak, key=lambda r: (-peak[r], r)) if peak[r]][:n]
