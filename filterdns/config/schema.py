"""Config schema as data: one ``Field`` type and the tables of fields the configuration has.

Every value a user or a feeder gives is checked by a ``Field`` of one of these tables, so the
config loader, the data-feed API and the health section cannot disagree (they did: the config
accepted ``connections: .inf`` and the feed API refused it), and the option tables of
``docs/chains.md`` are generated from them (``python -m filterdns.config.schema docs/chains.md``
rewrites the generated sections; ``tests/test_schema.py`` fails when they are stale):

* ``META``: metadata keys (record, region and service ``meta``); those with ``feed=True`` can
  also be pushed by a data feed (``FEED``);
* ``HEALTH``: the options of one health check (``health.checks[]``, most also in
  ``health.defaults``), parsed by ``filterdns.config.health``;
* filter options: each filter's ``OPTIONS`` are ``Field``s too (``filters.base.Option`` is this
  class);
* ``ZONE``: the settings of one served zone (``zones.<zone>`` of a chains file, parsed by
  ``filterdns.config.zoneconf``), and ``DNSSEC`` the options of its ``dnssec:`` mapping.

A field says its name, type, default, range, unit and meaning. ``check(value)`` returns
``(clean value, None)`` or ``(None, reason)``; the caller adds where (file:line:col from the
YAML positions, or the request).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping

#: marks a field that has no default (it must be given)
REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()

_KIND = {"int": "an integer", "float": "a number"}


@dataclass(frozen=True, slots=True)
class Field:
    """One field: name, type, default, range (``min``/``max``) or ``choices``, unit and doc.

    Types: ``int``; ``float`` (finite number); ``bool``; ``bool01`` (true/false or 1/0, as NS1
    takes ``up``); ``str`` (non-empty); ``text`` (any string); ``choice``; ``str_list`` (a list
    of strings, a single string accepted); ``mapping``; ``ip``; ``path`` (starts with ``/``);
    ``statuses`` (HTTP status or list); ``georegions``, ``countries`` (code or list);
    ``prefixes`` (CIDR or list); ``asns`` (AS number or list).
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""
    unit: str = ""
    #: metadata only: a data feed may push it
    feed: bool = False
    #: metadata only: which filters read it (docs)
    read_by: str = ""

    # -- checking ---------------------------------------------------------------------------
    def check(self, value: Any) -> tuple[Any, str | None]:
        """(clean value, None) when valid, else (None, reason without the field name)."""
        fn = _CHECKS.get(self.type)
        if fn is None:
            raise ValueError(f"field {self.name}: unknown type {self.type!r}")
        return fn(self, value)

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """Like ``check``, with the reason starting with the field name."""
        v, reason = self.check(value)
        return (v, None) if reason is None else (None, f"{self.name} {reason}")

    # -- describing -------------------------------------------------------------------------
    def range_text(self) -> str:
        if self.min is not None and self.max is not None:
            return f" in {self.min:g}..{self.max:g}"
        if self.min is not None:
            return f" >= {self.min:g}"
        if self.max is not None:
            return f" <= {self.max:g}"
        return ""

    def type_text(self) -> str:
        """The type as the docs show it."""
        t = self.type
        if t in ("int", "float"):
            return ("integer" if t == "int" else "number") + self.range_text()
        if t == "choice":
            return " \\| ".join(f"`{c}`" for c in self.choices)
        return {"bool": "bool", "bool01": "bool (`1`/`0` accepted)", "str": "string", "text": "string",
                "str_list": "list of strings", "mapping": "mapping", "ip": "IP address",
                "bool_or_mapping": "bool or mapping",
                "path": "path (`/...`)", "statuses": "HTTP status or list",
                "georegions": "georegion or list", "countries": "ISO country code or list",
                "prefixes": "CIDR prefix or list", "asns": "AS number or list",
                "us_states": "US state code or list (`CA` or `US-CA`)",
                "ca_provinces": "Canadian province code or list (`BC` or `CA-BC`)"}.get(t, t)

    def default_text(self) -> str:
        d = self.default
        if d is REQUIRED:
            return "required"
        if d is None:
            return "none"
        if isinstance(d, bool):
            return f"`{str(d).lower()}`"
        if isinstance(d, (list, tuple)):
            return "`[" + ", ".join(str(x) for x in d) + "]`"
        if isinstance(d, float):
            return f"`{d:g}`"
        return f"`{d}`"


