"""Schema and loader for everything under ``chains/``: regions, latency tables, chains, records.

``load_chains(dir, zone_origins)`` reads every ``*.yaml`` / ``*.yml`` file in the directory
(sorted by name; any section may be in any file, each item defined once), validates it against
the schema below and returns an immutable ``Chains``, or raises one ``ConfigError`` listing
*every* problem, each with ``file:line:col`` and the path of the bad item. Start-up, reload and
``filterdns check`` all call this function. See docs/chains.md for the reference.

Top-level keys of a file:

* ``default_region``: the region an unknown client is sent to first (and ``fallback:
  default_region`` uses)
* ``regions``: name → region (``code``, ``country``, ``subdivision``, ``continent``, ``lat``,
  ``lon``, ``meta``, ``services``: name → {``v4``, ``v6``, ``meta``})
* ``latency``: table name → {``countries``, ``continents``}: code → region → RTT ms
* ``chains``: name → list of filters (``- up``, ``- select_first_n: {n: 2, disabled: false}``)
* ``records``: owner name → {``service``, ``types``, ``ttl``, ``ecs``, ``chain``, ``fallback``,
  ``meta``}
* ``zones``: zone name → its settings (``dnssec``; ``filterdns.config.zoneconf``)
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from filterdns.routing.chain import FALLBACKS, Candidate, DynamicRecord, Step
from filterdns.errors import ConfigError, Problem, list_config_dir
from filterdns.routing.filters import REGISTRY
from filterdns.routing.filters.base import BuildContext, Filter, region_point
from filterdns.routing.geo import CONTINENTS, COUNTRIES
from filterdns.routing.inventory import Region, Service
from filterdns.model import AAAA, A
from filterdns.config import schema, yamlloc
from filterdns.config.yamlloc import Loc, LocDict, LocList

TOP_KEYS = ("default_region", "regions", "latency", "chains", "records", "health", "zones")
REGION_KEYS = ("code", "country", "subdivision", "continent", "lat", "lon", "meta", "services")
SERVICE_KEYS = ("v4", "v6", "meta")
RECORD_KEYS = ("service", "types", "ttl", "ecs", "chain", "fallback", "meta")
LATENCY_KEYS = ("countries", "continents")
TYPES = {"A": A, "AAAA": AAAA}
MAX_TTL = 2147483647

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$", re.I)
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: metadata key -> schema field (the one table: ``filterdns.config.schema.META``)
META_KEYS = schema.META


@dataclass(frozen=True)
class Chains:
    """Everything loaded from ``chains/``."""

    regions: Mapping[str, Region]
    records: Mapping[str, DynamicRecord]
    default_region: str | None
    files: tuple[str, ...]
    chains: Mapping[str, tuple[Step, ...]] = field(default_factory=lambda: MappingProxyType({}))
    latency_tables: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    health: tuple = ()  # filterdns.config.health.CheckSpec, from the top-level ``health`` section
    #: zone name (absolute, lowercase) -> filterdns.config.zoneconf.DnssecConf, from ``zones``
    zones: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: things that load but are likely mistakes (``filterdns check`` prints them, exit 0)
    warnings: tuple[Problem, ...] = ()


def did_you_mean(word: Any, options: Iterable[str]) -> str:
    m = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


class _Loader:
    """One load: collects problems, then builds. Not reused."""

    def __init__(self, zone_origins: Iterable[str]):
        self.problems: list[Problem] = []
        self.origins = sorted({_absname(o) for o in zone_origins}, key=len, reverse=True)
        self.regions: dict[str, Region] = {}
        self.region_src: dict[str, Loc] = {}
        self.default_region: tuple[str, Loc] | None = None
        self.latency: dict[str, dict] = {}
        self.latency_src: dict[str, Loc] = {}
        self.chain_src: dict[str, tuple[LocList, Loc]] = {}
        self.record_src: dict[str, tuple[str, LocDict, Loc]] = {}  # abs name -> (as written, body, loc)
        self.service_names: set[str] = set()  # every service named, even in a region with problems
        self.health_src: tuple[Any, Loc] | None = None
        self.zones_src: tuple[Any, Loc] | None = None

    def err(self, loc: Loc, msg: str) -> None:
        self.problems.append(loc.problem(msg))

    # -- pass 1: read files and sort items into sections ---------------------------------------
    def read(self, path: Path, display: str) -> None:  # noqa: C901 - one branch per top-level key; goes with the schema table
        try:
            doc = yamlloc.load(str(path), display)
        except ConfigError as e:
            self.problems.extend(e.problems)
            return
        if doc is None:
            return
        if not isinstance(doc, LocDict):
            self.problems.append(Problem(display, 1, 1, "top level must be a mapping of sections"))
            return
        for key, val in doc.items():
            kl, vl = doc.key_loc(key), doc.value_loc(key)
            if key not in TOP_KEYS:
                self.err(kl, f"unknown top-level key {key!r}{did_you_mean(key, TOP_KEYS)}; "
                             f"expected one of {', '.join(TOP_KEYS)}")
                continue
            if key == "health":
                if self.health_src is not None:
                    self.err(kl, f"health already defined at {self.health_src[1]}")
                else:
                    self.health_src = (val, vl)
                continue
            if key == "zones":
                if self.zones_src is not None:
                    self.err(kl, f"zones already defined at {self.zones_src[1]}")
                else:
                    self.zones_src = (val, vl)
                continue
            if key == "default_region":
                if not isinstance(val, str):
                    self.err(vl, f"default_region must be a region name, got {val!r}")
                elif self.default_region is not None:
                    self.err(kl, f"default_region already set at {self.default_region[1]}")
                else:
                    self.default_region = (val, vl)
                continue
            if val is None:
                continue
            if not isinstance(val, LocDict):
                self.err(vl, f"{key} must be a mapping of name to definition")
                continue
            for name, body in val.items():
                nl = val.key_loc(name)
                if not isinstance(name, str) or not name:
                    self.err(nl, f"{key}: name must be a string, got {name!r}")
                    continue
                if key == "regions":
                    self._region(name, body, nl, val.value_loc(name))
                elif key == "latency":
                    self._latency(name, body, nl, val.value_loc(name))
                elif key == "chains":
                    if name in self.chain_src:
                        self.err(nl, f"chain {name} already defined at {self.chain_src[name][1]}")
                    elif not isinstance(body, LocList):
                        self.err(val.value_loc(name), f"chain {name}: must be a list of filters")
                    else:
                        self.chain_src[name] = (body, nl)
                elif key == "records":
                    absn = _absname(name)
                    if absn in self.record_src:
                        self.err(nl, f"record {name} already defined at {self.record_src[absn][2]}")
                    elif not isinstance(body, LocDict):
                        self.err(val.value_loc(name), f"record {name}: must be a mapping")
                    else:
                        self.record_src[absn] = (name, body, nl)

    def _unknown_keys(self, body: LocDict, allowed: tuple[str, ...], what: str) -> None:
        for k in body:
            if k not in allowed:
                self.err(body.key_loc(k), f"{what}: unknown key {k!r}{did_you_mean(k, allowed)}; "
                                         f"expected one of {', '.join(allowed)}")

    def _meta(self, body: LocDict, what: str) -> Mapping[str, Any]:
        m = body.get("meta")
        if m is None:
            return MappingProxyType({})
        if not isinstance(m, LocDict):
            self.err(body.value_loc("meta"), f"{what}, meta: must be a mapping")
            return MappingProxyType({})
        out = {}
        for k, v in m.items():
            fld = META_KEYS.get(k)
            if fld is None:
                self.err(m.key_loc(k), f"{what}, meta: unknown key {k!r}{did_you_mean(k, META_KEYS)}; "
                                       f"expected one of {', '.join(META_KEYS)}")
                continue
            clean, reason = fld.check(v)
            if reason:
                self.err(m.value_loc(k), f"{what}, meta {k}: {reason}")
                continue
            out[k] = _freeze(clean)
        lo, hi = out.get("low_watermark"), out.get("high_watermark")
        if lo is not None and hi is not None and lo > hi:
            self.err(m.value_loc("low_watermark"),
                     f"{what}, meta low_watermark: {lo:g} is above high_watermark {hi:g}")
        return MappingProxyType(out)

    def _region(self, name: str, body: Any, nl: Loc, vl: Loc) -> None:  # noqa: C901 - one branch per region key; goes with the schema table
        what = f"region {name}"
        if name in self.region_src:
            self.err(nl, f"{what} already defined at {self.region_src[name]}")
            return
        if not _NAME.match(name):
            self.err(nl, f"{what}: name must be letters, digits, '-', '_' or '.'")
        if not isinstance(body, LocDict):
            self.err(vl, f"{what}: must be a mapping")
            return
        self.region_src[name] = nl
        self._unknown_keys(body, REGION_KEYS, what)
        ok = True

        def string(key: str, required: bool = False) -> str | None:
            nonlocal ok
            v = body.get(key)
            if v is None:
                if required:
                    self.err(nl, f"{what}: {key} is required")
                    ok = False
                return None
            if not isinstance(v, str) or not v:
                self.err(body.value_loc(key), f"{what}, {key}: must be a string, got {v!r}")
                ok = False
                return None
            return v

        code = string("code") or ""
        country = string("country", required=True)
        if country is not None:
            country = country.upper()
            if country not in COUNTRIES:
                self.err(body.value_loc("country"),
                         f"{what}, country: unknown ISO 3166-1 code {body['country']!r}")
                ok = False
        sub = string("subdivision")
        continent = string("continent")
        if continent is not None:
            continent = continent.upper()
            if continent not in CONTINENTS:
                self.err(body.value_loc("continent"), f"{what}, continent: must be one of "
                                                      f"{', '.join(sorted(CONTINENTS))}, got {continent!r}")
                ok = False
        elif country in COUNTRIES:
            continent = COUNTRIES[country].continent
        lat, lon = body.get("lat"), body.get("lon")
        for key, v, lim in (("lat", lat, 90), ("lon", lon, 180)):
            if v is not None and (not _is_num(v) or not -lim <= v <= lim):
                self.err(body.value_loc(key), f"{what}, {key}: must be a number in -{lim}..{lim}, got {v!r}")
                ok = False
        if (lat is None) != (lon is None):
            self.err(body.key_loc("lat" if lat is not None else "lon"), f"{what}: give both lat and lon, or neither (the country centroid)")
            ok = False
        if lat is None and country in COUNTRIES:
            lat, lon = COUNTRIES[country].lat, COUNTRIES[country].lon
        meta = self._meta(body, what)
        services: dict[str, Service] = {}
        sv = body.get("services")
        if sv is None:
            self.err(nl, f"{what}: services is required (service name -> v4/v6 endpoints)")
            ok = False
        elif not isinstance(sv, LocDict):
            self.err(body.value_loc("services"), f"{what}, services: must be a mapping")
            ok = False
        else:
            for sname, sbody in sv.items():
                s = self._service(name, sname, sbody, sv.key_loc(sname), sv.value_loc(sname))
                if s is not None:
                    services[s.name] = s
        if ok:
            self.regions[name] = Region(name, code, country, sub and sub.upper(), continent,
                                        float(lat) if lat is not None else None,
                                        float(lon) if lon is not None else None,
                                        MappingProxyType(services), meta)

    def _service(self, region: str, name: Any, body: Any, nl: Loc, vl: Loc) -> Service | None:
        what = f"region {region}, service {name}"
        if not isinstance(name, str) or not _NAME.match(name):
            self.err(nl, f"region {region}: service name must be a simple name, got {name!r}")
            return None
        if not isinstance(body, LocDict):
            self.err(vl, f"{what}: must be a mapping with v4 and/or v6")
            return None
        self.service_names.add(name)
        self._unknown_keys(body, SERVICE_KEYS, what)
        fams: dict[str, tuple[str, ...]] = {}
        for key, version in (("v4", 4), ("v6", 6)):
            v = body.get(key)
            if v is None:
                fams[key] = ()
                continue
            items = [v] if isinstance(v, str) else v if isinstance(v, LocList) else None
            if items is None:
                self.err(body.value_loc(key), f"{what}, {key}: must be a list of addresses")
                fams[key] = ()
                continue
            good = []
            for i, a in enumerate(items):
                il = items.item_loc(i) if isinstance(items, LocList) else body.value_loc(key)
                try:
                    ip = ipaddress.ip_address(str(a))
                except ValueError:
                    self.err(il, f"{what}, {key}[{i}]: not an IP address: {a!r}")
                    continue
                if ip.version != version:
                    self.err(il, f"{what}, {key}[{i}]: {a} is not an IPv{version} address")
                    continue
                if ip.compressed in good:
                    self.err(il, f"{what}, {key}[{i}]: duplicate address {a}")
                    continue
                good.append(ip.compressed)
            fams[key] = tuple(good)
        if not fams["v4"] and not fams["v6"] and body.get("v4") is None and body.get("v6") is None:
            self.err(body.loc, f"{what}: needs at least one address in v4 or v6")
            return None
        return Service(name, fams["v4"], fams["v6"], self._meta(body, what))

    def _latency(self, name: str, body: Any, nl: Loc, vl: Loc) -> None:
        what = f"latency table {name}"
        if name in self.latency_src:
            self.err(nl, f"{what} already defined at {self.latency_src[name]}")
            return
        self.latency_src[name] = nl
        if not isinstance(body, LocDict):
            self.err(vl, f"{what}: must be a mapping with countries and/or continents")
            return
        self._unknown_keys(body, LATENCY_KEYS, what)
        table: dict[str, dict[str, dict[str, float]]] = {}
        for section, valid in (("countries", COUNTRIES), ("continents", CONTINENTS)):
            sec = body.get(section)
            table[section] = {}
            if sec is None:
                continue
            if not isinstance(sec, LocDict):
                self.err(body.value_loc(section), f"{what}, {section}: must be a mapping")
                continue
            for code, row in sec.items():
                if not isinstance(code, str) or code.upper() not in valid:
                    kind = "country code" if section == "countries" else "continent code"
                    self.err(sec.key_loc(code), f"{what}, {section}: unknown {kind} {code!r}")
                    continue
                if not isinstance(row, LocDict):
                    self.err(sec.value_loc(code), f"{what}, {section} {code}: must map region -> ms")
                    continue
                out = {}
                for region, ms in row.items():
                    if not _is_num(ms) or ms < 0:
                        self.err(row.value_loc(region),
                                 f"{what}, {section} {code} {region}: RTT must be a number >= 0, got {ms!r}")
                        continue
                    out[region] = float(ms)
                    # region names are checked in pass 2 (regions may be in another file)
                    out.setdefault("\0locs", {})[region] = row.key_loc(region)
                table[section][code.upper()] = out
        self.latency[name] = table

    # -- pass 2: cross references and building --------------------------------------------------
    def build(self, files: tuple[str, ...]) -> Chains:
        default = None
        if self.default_region is not None:
            dname, dl = self.default_region
            if dname not in self.region_src:
                self.err(dl, f"default_region: unknown region {dname!r}{did_you_mean(dname, self.region_src)}")
            else:
                default = dname
        tables = {}
        for tname, table in self.latency.items():
            clean: dict[str, dict] = {}
            for section, rows in table.items():
                clean[section] = {}
                for code, row in rows.items():
                    locs = row.pop("\0locs", {})
                    for region in list(row):
                        if region not in self.region_src:
                            self.err(locs[region], f"latency table {tname}, {section} {code}: unknown region "
                                                   f"{region!r}{did_you_mean(region, self.region_src)}")
                            del row[region]
                    clean[section][code] = MappingProxyType(row)
                clean[section] = MappingProxyType(clean[section])
            tables[tname] = MappingProxyType(clean)
        regions = MappingProxyType(dict(self.regions))
        bctx = BuildContext(regions, default, MappingProxyType(tables))
        chains: dict[str, tuple[Step, ...]] = {}
        for cname, (body, _loc) in self.chain_src.items():
            steps = self._steps(body, f"chain {cname}", bctx)
            if steps is not None:
                chains[cname] = steps
        records: dict[str, DynamicRecord] = {}
        default_origin = region_point(regions[default]) if default in regions else None
        for absn, (written, body, nl) in self.record_src.items():
            rec = self._record(absn, written, body, nl, chains, bctx, default_origin)
            if rec is not None:
                records[absn] = rec
        health = self._health(regions)
        zones = self._zones()
        if self.problems:
            raise ConfigError(sorted(self.problems, key=lambda p: (p.file, p.line or 0, p.col or 0)))
        return Chains(regions, MappingProxyType(records), default, files, MappingProxyType(chains),
                      bctx.latency_tables, health, MappingProxyType(zones), self._warnings(records))

    def _zones(self) -> dict:
        """The ``zones`` section: settings per served zone (``filterdns.config.zoneconf``)."""
        if self.zones_src is None:
            return {}
        from filterdns.config.zoneconf import parse_zones

        node, vl = self.zones_src
        zones, problems = parse_zones(node, vl, self.origins)
        self.problems.extend(problems)
        return zones

    def _warnings(self, records: Mapping[str, DynamicRecord]) -> tuple[Problem, ...]:
        """A record whose chain reads ``up`` while a region of its service has ``up`` at no
        level (record, region, service meta): that region never gets traffic unless a data feed
        sets ``up`` (a Route 53 user expects "no health check = healthy")."""
        readers: dict[tuple[str, str], list[DynamicRecord]] = {}
        for rec in records.values():
            if not rec.uses_up or rec.meta.get("up") is not None:
                continue
            for c in rec.candidates:
                if c.meta.get("up") is None and c.region.meta.get("up") is None:
                    readers.setdefault((c.region.name, rec.service), []).append(rec)
        out = []
        for (region, service), recs in sorted(readers.items()):
            loc = self.region_src.get(region)
            names = ", ".join(f"{r.name.rstrip('.')} ({r.file}:{r.line})" for r in recs)
            msg = (f"warning: region {region}, service {service}: no up value at any level (record, "
                   f"region or service meta), but the up filter of {names} reads it: the region never "
                   f"gets traffic unless a data feed sets up (add meta: {{up: true}})")
            out.append(Problem(loc.file, loc.line, loc.col, msg) if loc else Problem("", None, None, msg))
        return tuple(out)

    def _health(self, regions: Mapping[str, Region]) -> tuple:
        """The ``health`` section: probes per region and service (``filterdns.config.health``),
        every problem at its own YAML position."""
        if self.health_src is None:
            return ()
        from filterdns.config.health import check_against_regions, parse_health

        node, vl = self.health_src
        specs, problems, locs = parse_health(node, vl.file, vl)
        if not problems:
            problems = check_against_regions(specs, regions, vl.file, locs)
        self.problems.extend(problems)
        return tuple(specs)

    def _steps(self, body: LocList, what: str, bctx: BuildContext) -> tuple[Step, ...] | None:
        if not body:
            self.err(body.loc, f"{what}: empty chain (list at least one filter)")
            return None
        steps = []
        ok = True
        for i, entry in enumerate(body):
            pos = i + 1
            el = body.item_loc(i)
            opts_raw: Any = None
            ol = el
            if isinstance(entry, str):
                fname = entry
            elif isinstance(entry, LocDict) and len(entry) == 1:
                fname = next(iter(entry))
                opts_raw = entry[fname]
                ol = entry.value_loc(fname)
            else:
                self.err(el, f"{what}, filter {pos}: must be a filter name or "
                             f"'name: {{options}}', got {entry!r}")
                ok = False
                continue
            cls = REGISTRY.get(fname) if isinstance(fname, str) else None
            if cls is None:
                self.err(el, f"{what}, filter {pos}: unknown filter {fname!r}{did_you_mean(fname, REGISTRY)}")
                ok = False
                continue
            label = f"{what}, filter {pos} ({fname})"
            if opts_raw is not None and not isinstance(opts_raw, LocDict):
                self.err(ol, f"{label}: options must be a mapping, got {opts_raw!r}")
                ok = False
                continue
            step = self._filter(cls, opts_raw or LocDict(), ol, label, pos, bctx)
            if step is None:
                ok = False
            else:
                steps.append(step)
        return tuple(steps) if ok else None

    def _filter(self, cls: type[Filter], raw: LocDict, ol: Loc, label: str, pos: int,
                bctx: BuildContext) -> Step | None:
        schema = {o.name: o for o in cls.OPTIONS}
        allowed = tuple(schema) + ("disabled",)
        opts = cls.defaults()
        disabled = False
        ok = True
        klocs = getattr(raw, "key_loc", lambda k: ol)
        vlocs = getattr(raw, "value_loc", lambda k: ol)
        for k, v in raw.items():
            if k == "disabled":
                if not isinstance(v, bool):
                    self.err(vlocs(k), f"{label}: disabled must be true or false, got {v!r}")
                    ok = False
                disabled = v is True
                continue
            opt = schema.get(k)
            if opt is None:
                hint = f"; options: {', '.join(allowed)}"
                self.err(klocs(k), f"{label}: unknown option {k!r}{did_you_mean(k, allowed)}{hint}")
                ok = False
                continue
            val, reason = opt.coerce(v)
            if reason:
                self.err(vlocs(k), f"{label}: {reason}")
                ok = False
                continue
            opts[k] = val
        if not ok:
            return None
        for key, msg in cls.check(opts, bctx):
            self.err(vlocs(key) if key in raw else ol, f"{label}: {msg}")
            ok = False
        if not ok:
            return None
        return Step(pos, cls(opts, bctx), disabled)

    def _record(self, absn: str, written: str, body: LocDict, nl: Loc, chains: Mapping[str, tuple[Step, ...]],
                bctx: BuildContext, default_origin) -> DynamicRecord | None:
        short = written.rstrip(".")
        what = f"record {short}"
        ok = True
        self._unknown_keys(body, RECORD_KEYS, what)
        zone = next((o for o in self.origins if absn == o or absn.endswith("." + o)), None)
        if not all(_LABEL.match(x) for x in absn.rstrip(".").split(".")) or len(absn) > 254:
            self.err(nl, f"{what}: not a valid DNS name")
            ok = False
        elif zone is None:
            zs = ", ".join(o for o in reversed(self.origins)) or "none loaded"
            self.err(nl, f"{what}: not inside a served zone ({zs})")
            ok = False
        service = body.get("service")
        if service is None:
            self.err(nl, f"{what}: service is required")
            ok = False
        elif not isinstance(service, str):
            self.err(body.value_loc("service"), f"{what}, service: must be a service name, got {service!r}")
            ok = False
        else:
            if service not in self.service_names:
                self.err(body.value_loc("service"), f"{what}, service: no region has service "
                                                    f"{service!r}{did_you_mean(service, self.service_names)}")
                ok = False
        types_raw = body.get("types", ["A", "AAAA"])
        tl = body.value_loc("types")
        items = [types_raw] if isinstance(types_raw, str) else types_raw if isinstance(types_raw, list) else None
        types: set[int] = set()
        if not items or not all(isinstance(t, str) and t.upper() in TYPES for t in items):
            self.err(tl, f"{what}, types: must be A, AAAA or a list of both, got {types_raw!r}")
            ok = False
        else:
            types = {TYPES[t.upper()] for t in items}
        ttl = body.get("ttl", 30)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
            self.err(body.value_loc("ttl"), f"{what}, ttl: must be an integer in 0..{MAX_TTL} seconds, got {ttl!r}")
            ok = False
        ecs = body.get("ecs", True)
        if not isinstance(ecs, bool):
            self.err(body.value_loc("ecs"), f"{what}, ecs: must be true or false, got {ecs!r}")
            ok = False
        fallback = body.get("fallback", "all")
        if fallback not in FALLBACKS:
            self.err(body.value_loc("fallback"),
                     f"{what}, fallback: must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
            ok = False
        elif fallback == "default_region" and bctx.default_region is None:
            self.err(body.value_loc("fallback"), f"{what}, fallback: default_region needs a top-level "
                                                 f"default_region")
            ok = False
        meta = self._meta(body, what)
        chain = body.get("chain")
        steps: tuple[Step, ...] | None = None
        chain_name = ""
        if chain is None:
            self.err(nl, f"{what}: chain is required (a chain name or a list of filters)")
            ok = False
        elif isinstance(chain, str):
            chain_name = chain
            if chain not in self.chain_src:
                self.err(body.value_loc("chain"), f"{what}, chain: unknown chain "
                                                  f"{chain!r}{did_you_mean(chain, self.chain_src)}")
                ok = False
            else:
                steps = chains.get(chain)  # None: the chain itself had problems (reported)
                ok = ok and steps is not None
        elif isinstance(chain, LocList):
            chain_name = f"<{short}>"
            steps = self._steps(chain, what, bctx)
            ok = ok and steps is not None
        else:
            self.err(body.value_loc("chain"), f"{what}, chain: must be a chain name or a list of filters")
            ok = False
        if not ok or steps is None or zone is None:
            return None
        candidates = []
        for r in self.regions.values():
            s = r.services.get(service)
            if s is None:
                continue
            candidates.append(Candidate(
                r,
                tuple(socket.inet_pton(socket.AF_INET, a) for a in s.v4),
                tuple(socket.inet_pton(socket.AF_INET6, a) for a in s.v6),
                s.meta,
            ))
        reads = any(st.filter.reads_client for st in steps if not st.disabled)
        return DynamicRecord(
            name=absn, zone=zone, service=service, types=frozenset(types), ttl=ttl, ecs=ecs,
            chain_name=chain_name, reads_client=reads, steps=steps, candidates=tuple(candidates),
            fallback=fallback, meta=meta, default_region=bctx.default_region,
            default_origin=default_origin, file=nl.file, line=nl.line,
        )


def _absname(name: str) -> str:
    n = name.strip().lower()
    return n if n.endswith(".") else n + "."


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    return v


def load_chains(chains_dir: str | Path, zone_origins: Iterable[str]) -> Chains:
    """Load and validate every YAML file in ``chains_dir``; raise ``ConfigError`` listing every
    problem. Record names must lie inside one of ``zone_origins`` (absolute lowercase names)."""
    d = Path(chains_dir)
    names = list_config_dir(d, "chains")  # missing, not a directory, unreadable: said as such
    loader = _Loader(zone_origins)
    paths = [d / n for n in names if n.endswith((".yaml", ".yml")) and (d / n).is_file()]
    for p in paths:
        loader.read(p, _display(p))
    return loader.build(tuple(str(p) for p in paths))


def _display(p: Path) -> str:
    """How a file is named in messages: relative to the working directory when possible."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
