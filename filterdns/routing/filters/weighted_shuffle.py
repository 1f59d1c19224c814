"""``weighted_shuffle``: random order, weighted.

Orders answers randomly so that each position is drawn with probability proportional to the
answer's ``weight`` among those not yet placed (weighted sampling without replacement); followed
by ``select_first_n`` it picks one answer with probability weight / total. Answers with weight 0
go last (in random order). Uses the query's RNG.

Options:

* ``default_weight`` (number >= 0, default 1): the weight of an answer without ``weight``

Metadata read: ``weight`` (number >= 0).

Metrics: ``filterdns_filter_removed_total{filter="weighted_shuffle"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); it never removes, so it stays 0.

Example::

    chains:
      by-weight:
        - up
        - weighted_shuffle: {default_weight: 1}
        - select_first_n
"""

from __future__ import annotations

import math

from filterdns.routing.filters.base import Answer, Context, Filter, Option, as_float


class WeightedShuffle(Filter):
    name = "weighted_shuffle"
    OPTIONS = (Option("default_weight", "float", 1.0, min=0, doc="weight of answers without one"),)
    random = True

    def __init__(self, options, build):
        super().__init__(options, build)
        self.default = self.options["default_weight"]

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        if len(answers) < 2:
            return answers
        rand = ctx.rng.random
        keyed = []
        for a in answers:
            w = as_float(a.meta.get("weight"))
            if w is None or w < 0:
                w = self.default
            # Efraimidis-Spirakis: exponential key E/w, smallest first
            k = -math.log(1.0 - rand()) / w if w > 0 else math.inf
            keyed.append((k, rand() if w <= 0 else 0.0, a))
        keyed.sort(key=lambda t: (t[0], t[1]))
        if ctx.trace:
            for _, _, a in keyed:
                ctx.note(a.name, f"weight {a.meta.get('weight', self.default)}")
        return tuple(t[2] for t in keyed)