def _number(f: Field, v: Any) -> tuple[Any, str | None]:
    kind = _KIND[f.type]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (f.type == "int" and not isinstance(v, int)):
        return None, f"must be {kind}{f.range_text()}, got {v!r}"
    if f.type == "float" and not math.isfinite(v):
        return None, f"must be a finite number{f.range_text()}, got {v!r}"
    if (f.min is not None and v < f.min) or (f.max is not None and v > f.max):
        return None, f"must be {kind}{f.range_text()}, got {v!r}"
    return (float(v) if f.type == "float" else v), None


def _bool(f: Field, v: Any) -> tuple[Any, str | None]:
    return (v, None) if isinstance(v, bool) else (None, f"must be true or false, got {v!r}")


def _bool01(f: Field, v: Any) -> tuple[Any, str | None]:
    if isinstance(v, bool) or (type(v) is int and v in (0, 1)):
        return bool(v), None
    return None, f"must be true or false (or 1/0), got {v!r}"


def _str(f: Field, v: Any) -> tuple[Any, str | None]:
    return (v, None) if isinstance(v, str) and v else (None, f"must be a non-empty string, got {v!r}")


def _text(f: Field, v: Any) -> tuple[Any, str | None]:
    return (v, None) if isinstance(v, str) else (None, f"must be a string, got {v!r}")


def _choice(f: Field, v: Any) -> tuple[Any, str | None]:
    if isinstance(v, str) and v in f.choices:
        return v, None
    return None, f"must be one of {', '.join(f.choices)}, got {v!r}"


def _str_list(f: Field, v: Any) -> tuple[Any, str | None]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
        return None, f"must be a list of strings, got {v!r}"
    return tuple(items), None


def _mapping(f: Field, v: Any) -> tuple[Any, str | None]:
    return (v, None) if isinstance(v, dict) else (None, f"must be a mapping, got {v!r}")


def _bool_or_mapping(f: Field, v: Any) -> tuple[Any, str | None]:
    if isinstance(v, (bool, dict)):
        return v, None
    return None, f"must be true, false or a mapping of options, got {v!r}"


def _ip(f: Field, v: Any) -> tuple[Any, str | None]:
    try:
        return str(ipaddress.ip_address(v)), None
    except (ValueError, TypeError):
        return None, f"must be an IP address, got {v!r}"


def _path(f: Field, v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or not v.startswith("/"):
        return None, f"must start with '/', got {v!r}"
    return v, None


def _statuses(f: Field, v: Any) -> tuple[Any, str | None]:
    codes = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(codes, list) or not codes or \
            not all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes):
        return None, f"must be an HTTP status (100-599) or a non-empty list of them, got {v!r}"
    return tuple(codes), None


def _listed(v: Any) -> list | None:
    items = [v] if isinstance(v, str) else v if isinstance(v, list) else None
    return items or None


def _codes(valid: Iterable[str], what: str):
    def check(f: Field, v: Any) -> tuple[Any, str | None]:
        items = _listed(v)
        if items is None:
            return None, f"must be a {what} or a list of them, got {v!r}"
        allowed = frozenset(valid() if callable(valid) else valid)
        bad = [x for x in items if not isinstance(x, str) or x.upper() not in allowed]
        if bad:
            return None, f"unknown {what} {bad[0]!r}"
        return (v if isinstance(v, str) else tuple(v)), None
    return check


def _georegions():
    from filterdns.routing.georegions import GEOREGIONS  # no cycle: only when checking
    return GEOREGIONS


def _countries():
    from filterdns.routing.geo import COUNTRIES
    return COUNTRIES


def _us_states():
    from filterdns.routing.georegions import US_STATES
    return US_STATES | {"US-" + c for c in US_STATES}


def _ca_provinces():
    from filterdns.routing.georegions import CA_PROVINCES
    return CA_PROVINCES | {"CA-" + c for c in CA_PROVINCES}


def _prefixes(f: Field, v: Any) -> tuple[Any, str | None]:
    items = _listed(v)
    if items is None:
        return None, f"must be a CIDR prefix or a list of them, got {v!r}"
    for x in items:
        try:
            ipaddress.ip_network(str(x), strict=False)
        except ValueError:
            return None, f"not a CIDR prefix: {x!r}"
    return (v if isinstance(v, str) else tuple(v)), None


def _asns(f: Field, v: Any) -> tuple[Any, str | None]:
    items = [v] if not isinstance(v, list) else v
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x < 2**32 for x in items):
        return None, f"must be an AS number or a list of them, got {v!r}"
    return (v if not isinstance(v, list) else tuple(v)), None


