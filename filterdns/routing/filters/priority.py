"""``priority``: sort by priority (lower first); optionally keep only the best tier.

Sorts answers by their ``priority`` metadata, lowest number first, keeping the incoming order
within a priority (stable). Answers without a priority go last. With ``eliminate: true`` only
the answers sharing the best (lowest) priority are kept: failover to the next tier happens when
an earlier filter (typically ``up``) removed the whole best tier.

Options:

* ``eliminate`` (bool, default false): keep only the best tier

Metadata read: ``priority`` (number).

Metrics: ``filterdns_filter_removed_total{filter="priority"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); no metric of its own.

Example::

    chains:
      failover:
        - up
        - priority: {eliminate: true}
        - shuffle
"""

from __future__ import annotations

import math

from filterdns.routing.filters.base import Answer, Context, Filter, Option, as_float


class Priority(Filter):
    name = "priority"
    OPTIONS = (Option("eliminate", "bool", False, doc="keep only the lowest priority"),)

    def __init__(self, options, build):
        super().__init__(options, build)
        self.eliminate = self.options["eliminate"]

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        def prio(a: Answer) -> float:
            p = as_float(a.meta.get("priority"))
            return math.inf if p is None else p

        out = sorted(answers, key=prio)
        if self.eliminate and out:
            best = prio(out[0])
            if ctx.trace:
                for a in out:
                    if prio(a) != best:
                        ctx.note(a.name, f"removed: priority {a.meta.get('priority', 'unset')} "
                                         f"after best tier {best:g}")
            out = [a for a in out if prio(a) == best]
        return tuple(out)
