"""The ``zones:`` section of a chains file: settings per served zone, validated against the
schema tables ``filterdns.config.schema.ZONE`` and ``DNSSEC``.

    zones:
      example.com:
        dnssec: true                  # sign it: its key directory must hold an active KSK/CSK
      example.net:
        dnssec:
          keys: ../keys/example.net   # this zone's key directory (relative: to this file's directory)
          validity: 1209600           # RRSIG validity, seconds
          dnskey_ttl: 3600
      example.org:
        dnssec: false                 # never signed, even when its key directory holds keys

A zone the section does not name keeps the default: it is signed when its key directory
``<keys>/<zone>/`` holds keys (``filterdns/dns/dnssec.py``). Every problem is collected at its
YAML position (``chains/zones.yaml:4:17: zones example.net, dnssec: validity must be ...``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from filterdns.config.schema import DNSSEC, ZONE
from filterdns.config.yamlloc import Loc, LocDict
from filterdns.errors import Problem


@dataclass(frozen=True, slots=True)
class DnssecConf:
    """``dnssec:`` of one zone: ``sign`` False opts out (``dnssec: false``); ``keys`` None is the
    default directory."""

    sign: bool
    keys: str | None = None
    validity: int = DNSSEC["validity"].default
    dnskey_ttl: int = DNSSEC["dnskey_ttl"].default
    where: str = ""  # file:line:col of the ``dnssec`` key, for later problems (no active key)


def _abs(name: str) -> str:
    return name.strip().rstrip(".").lower() + "."


def parse_zones(node: Any, loc: Loc, origins: Iterable[str]) -> tuple[dict[str, DnssecConf], list[Problem]]:
    """``zones:`` -> (absolute lowercase zone name -> DnssecConf, problems)."""
    out: dict[str, DnssecConf] = {}
    problems: list[Problem] = []
    if node is None:
        return out, problems
    if not isinstance(node, LocDict):
        return out, [loc.problem("zones must be a mapping of zone name to its settings")]
    served = {_abs(o) for o in origins}
    for name, body in node.items():
        kl = node.key_loc(name)
        what = f"zones {name}"
        if not isinstance(name, str) or _abs(name) not in served:
            known = ", ".join(sorted(o.rstrip(".") for o in served)) or "none"
            problems.append(kl.problem(f"{what}: not a served zone (no <zone>.zone file; served: {known})"))
            continue
        if body is None:
            continue
        if not isinstance(body, LocDict):
            problems.append(node.value_loc(name).problem(f"{what}: must be a mapping of settings"))
            continue
        for k in body:
            if k not in ZONE:
                problems.append(body.key_loc(k).problem(
                    f"{what}: unknown key {k!r}; expected one of {', '.join(ZONE)}"))
        if "dnssec" in body:
            conf = _dnssec(body, what, problems)
            if conf is not None:
                out[_abs(name)] = conf
    return out, problems


def _dnssec(body: LocDict, what: str, problems: list[Problem]) -> DnssecConf | None:
    v, vl = body["dnssec"], body.value_loc("dnssec")
    where = str(body.key_loc("dnssec"))
    clean, reason = ZONE["dnssec"].check(v)
    if reason:
        problems.append(vl.problem(f"{what}, dnssec: {reason}"))
        return None
    if isinstance(clean, bool):
        return DnssecConf(clean, where=where)
    values: dict[str, Any] = {}
    ok = True
    for k, val in clean.items():
        f = DNSSEC.get(k)
        if f is None:
            problems.append(clean.key_loc(k).problem(
                f"{what}, dnssec: unknown key {k!r}; expected one of {', '.join(DNSSEC)}"))
            ok = False
            continue
        c, reason = f.check(val)
        if reason:
            problems.append(clean.value_loc(k).problem(f"{what}, dnssec: {k} {reason}"))
            ok = False
            continue
        values[k] = c
    if not ok:
        return None
    keys = values.get("keys")
    if keys is not None and not os.path.isabs(keys):
        keys = os.path.normpath(os.path.join(os.path.dirname(vl.file) or ".", keys))
    return DnssecConf(True, keys, values.get("validity", DNSSEC["validity"].default),
                      values.get("dnskey_ttl", DNSSEC["dnskey_ttl"].default), where)


def dnssec_of(zones: Mapping[str, DnssecConf], origin: str) -> DnssecConf | None:
    return zones.get(_abs(origin))
