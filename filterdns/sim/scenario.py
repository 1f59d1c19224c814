"""Scenario files for ``filterdns simulate``: the schema as data, and a loader with positions.

A scenario is one YAML file (see ``scenarios/dublin-fails.yaml`` for a commented example).
Every option has a default except ``population.countries``; ``SCHEMA`` below is the table the
loader, the docs and the tests read. Errors name ``file:line:col`` and the option, and every
problem is collected before the load fails once (``ConfigError``), as ``filterdns check`` does.

Top level::

    seed: 1                  # one seed drives everything random in the simulator
    duration: 600            # simulated seconds
    step: 0.1                # lookups due within one step go to the server together
    service: wss             # the service whose regions the clients connect to
    records: {primary: wss-primary.example.com, backup: wss-backup.example.com}
    population: {...}        # clients per country (required), ramp-up, subnets
    resolvers: {...}         # clients per resolver, ECS source prefix, TTL clamps
    client: {...}            # websocket client: failure detection, retries, degraded mode
    regions: {default: {capacity: .., accept_rate: ..}, eu-west-2: {...}}
    health: {...}            # simulated health checker driving drains on the real server
    feeds: {...}             # connection counts pushed to the real server (shed_load)
    events: [...]            # the timeline: fail / recover / drain / undrain / feed
    variants: [...]          # for --compare: named overrides, including the server's chains

Variants: each item has a ``name`` and any of the sections above as overrides (merged into
the scenario, mappings key by key, lists replaced), plus ``chains:``, overrides merged into the
server's chains configuration (e.g. ``{chains: {wss-backup: [...]}}`` or
``{records: {wss-primary.example.com: {ttl: 60}}}``); a variant with ``chains`` gets its own
server, started on a copy of the chains directory with the overrides applied.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from filterdns.config.yamlloc import Loc, LocDict, LocList, load
from filterdns.errors import ConfigError, Problem

REQUIRED = object()


@dataclass(frozen=True, slots=True)
class Option:
    """One scalar option: type, default, allowed range, and what it means."""

    type: type | tuple[type, ...]
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None


NUM = (int, float)

#: section -> option -> Option. ``regions`` entries and ``events``/``variants`` items are
#: checked by their own tables below.
SCHEMA: Mapping[str, Mapping[str, Option]] = {
    "": {
        "seed": Option(int, 1, "seed of every random choice in the simulator and of the started server"),
        "duration": Option(NUM, 600, "simulated seconds", 1, 7 * 86400),
        "step": Option(NUM, 0.1, "seconds of simulated time whose DNS lookups are sent together", 0.001, 10),
        "service": Option(str, "wss", "the service the clients connect to"),
    },
    "records": {
        "primary": Option(str, "wss-primary.example.com", "the record a client tries first"),
        "backup": Option(str, "wss-backup.example.com", "the record a client tries after the primary"),
    },
    "population": {
        "total": Option((int, type(None)), None, "scale the country table to this many clients", 1, 2_000_000),
        "ramp": Option(NUM, 30, "clients first connect at uniformly random times in [0, ramp) s", 0, 86400),
        "samples": Option(int, 128, "geo database networks sampled per country (clients get /24s inside them)",
                          1, 100_000),
    },
    "resolvers": {
        "clients_per_resolver": Option(int, 100, "clients of one country share a resolver, this many each", 1,
                                       10_000_000),
        "ecs_source": Option(int, 24, "ECS source prefix the resolvers send (IPv4)", 1, 32),
        "min_ttl": Option(NUM, 0, "resolvers keep answers at least this long", 0, 86400),
        "max_ttl": Option(NUM, 86400, "and at most this long", 0, 7 * 86400),
    },
    "client": {
        "session": Option(NUM, 0, "mean websocket lifetime in s (exponential); 0 = held until it breaks",
                          0, 7 * 86400),
        "ping_interval": Option(NUM, 15, "websocket ping interval: a dead connection is noticed after a "
                                "uniform [timeout, interval + timeout) delay", 0, 3600),
        "ping_timeout": Option(NUM, 5, "websocket ping timeout", 0, 3600),
        "connect_timeout": Option(NUM, 5, "an attempt to a failed region fails after this long", 0, 600),
        "reject_delay": Option(NUM, 0.2, "an over-capacity region rejects after this long", 0, 600),
        "retry_sequence": Option(list, ["primary", "backup"], "records tried in turn, one per attempt"),
        "retry_base": Option(NUM, 1, "backoff base: attempt k waits uniform [0, min(cap, base * multiplier^k))",
                             0, 3600),
        "retry_cap": Option(NUM, 30, "backoff cap (s)", 0, 86400),
        "retry_multiplier": Option(NUM, 2, "backoff multiplier", 1, 100),
        "degraded_after": Option(int, 6, "failed attempts in a row before degraded mode (API only)", 1, 10_000),
        "degraded_retry": Option(NUM, 60, "in degraded mode, try websockets again after uniform [0, this) s",
                                 0, 86400),
    },
    "region": {  # one entry of `regions:` (and `regions.default`)
        "capacity": Option(int, 10_000, "concurrent connections a region accepts; more are rejected", 0,
                           1_000_000_000),
        "accept_rate": Option(NUM, 500, "new connections a region accepts per second; more are rejected", 0,
                              1_000_000_000),
    },
    "health": {
        "enabled": Option(bool, True, "probe regions and drain/undrain them on the server's control API"),
        "interval": Option((int, float, type(None)), None, "seconds between probes (default: the chains "
                           "config's health check for the service, else 5)", 0.01, 3600),
        "fall": Option((int, type(None)), None, "failed probes in a row before a drain (default: config, else 3)",
                       1, 1000),
        "rise": Option((int, type(None)), None, "good probes in a row before the undrain (default: config, else 2)",
                       1, 1000),
    },
    "feeds": {
        "enabled": Option(bool, True, "push each region's connection count to the server (shed_load reads it)"),
        "interval": Option(NUM, 10, "seconds between feeds", 0.1, 86400),
        "scale": Option(NUM, 1, "real connections one simulated client stands for", 0, 1_000_000),
    },
}

EVENT_ACTIONS = ("fail", "recover", "drain", "undrain", "feed")
EVENT_KEYS = {"at", *EVENT_ACTIONS, "service", "mode", "reason", "values", "force"}
FAIL_MODES = ("timeout", "refuse")
SECTIONS = ("records", "population", "resolvers", "client", "regions", "health", "feeds", "events")


@dataclass(frozen=True, slots=True)
class Event:
    """One timeline item: ``{at: 120, fail: eu-west-1}`` and the like."""

    at: float
    action: str  # fail | recover | drain | undrain | feed
    region: str
    service: str | None = None
    mode: str = "timeout"  # fail: timeout (connects hang) | refuse (connects fail at once)
    reason: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    force: bool = False
    loc: str = ""


@dataclass(frozen=True, slots=True)
class RegionSpec:
    capacity: int
    accept_rate: float


@dataclass(frozen=True)
class Scenario:
    """A validated scenario (one variant)."""

    name: str
    file: str
    seed: int
    duration: float
    step: float
    service: str
    records: Mapping[str, str]  # primary/backup -> owner name
    countries: Mapping[str, int]  # country -> clients (after population.total scaling)
    population: Mapping[str, Any]
    resolvers: Mapping[str, Any]
    client: Mapping[str, Any]
    region_default: RegionSpec
    regions: Mapping[str, RegionSpec]
    health: Mapping[str, Any]
    feeds: Mapping[str, Any]
    events: tuple[Event, ...]
    chains_overrides: Mapping[str, Any] | None = None
    locs: Mapping[str, str] = field(default_factory=dict)  # "regions.eu-west-1" -> file:line:col

    def region_spec(self, name: str) -> RegionSpec:
        return self.regions.get(name, self.region_default)

    @property
    def clients(self) -> int:
        return sum(self.countries.values())


@dataclass(frozen=True)
class ScenarioFile:
    """The file as loaded: the base scenario and its variants (the base first)."""

    path: str
    variants: tuple[Scenario, ...]

    @property
    def base(self) -> Scenario:
        return self.variants[0]


# ------------------------------------------------------------------------------------ loading

class _Checker:
    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def err(self, loc: Loc, msg: str) -> None:
        p = loc.problem(msg)
        if p not in self.problems:
            self.problems.append(p)

    def mapping(self, node: Any, where: Loc, what: str) -> LocDict | None:
        if node is None:
            return None
        if not isinstance(node, dict):
            self.err(getattr(node, "loc", where), f"{what}: must be a mapping, got {_show(node)}")
            return None
        return node

    def option(self, opt: Option, value: Any, loc: Loc, what: str) -> Any:
        if opt.type is list:
            if not isinstance(value, list):
                self.err(loc, f"{what}: must be a list, got {_show(value)}")
                return opt.default
            return list(value)
        types = opt.type if isinstance(opt.type, tuple) else (opt.type,)
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            self.err(loc, f"{what}: must be {names}, got {_show(value)}")
            return opt.default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                self.err(loc, f"{what}: must be a finite number, got {value!r}")
                return opt.default
            if opt.min is not None and value < opt.min:
                self.err(loc, f"{what}: must be >= {opt.min:g}, got {value!r}")
                return opt.default
            if opt.max is not None and value > opt.max:
                self.err(loc, f"{what}: must be <= {opt.max:g}, got {value!r}")
                return opt.default
        if opt.choices is not None and value not in opt.choices:
            self.err(loc, f"{what}: must be one of {', '.join(map(str, opt.choices))}, got {value!r}")
            return opt.default
        return value

    def section(self, table: Mapping[str, Option], node: LocDict | None, where: Loc, prefix: str) -> dict:
        out = {k: copy.deepcopy(o.default) for k, o in table.items()}
        if node is None:
            return out
        for k, v in node.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in table:
                self.err(node.key_loc(k), f"{name}: unknown option (known: {', '.join(table)})")
                continue
            out[k] = self.option(table[k], v, node.value_loc(k), name)
        return out


def _show(v: Any) -> str:
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return repr(v)


def _merge(base: Any, over: Any) -> Any:
    """Deep-merge ``over`` into a copy of ``base``: mappings key by key, everything else replaced.
    Positions are kept (an overridden value keeps the override's position)."""
    if isinstance(base, LocDict) and isinstance(over, dict):
        out = LocDict(base)
        out.loc = base.loc
        out._klocs, out._vlocs = dict(base._klocs), dict(base._vlocs)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
            if isinstance(over, LocDict):
                out._klocs[k], out._vlocs[k] = over.key_loc(k), over.value_loc(k)
        return out
    return over


def load_scenario(path: str) -> ScenarioFile:
    """Load and validate a scenario file; raise ``ConfigError`` listing every problem."""
    raw = load(path)
    file = str(path)
    top_loc = Loc(file, 1, 1)
    if not isinstance(raw, LocDict):
        raise ConfigError([top_loc.problem(f"a scenario must be a mapping, got {_show(raw)}")])
    ck = _Checker(file)
    known_top = set(SCHEMA[""]) | set(SECTIONS) | {"variants", "name"}
    for k in raw:
        if k not in known_top:
            ck.err(raw.key_loc(k), f"{k}: unknown section (known: {', '.join(sorted(known_top))})")
    variants_raw = raw.get("variants")
    base_raw = LocDict({k: v for k, v in raw.items() if k != "variants"})
    base_raw.loc, base_raw._klocs, base_raw._vlocs = raw.loc, raw._klocs, raw._vlocs
    out = [_build(ck, base_raw, str(raw.get("name") or "base"), None)]
    names = {out[0].name}
    if variants_raw is not None:
        if not isinstance(variants_raw, LocList):
            ck.err(raw.value_loc("variants"), f"variants: must be a list, got {_show(variants_raw)}")
        else:
            for i, v in enumerate(variants_raw):
                vl = variants_raw.item_loc(i)
                if not isinstance(v, LocDict):
                    ck.err(vl, f"variants[{i}]: must be a mapping with a name, got {_show(v)}")
                    continue
                name = v.get("name")
                if not isinstance(name, str) or not name.strip():
                    ck.err(v.loc, f"variants[{i}]: needs a name (a non-empty string)")
                    continue
                if name in names:
                    ck.err(v.value_loc("name"), f"variants[{i}]: name {name!r} used twice")
                    continue
                names.add(name)
                bad = [k for k in v if k not in set(SECTIONS) | set(SCHEMA[""]) | {"name", "chains"}]
                for k in bad:
                    ck.err(v.key_loc(k), f"variants[{i}] ({name}).{k}: unknown section")
                over = LocDict({k: val for k, val in v.items() if k not in bad and k not in ("name", "chains")})
                over.loc, over._klocs, over._vlocs = v.loc, v._klocs, v._vlocs
                chains = v.get("chains")
                if chains is not None and not isinstance(chains, dict):
                    ck.err(v.value_loc("chains"), f"variants[{i}] ({name}).chains: must be a mapping of "
                                                  "chains-config sections, got " + _show(chains))
                    chains = None
                out.append(_build(ck, _merge(base_raw, over), name, _plain(chains) if chains else None))
    if ck.problems:
        raise ConfigError(ck.problems)
    return ScenarioFile(file, tuple(out))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _build(ck: _Checker, raw: LocDict, name: str, chains: Any) -> Scenario:
    top = {k: o.default for k, o in SCHEMA[""].items()}
    for k in SCHEMA[""]:
        if k in raw:
            top[k] = ck.option(SCHEMA[""][k], raw[k], raw.value_loc(k), k)
    locs: dict[str, str] = {}

    def sec(key: str, table: str | None = None) -> tuple[dict, LocDict | None]:
        node = ck.mapping(raw.get(key), raw.value_loc(key), key)
        return ck.section(SCHEMA[table or key], node, raw.value_loc(key), key), node

    records, _ = sec("records")
    pnode = ck.mapping(raw.get("population"), raw.value_loc("population"), "population")
    countries: dict[str, int] = {}
    if pnode is None:
        ck.err(raw.loc, "population: missing (a table of clients per country: population: {countries: {IE: 5000}})")
        population = {k: o.default for k, o in SCHEMA["population"].items()}
    else:
        cn = pnode.get("countries")
        rest = LocDict({k: v for k, v in pnode.items() if k != "countries"})
        rest.loc, rest._klocs, rest._vlocs = pnode.loc, pnode._klocs, pnode._vlocs
        population = ck.section(SCHEMA["population"], rest, pnode.loc, "population")
        if not isinstance(cn, dict) or not cn:
            ck.err(pnode.value_loc("countries") if cn is not None else pnode.loc,
                   "population.countries: must be a non-empty mapping of country code -> clients")
        else:
            from filterdns.routing.geo import COUNTRIES
            for cc, n in cn.items():
                where = f"population.countries.{cc}"
                if not isinstance(cc, str) or cc.upper() not in COUNTRIES:
                    ck.err(cn.key_loc(cc), f"{where}: not an ISO 3166-1 alpha-2 country code")
                    continue
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    ck.err(cn.value_loc(cc), f"{where}: must be an integer >= 0, got {_show(n)}")
                    continue
                if n:
                    countries[cc.upper()] = n
                    locs[where] = str(cn.key_loc(cc))
            total = population.get("total")
            if countries and total:
                countries = _scale(countries, total)
    resolvers, rnode = sec("resolvers")
    if resolvers["max_ttl"] < resolvers["min_ttl"]:
        ck.err(rnode.loc if rnode is not None else raw.loc, "resolvers: max_ttl must be >= min_ttl")
    client, cnode = sec("client")
    seq = client["retry_sequence"]
    if not seq or any(x not in ("primary", "backup") for x in seq):
        where = cnode.value_loc("retry_sequence") if cnode is not None else raw.loc
        ck.err(where, f"client.retry_sequence: must be a non-empty list of primary/backup, got {seq!r}")
        client["retry_sequence"] = ["primary", "backup"]
    health, _ = sec("health")
    feeds, _ = sec("feeds")
    # regions: default + per region
    rd = RegionSpec(**{k: o.default for k, o in SCHEMA["region"].items()})
    regions: dict[str, RegionSpec] = {}
    rgn = ck.mapping(raw.get("regions"), raw.value_loc("regions"), "regions")
    if rgn is not None:
        if "default" in rgn:
            d = ck.mapping(rgn["default"], rgn.value_loc("default"), "regions.default")
            rd = RegionSpec(**ck.section(SCHEMA["region"], d, rgn.value_loc("default"), "regions.default"))
        for rname, node in rgn.items():
            if rname == "default":
                continue
            d = ck.mapping(node, rgn.value_loc(rname), f"regions.{rname}")
            vals = {"capacity": rd.capacity, "accept_rate": rd.accept_rate}
            if d is not None:
                for k, v in d.items():
                    if k not in SCHEMA["region"]:
                        ck.err(d.key_loc(k), f"regions.{rname}.{k}: unknown option (known: capacity, accept_rate)")
                        continue
                    vals[k] = ck.option(SCHEMA["region"][k], v, d.value_loc(k), f"regions.{rname}.{k}")
            regions[str(rname)] = RegionSpec(**vals)
            locs[f"regions.{rname}"] = str(rgn.key_loc(rname))
    events = _events(ck, raw, top["duration"], locs)
    return Scenario(name=name, file=ck.file, seed=top["seed"], duration=float(top["duration"]),
                    step=float(top["step"]), service=top["service"], records=records, countries=countries,
                    population=population, resolvers=resolvers, client=client, region_default=rd,
                    regions=regions, health=health, feeds=feeds, events=events, chains_overrides=chains,
                    locs=locs)


def _scale(countries: dict[str, int], total: int) -> dict[str, int]:
    """Scale the table to ``total`` clients, largest remainders first (the sum is exact)."""
    s = sum(countries.values())
    exact = {cc: n * total / s for cc, n in countries.items()}
    out = {cc: int(v) for cc, v in exact.items()}
    left = total - sum(out.values())
    for cc in sorted(exact, key=lambda c: (-(exact[c] - out[c]), c))[:left]:
        out[cc] += 1
    return {cc: n for cc, n in out.items() if n}


def _events(ck: _Checker, raw: LocDict, duration: float, locs: dict) -> tuple[Event, ...]:
    node = raw.get("events")
    if node is None:
        return ()
    if not isinstance(node, LocList):
        ck.err(raw.value_loc("events"), f"events: must be a list, got {_show(node)}")
        return ()
    out = []
    for i, ev in enumerate(node):
        el = node.item_loc(i)
        what = f"events[{i}]"
        if not isinstance(ev, LocDict):
            ck.err(el, f"{what}: must be a mapping like {{at: 120, fail: eu-west-1}}, got {_show(ev)}")
            continue
        ok = True
        for k in ev:
            if k not in EVENT_KEYS:
                ck.err(ev.key_loc(k), f"{what}.{k}: unknown key (known: {', '.join(sorted(EVENT_KEYS))})")
                ok = False
        acts = [a for a in EVENT_ACTIONS if a in ev]
        if len(acts) != 1:
            ck.err(ev.loc, f"{what}: needs exactly one of {', '.join(EVENT_ACTIONS)} (naming a region)")
            continue
        act = acts[0]
        at = ev.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not (0 <= at <= duration):
            ck.err(ev.value_loc("at") if "at" in ev else ev.loc,
                   f"{what}.at: must be a time in [0, duration={duration:g}] s, got {_show(at)}")
            ok = False
        region = ev[act]
        if not isinstance(region, str) or not region:
            ck.err(ev.value_loc(act), f"{what}.{act}: must name a region, got {_show(region)}")
            ok = False
        service = ev.get("service")
        if service is not None and not isinstance(service, str):
            ck.err(ev.value_loc("service"), f"{what}.service: must be a string, got {_show(service)}")
            ok = False
        mode = ev.get("mode", "timeout")
        if "mode" in ev and act != "fail":
            ck.err(ev.key_loc("mode"), f"{what}.mode: only for fail events")
            ok = False
        elif mode not in FAIL_MODES:
            ck.err(ev.value_loc("mode"), f"{what}.mode: must be one of {', '.join(FAIL_MODES)}, got {mode!r}")
            ok = False
        values = ev.get("values", {})
        if act == "feed":
            if not isinstance(values, dict) or not values:
                ck.err(ev.value_loc("values") if "values" in ev else ev.loc,
                       f"{what}.values: a feed needs values, e.g. {{connections: 9000}}")
                ok = False
        elif "values" in ev:
            ck.err(ev.key_loc("values"), f"{what}.values: only for feed events")
            ok = False
        if act in ("fail", "recover") and service is not None:
            ck.err(ev.key_loc("service"), f"{what}.service: fail/recover apply to the simulated service; "
                                          "drop this key")
            ok = False
        force = ev.get("force", False)
        if not isinstance(force, bool):
            ck.err(ev.value_loc("force"), f"{what}.force: must be true or false")
            ok = False
        reason = ev.get("reason", "")
        if not isinstance(reason, str):
            ck.err(ev.value_loc("reason"), f"{what}.reason: must be a string")
            ok = False
        if ok:
            out.append(Event(float(at), act, region, service, mode, reason, _plain(values), force,
                             str(ev.value_loc(act))))
            locs[f"events[{i}]"] = str(ev.value_loc(act))
    out.sort(key=lambda e: e.at)  # stable: same-time events keep file order
    return tuple(out)


def check_against_config(sc: Scenario, regions: Mapping[str, Any], records: Mapping[str, Any]) -> None:
    """Cross-check names against the server's configuration; raise ``ConfigError`` with positions."""
    problems: list[Problem] = []

    def at(key: str) -> Loc:
        text = sc.locs.get(key, f"{sc.file}:1:1")
        f, line, col = text.rsplit(":", 2)
        return Loc(f, int(line), int(col))

    for key, rec in sc.records.items():
        fq = rec.rstrip(".").lower() + "."
        r = records.get(fq)
        if r is None:
            problems.append(Problem(sc.file, None, None, f"records.{key}: {rec} is not a dynamic record of the "
                                    f"server's config (known: {', '.join(sorted(records))})"))
        elif r.service != sc.service:
            problems.append(Problem(sc.file, None, None, f"records.{key}: {rec} answers service {r.service}, "
                                    f"not {sc.service}"))
    for name in sc.regions:
        if name not in regions:
            problems.append(at(f"regions.{name}").problem(f"regions.{name}: no such region in the server's config"))
    for ev in sc.events:
        if ev.region not in regions:
            f, line, col = ev.loc.rsplit(":", 2)
            problems.append(Problem(f, int(line), int(col), f"event {ev.action} at {ev.at:g}s: no region "
                                    f"{ev.region!r} in the server's config"))
    if problems:
        raise ConfigError(problems)