_CHECKS = {
    "int": _number, "float": _number, "bool": _bool, "bool01": _bool01, "str": _str, "text": _text,
    "choice": _choice, "str_list": _str_list, "mapping": _mapping, "ip": _ip, "path": _path,
    "bool_or_mapping": _bool_or_mapping,
    "statuses": _statuses, "georegions": _codes(_georegions, "georegion"),
    "countries": _codes(_countries, "country code"), "prefixes": _prefixes, "asns": _asns,
    "us_states": _codes(_us_states, "US state code"),
    "ca_provinces": _codes(_ca_provinces, "Canadian province code"),
}


def table(*fields: Field) -> Mapping[str, Field]:
    return MappingProxyType({f.name: f for f in fields})


# -- the tables -------------------------------------------------------------------------------

#: metadata keys (record, region and service ``meta``; ``feed``: a data feed may push it)
META: Mapping[str, Field] = table(
    Field("up", "bool01", doc="the region serves (unset counts as down; a health drain forces false)",
          feed=True, read_by="`up`"),
    Field("connections", "float", min=0, doc="current connections", feed=True, read_by="`shed_load`"),
    Field("requests", "float", min=0, unit="per second", doc="current request rate", feed=True,
          read_by="`shed_load`"),
    Field("loadavg", "float", min=0, doc="load average", feed=True, read_by="`shed_load`"),
    Field("low_watermark", "float", min=0, doc="start shedding above this load (<= high_watermark)",
          read_by="`shed_load`"),
    Field("high_watermark", "float", min=0, doc="shed everything above this load", read_by="`shed_load`"),
    Field("weight", "float", min=0, doc="share of clients", read_by="`weighted_shuffle`, `sticky` (weighted)"),
    Field("priority", "float", doc="lower first", read_by="`priority`"),
    Field("georegion", "georegions",
          doc="one of / list of US-EAST US-CENTRAL US-WEST EUROPE ASIAPAC AFRICA SOUTH-AMERICA",
          read_by="`geofence_regional`, `geotarget_regional` (default: the region's own georegion)"),
    Field("country", "countries", doc="a fence, not the region's location",
          read_by="`geofence_country`, `geotarget_country` (counts as same country)"),
    Field("us_state", "us_states", doc="the US states the answer stands for",
          read_by="`geofence_country`, `geotarget_country` (same subdivision)"),
    Field("ca_province", "ca_provinces", doc="the Canadian provinces the answer stands for",
          read_by="`geofence_country`, `geotarget_country` (same subdivision)"),
    Field("ip_prefixes", "prefixes", doc="client networks", read_by="`netfence_prefix`"),
    Field("asn", "asns", doc="client AS numbers", read_by="`netfence_asn`"),
    Field("note", "text", doc="for people", read_by="nothing"),
)

#: what a data feed may push (``POST /regions/{region}/feed``, ``filterdns feed``)
FEED: Mapping[str, Field] = table(*(f for f in META.values() if f.feed))

#: the options of one health check
HEALTH: Mapping[str, Field] = table(
    Field("region", "str", REQUIRED, doc="a configured region"),
    Field("service", "str", REQUIRED, doc="one of its services"),
    Field("type", "choice", "tcp", choices=("tcp", "http", "https"),
          doc="`tcp` (connect), `http` or `https` (GET with an expected status)"),
    Field("address", "ip", None, doc="IP address to probe; default: the service's first address"),
    Field("port", "int", REQUIRED, min=1, max=65535, doc="TCP port"),
    Field("path", "path", "/", doc="HTTP(S) path to GET (http/https only)"),
    Field("host", "str", None, doc="HTTP Host header and TLS server name; default: the address (http/https only)"),
    Field("expect", "statuses", (200,), doc="HTTP status or list counting as healthy (http/https only)"),
    Field("verify_tls", "bool", True, doc="verify the HTTPS certificate (https only)"),
    Field("interval", "float", 5.0, min=0.05, max=3600, unit="s", doc="between probes"),
    Field("timeout", "float", 2.0, min=0.01, max=60, unit="s", doc="before a probe fails; <= interval"),
    Field("rise", "int", 2, min=1, max=100, doc="consecutive successes to go up"),
    Field("fall", "int", 3, min=1, max=100, doc="consecutive failures to go down"),
)
#: health options that ``health.defaults`` may set
HEALTH_DEFAULTABLE = frozenset(HEALTH) - {"region", "service", "address"}
#: health options that apply to http/https checks only
HTTP_ONLY = ("path", "host", "expect", "verify_tls")


