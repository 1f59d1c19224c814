"""``latency``: sort answers by expected round-trip time from the client (Route 53 style).

Each answer's expected RTT is looked up in a latency table, an editable set of measured RTTs
(milliseconds) from client countries, or failing that continents, to regions. Where the table
has no entry for a (client, region) pair, the RTT is estimated from great-circle distance:
``base_ms + km * ms_per_km``. Answers are sorted by RTT, ties by region name; never removes.
An unknown client is measured from the default region (which therefore comes first).

Tables live under the top-level ``latency:`` key of any file in ``chains/`` (the bundled one
is ``chains/latency.yaml``)::

    latency:
      default:                 # table name
        countries:             # ISO country code -> region -> RTT ms
          GB: {eu-west-2: 6, eu-west-1: 14}
        continents:            # AF AN AS EU NA OC SA -> region -> RTT ms
          EU: {eu-central-1: 20}

Options:

* ``table`` (string, default ``default``): which table; naming a table that does not exist is
  an error, except ``default``, which may be absent (distance estimates only)
* ``ms_per_km`` (number >= 0, default 0.015): estimate slope (fibre RTT ~0.01 ms/km, plus routing)
* ``base_ms`` (number >= 0, default 5): estimate intercept

Metadata read: none.

Reads the client: yes (its country and continent).

Metrics: ``filterdns_filter_removed_total{filter="latency"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); it never removes, so it stays 0.

Example::

    chains:
      fastest:
        - up
        - latency: {table: default}
        - select_first_n
"""

from __future__ import annotations

from filterdns.routing.filters.base import Answer, BuildContext, Context, Filter, KeyCache, Option, distance_from


class Latency(Filter):
    name = "latency"
    OPTIONS = (
        Option("table", "str", "default", doc="latency table name"),
        Option("ms_per_km", "float", 0.015, min=0, doc="RTT estimate per km of distance"),
        Option("base_ms", "float", 5.0, min=0, doc="RTT estimate at distance 0"),
    )
    reads_client = True

    @classmethod
    def check(cls, options, build: BuildContext):
        t = options["table"]
        if t not in build.latency_tables and t != "default":
            known = ", ".join(sorted(build.latency_tables)) or "none defined"
            return [("table", f"unknown latency table {t!r} (known: {known})")]
        return []

    def __init__(self, options, build):
        super().__init__(options, build)
        o = self.options
        table = build.latency_tables.get(o["table"], {})
        self.countries = table.get("countries", {})
        self.continents = table.get("continents", {})
        self.ms_per_km, self.base_ms = o["ms_per_km"], o["base_ms"]
        self._regions = build.regions
        self._cache = KeyCache()

    def keys_for(self, ctx: Context) -> dict:
        loc = ctx.location
        ck = (loc.country, loc.continent, ctx.origin)
        keys = self._cache.get(ck)
        if keys is None:
            by_c = self.countries.get(loc.country or "", {})
            by_k = self.continents.get(loc.continent or "", {})
            keys = {}
            for name, r in self._regions.items():
                if name in by_c:
                    keys[name] = (by_c[name], name, f"table {loc.country}")
                elif name in by_k:
                    keys[name] = (by_k[name], name, f"table continent {loc.continent}")
                else:
                    km = distance_from(ctx.origin, r)
                    keys[name] = (self.base_ms + km * self.ms_per_km, name, f"estimated from {km:.0f} km")
            self._cache.put(ck, keys)
        return keys

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        keys = self.keys_for(ctx)
        out = tuple(sorted(answers, key=lambda a: keys[a.name][:2]))
        if ctx.trace:
            for a in out:
                ms, _, how = keys[a.name]
                ctx.note(a.name, f"{ms:.0f} ms ({how})")
        return out
