"""The ``health:`` section of a chains file: checks per region and service, validated against
the schema table ``filterdns.config.schema.HEALTH`` (the probes themselves run in
``filterdns.ops.health``; config does not import ops).

Every problem is collected and carries the YAML position of the bad item directly
(``chains/edge.yaml:14:35: health.checks[2]: port must be an integer in 1..65535, got 0``);
plain dicts and lists (tests, other callers) give the file without a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from filterdns.config.schema import HEALTH, HEALTH_DEFAULTABLE, HTTP_ONLY, REQUIRED
from filterdns.config.yamlloc import Loc, LocDict, LocList
from filterdns.errors import ConfigError, Problem


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One validated health check."""

    region: str
    service: str
    type: str = "tcp"
    address: str | None = None
    port: int = 0
    path: str = "/"
    host: str | None = None
    expect: tuple[int, ...] = (200,)
    verify_tls: bool = True
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3

    @property
    def name(self) -> str:
        target = f"{self.address or '<service address>'}:{self.port}"
        return f"{self.region}/{self.service} {self.type} {target}"


class _Where:
    """Positions in a health node: the YAML's own when it has them, else the file alone."""

    def __init__(self, file: str, base: Loc | None):
        self.file, self.base = file, base

    def problem(self, loc: Loc | None, message: str) -> Problem:
        loc = loc or self.base
        if loc is None:
            return Problem(self.file, None, None, message)
        return Problem(loc.file, loc.line, loc.col, message)

    @staticmethod
    def value(node: Any, key: Any, default: Loc | None) -> Loc | None:
        return node.value_loc(key) if isinstance(node, LocDict) and key in node else default

    @staticmethod
    def key(node: Any, key: Any, default: Loc | None) -> Loc | None:
        return node.key_loc(key) if isinstance(node, LocDict) and key in node else default

    @staticmethod
    def item(node: Any, i: int, default: Loc | None) -> Loc | None:
        return node.item_loc(i) if isinstance(node, LocList) else default


def parse_health(node: Any, file: str = "<health>", loc: Loc | None = None) -> tuple[list[CheckSpec], list[Problem], list[Loc | None]]:
    """Validate a ``health:`` node into (specs, problems, the position of each spec)."""
    w = _Where(file, loc)
    if node is None:
        return [], [], []
    if not isinstance(node, Mapping):
        return [], [w.problem(loc, "health: must be a mapping with 'checks' (and optional 'defaults')")], []
    problems: list[Problem] = []
    for key in sorted((k for k in node if k not in ("defaults", "checks")), key=str):
        problems.append(w.problem(w.key(node, key, loc), f"health.{key}: unknown key (expected 'defaults' and 'checks')"))
    defaults = _defaults(node, w, loc, problems)
    checks = node.get("checks") or []
    if not isinstance(checks, list):
        problems.append(w.problem(w.value(node, "checks", loc), "health.checks: must be a list of checks"))
        checks = []
    specs: list[CheckSpec] = []
    locs: list[Loc | None] = []
    seen: set = set()
    for i, check in enumerate(checks):
        where = f"health.checks[{i}]"
        cloc = w.item(checks, i, w.value(node, "checks", loc))
        spec = _check(check, where, cloc, defaults, w, problems)
        if spec is None:
            continue
        key = (spec.region, spec.service, spec.type, spec.address, spec.port, spec.path)
        if key in seen:
            problems.append(w.problem(cloc, f"{where}: duplicate of an earlier check ({spec.name})"))
            continue
        seen.add(key)
        specs.append(spec)
        locs.append(cloc)
    return specs, problems, locs


def _defaults(node: Mapping, w: _Where, loc: Loc | None, problems: list[Problem]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dnode = node.get("defaults") or {}
    if not isinstance(dnode, Mapping):
        problems.append(w.problem(w.value(node, "defaults", loc), "health.defaults: must be a mapping"))
        return out
    for key, value in dnode.items():
        if key not in HEALTH_DEFAULTABLE:
            problems.append(w.problem(w.key(dnode, key, loc), f"health.defaults.{key}: not an option that can "
                                      f"have a default (options: {', '.join(sorted(HEALTH_DEFAULTABLE))})"))
            continue
        clean, reason = HEALTH[key].coerce(value)
        if reason:
            problems.append(w.problem(w.value(dnode, key, loc), f"health.defaults: {reason}"))
        else:
            out[key] = clean
    return out


def _check(check: Any, where: str, cloc: Loc | None, defaults: Mapping[str, Any], w: _Where,
           problems: list[Problem]) -> CheckSpec | None:
    if not isinstance(check, Mapping):
        problems.append(w.problem(cloc, f"{where}: must be a mapping"))
        return None
    before = len(problems)
    for key in check:
        if key not in HEALTH:
            problems.append(w.problem(w.key(check, key, cloc), f"{where}.{key}: unknown option (options: {', '.join(HEALTH)})"))
    values: dict[str, Any] = {}
    for key, fld in HEALTH.items():
        if key in check:
            clean, reason = fld.coerce(check[key])
            if reason:
                problems.append(w.problem(w.value(check, key, cloc), f"{where}: {reason}"))
            else:
                values[key] = clean
        elif key in defaults:
            values[key] = defaults[key]
        elif fld.default is REQUIRED:
            problems.append(w.problem(cloc, f"{where}: {key} is required"))
        else:
            values[key] = fld.default
    if len(problems) > before:
        return None
    if values["timeout"] > values["interval"]:
        problems.append(w.problem(w.value(check, "timeout", cloc), f"{where}: timeout ({values['timeout']:g}) "
                                  f"must not exceed interval ({values['interval']:g})"))
        return None
    if values["type"] == "tcp" and any(k in check for k in HTTP_ONLY):
        first = next(k for k in check if k in HTTP_ONLY)
        problems.append(w.problem(w.key(check, first, cloc),
                                  f"{where}: {', '.join(HTTP_ONLY[:-1])} and {HTTP_ONLY[-1]} apply to http/https checks only"))
        return None
    return CheckSpec(**values)


def parse_health_config(node: Any, file: str = "<health>") -> list[CheckSpec]:
    """``parse_health`` that raises one ``ConfigError`` listing every problem."""
    specs, problems, _ = parse_health(node, file)
    if problems:
        raise ConfigError(problems)
    return specs


def check_against_regions(specs: list[CheckSpec], regions: Mapping[str, Any], file: str = "<health>",
                          locs: list[Loc | None] | None = None) -> list[Problem]:
    """Cross-check specs against the configured regions (unknown region/service, no address)."""
    w = _Where(file, None)
    problems = []
    for i, s in enumerate(specs):
        where = f"health.checks[{i}]"
        loc = locs[i] if locs is not None and i < len(locs) else None
        region = regions.get(s.region)
        if region is None:
            problems.append(w.problem(loc, f"{where}: unknown region {s.region!r}"))
        elif s.service not in region.services:
            problems.append(w.problem(loc, f"{where}: region {s.region} has no service {s.service!r}"))
        elif s.address is None and not (region.services[s.service].v4 or region.services[s.service].v6):
            problems.append(w.problem(loc, f"{where}: no address given and {s.region}/{s.service} has none"))
    return problems
