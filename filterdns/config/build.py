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
from filterdns.dns.wire import text_to_wire
from filterdns.dns.zones import ZoneStore, load_zones


def _origins_from_files(zones_dir) -> list[str]:
    try:
        names = list_config_dir(zones_dir, "zones")
    except ConfigError:
        return []
    return [n[:-len(".zone")].rstrip(".").lower() + "." for n in names
            if n.endswith(".zone") and not n.startswith(".")]


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
                    names = {A: "A", AAAA: "AAAA", CNAME: "CNAME"}
                    problems.append(Problem(
                        z.file, None, None,
                        f"{text}: static {'/'.join(names[t] for t in clash)} data collides with "
                        f"dynamic record {text} of {'/'.join(getattr(chains, 'files', ()) or ('chains',))}"))
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

        keys = load_keys(keys_dir_for(zones_dir), store.origins(), problems)

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
