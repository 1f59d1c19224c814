"""``shuffle``: put the answers in random order (uniform; the query's RNG).

Options: none. Metadata read: none.

Metrics: ``filterdns_filter_removed_total{filter="shuffle"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); it never removes, so it stays 0.

Example::

    chains:
      any-of-three:
        - geotarget_country
        - select_first_n: {n: 3}
        - shuffle
        - select_first_n
"""

from __future__ import annotations

from filterdns.routing.filters.base import Answer, Context, Filter


class Shuffle(Filter):
    name = "shuffle"
    random = True

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        if len(answers) < 2:
            return answers
        out = list(answers)
        ctx.rng.shuffle(out)
        return tuple(out)
