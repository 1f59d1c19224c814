"""``select_first_n``: keep the first N answers.

Options:

* ``n`` (integer >= 1, default 1)

Metadata read: none.

Metrics: ``filterdns_filter_removed_total{filter="select_first_n"}`` counts answers it removes
(counted by the core from ``Resolution.removed``); no metric of its own.

Example::

    chains:
      first-two:
        - geotarget_country
        - select_first_n: {n: 2}
"""

from __future__ import annotations

from filterdns.routing.filters.base import Answer, Context, Filter, Option


class SelectFirstN(Filter):
    name = "select_first_n"
    OPTIONS = (Option("n", "int", 1, min=1, doc="how many answers to keep"),)

    def __init__(self, options, build):
        super().__init__(options, build)
        self.n = self.options["n"]

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        if len(answers) <= self.n:
            return answers
        if ctx.trace:
            for a in answers[self.n:]:
                ctx.note(a.name, f"removed: beyond the first {self.n}")
        return answers[: self.n]
