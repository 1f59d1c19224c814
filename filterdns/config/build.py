"""Zones + chains -> ``State``: the one function start-up, ``filterdns check`` and reload call.

Every problem of every file is collected first (zone files, chain YAML, cross-checks between
them) and raised once as a ``ConfigError``, so one run shows everything that is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import time
from types import MappingProxyType

from filterdns.errors import ConfigError, Problem, list_config_dir
from filterdns.model import A, AAAA, CNAME
from filterdns.config.state import State
from filterdns.dns.wire import name_to_text, text_to_wire
from filterdns.dns.zones import ZoneStore, load_zones


def _origins_from_files(zones_dir) -> list[str]:
    try:
        names = list_config_dir(zones_dir, "zones")
    except ConfigError:
        return []
    return [n[:-len(".zone")].rstrip(".").lower() + "." for n in names
            if n.endswith(".zone") and not n.startswith(".")]


def _collision(zone, text: str, rec, clash: list[int]) -> Problem:
    """A static A/AAAA/CNAME at a dynamic record's name: at the zone file's line, naming the
    record's own file:line."""
    import dns.exception
    import dns.name
    import dns.rdatatype

    from filterdns.dns import zonefile

    lines: list[int] = []
    try:
        with open(zone.file, encoding="utf-8", errors="replace") as f:
            sc = zonefile.scan(f.read(), name_to_text(zone.origin.lower))
        lines = sorted(ln for t in clash for ln in zonefile.lines_of(sc.entries, dns.name.from_text(text), t))
    except (OSError, ValueError, dns.exception.DNSException):
        pass
    types = "/".join(dns.rdatatype.to_text(t) for t in clash)
    where = f"{rec.file}:{rec.line}" if getattr(rec, "file", "") else "chains/"
    also = f" (also line {', '.join(map(str, lines[1:]))})" if len(lines) > 1 else ""
    return Problem(zone.file, lines[0] if lines else None, None,
                   f"{text}: static {types} data{also} collides with the dynamic record {text} defined at "
                   f"{where}; a dynamic record answers {'/'.join(sorted(_TYPE_NAMES[t] for t in rec.types))} "
                   f"itself: remove the static records or the dynamic one")


_TYPE_NAMES = {A: "A", AAAA: "AAAA"}


def build_state(zones_dir: str | os.PathLike, chains_dir: str | os.PathLike,
                geoip: str | None = None, *, geo=None, generation: int = 1) -> State:
    """Load and validate everything; return a new ``State`` or raise ``ConfigError``."""
    from filterdns.config.chains import load_chains
    from filterdns.routing.geo import GeoDB

    problems: list[Problem] = []
    store: ZoneStore | None = None
    zone_files: tuple[str, ...] = ()
    try:
        store, zone_files = load_zones(zones_dir)
        origins = store.origins()
    except ConfigError as e:
        problems.extend(e.problems)
        origins = _origins_from_files(zones_dir)

    chains = None
    try:
        chains = load_chains(chains_dir, origins)
    except ConfigError as e:
        problems.extend(e.problems)

    if geo is None:
        try:
            geo = GeoDB.open(geoip)
        except ConfigError as e:
            problems.extend(e.problems)
        except Exception as e:  # an unreadable database file
            problems.append(Problem(str(geoip), None, None, f"cannot open the geo database: {e}"))

    dynamic: dict[bytes, object] = {}
    if store is not None and chains is not None:
        # a dynamic record must not collide with static data of the types it answers
        zones = dict(store.zones)
        for text, rec in chains.records.items():
            key = text_to_wire(text).lower()
            z = store.find(key)
            if z is None:  # load_chains checks this too; keep the state consistent anyway
                continue
            node = z.nodes.get(key)
            if node is not None:
                clash = [t for t in (A, AAAA, CNAME) if t in node.rrsets and (t == CNAME or t in rec.types)]
                if clash:
                    problems.append(_collision(z, text, rec, clash))
                    continue
            dynamic[key] = rec
            # the record's name and its ancestors now exist in the zone (empty non-terminals)
            names = set(zones[z.origin.lower].names)
            i = 0
            while len(key) - i >= len(z.origin.lower):
                names.add(key[i:])
                if len(key) - i == len(z.origin.lower):
                    break
                i += key[i] + 1
            zones[z.origin.lower] = dataclasses.replace(zones[z.origin.lower], names=frozenset(names))
        store = ZoneStore(zones)

    keys = {}
    if store is not None:
        from filterdns.dns.dnssec import keys_dir_for, load_keys

        keys = load_keys(keys_dir_for(zones_dir), store.origins(), problems, getattr(chains, "zones", None))

    if problems:
        raise ConfigError(problems)
    assert store is not None and chains is not None
    files = tuple(zone_files) + tuple(getattr(chains, "files", ()))
    summary = (f"{len(store.zones)} zone(s), {len(chains.records)} dynamic record(s), "
               f"{len(chains.regions)} region(s)")
    return State(
        generation=generation,
        zones=store,
        dynamic=MappingProxyType(dynamic),
        records=MappingProxyType(dict(chains.records)),
        regions=MappingProxyType(dict(chains.regions)),
        geo=geo,
        default_region=getattr(chains, "default_region", None),
        files=files,
        loaded_at=time.time(),
        zones_dir=str(zones_dir),
        chains_dir=str(chains_dir),
        summary=summary,
        health=tuple(getattr(chains, "health", ()) or ()),
        warnings=tuple(getattr(chains, "warnings", ()) or ()),
        dnssec=keys,
    )