#: the settings of one served zone (``zones: {example.com: {...}}``, filterdns.config.zoneconf)
ZONE: Mapping[str, Field] = table(
    Field("dnssec", "bool_or_mapping", None,
          doc="`true`: sign the zone (it must have an active KSK or CSK); `false`: never sign it, even "
              "with keys; a mapping: sign it with these options (below); unset: signed when its key "
              "directory holds keys"),
)

#: the options of a zone's ``dnssec:`` mapping (filterdns.dns.dnssec signs with them)
DNSSEC: Mapping[str, Field] = table(
    Field("keys", "str", None,
          doc="this zone's key directory (BIND K*.key/.private files); relative to the YAML file's "
              "directory; default: `<keys>/<zone>` (`$FILTERDNS_KEYS`, else `<zones dir>/keys`)"),
    Field("validity", "int", 604800, min=86400, max=7776000, unit="s",
          doc="RRSIG lifetime (expiration minus up to 10 % jitter; re-signed after a quarter of it)"),
    Field("dnskey_ttl", "int", 3600, min=60, max=86400, unit="s", doc="TTL of the DNSKEY RRset"),
)


def check_values(fields: Mapping[str, Field], values: Mapping[str, Any],
                 what: str = "key") -> tuple[dict[str, Any], list[str]]:
    """Check a mapping against a table: (clean values, problems naming each key); ``what``
    names a key in the unknown-key problem ("feed key")."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, v in values.items():
        f = fields.get(key)
        if f is None:
            problems.append(f"unknown {what} {key!r} (known: {', '.join(fields)})")
            continue
        clean, reason = f.coerce(v)
        if reason:
            problems.append(reason)
        else:
            out[key] = clean
    return out, problems


# -- docs/chains.md ---------------------------------------------------------------------------

def _meta_doc() -> str:
    rows = ["| key | type | read by | meaning |", "|---|---|---|---|"]
    for f in META.values():
        unit = f" ({f.unit})" if f.unit else ""
        feed = "; a data feed may push it" if f.feed else ""
        rows.append(f"| `{f.name}` | {f.type_text()}{unit} | {f.read_by} | {f.doc}{feed} |")
    return "\n".join(rows)


def _health_doc() -> str:
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for f in HEALTH.values():
        unit = f" {f.unit}" if f.unit else ""
        rows.append(f"| `{f.name}` | {f.type_text()}{unit} | {f.default_text()} | {f.doc} |")
    return "\n".join(rows)


def _filters_doc() -> str:
    from filterdns.routing.filters import REGISTRY

    rows = ["| filter | options (defaults) | reads the client |", "|---|---|---|"]
    for name, cls in REGISTRY.items():
        opts = ", ".join(
            f"`{o.name}: {o.default_text().strip('`')}`"
            + (f" ({', '.join(f'`{c}`' for c in o.choices)})" if o.choices else
               f" ({o.range_text().strip()})" if o.range_text() else "")
            for o in cls.OPTIONS) or "none"
        reads = ("its prefix" if cls.needs_prefix else "location" if cls.reads_client else
                 "no (random)" if cls.random else "no")
        rows.append(f"| `{name}` | {opts} | {reads} |")
    return "\n".join(rows)


def _zones_doc() -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for prefix, fields in (("", ZONE), ("dnssec.", DNSSEC)):
        for f in fields.values():
            unit = f" {f.unit}" if f.unit else ""
            rows.append(f"| `{prefix}{f.name}` | {f.type_text()}{unit} | {f.default_text()} | {f.doc} |")
    return "\n".join(rows)


DOC_SECTIONS = {"meta": _meta_doc, "health": _health_doc, "filters": _filters_doc, "zones": _zones_doc}
_BEGIN = "<!-- generated by `python -m filterdns.config.schema docs/chains.md`: {name} -->"
_END = "<!-- end of generated {name} -->"


def update_docs(text: str) -> str:
    """``text`` with every generated section rewritten from the tables (idempotent)."""
    for name, fn in DOC_SECTIONS.items():
        begin, end = _BEGIN.format(name=name), _END.format(name=name)
        a = text.find(begin)
        b = text.find(end)
        if a < 0 or b < a:
            raise ValueError(f"docs: no generated section {name!r} (markers {begin!r} ... {end!r})")
        text = text[:a + len(begin)] + "\n" + fn() + "\n" + text[b:]
    return text


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a maintenance command
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "docs/chains.md")
    old = path.read_text(encoding="utf-8")
    new = update_docs(old)
    if new != old:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: generated sections rewritten")
    else:
        print(f"{path}: up to date")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
