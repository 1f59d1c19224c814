"""``up``: remove answers that are not up.

Removes every answer whose ``up`` metadata is false or unset. If that would remove every
answer, returns all of them unchanged (fail-open, as NS1 does: better to send clients to a
region believed down than to send them nowhere).

``up`` is effectively false when an operator or a health check drained the region or the
service (runtime status), whatever the config says; a data feed can also push it.

Options: none.

Metadata read: ``up`` (bool; answer over region over record).

Metrics: answers removed are counted per filter by the core
(``filterdns_filter_removed_total{filter="up"}``).

Example::

    chains:
      healthy-first:
        - up
        - select_first_n: {n: 2}
"""

from __future__ import annotations

from filterdns.routing.filters.base import Answer, Context, Filter


class Up(Filter):
    name = "up"

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        kept = tuple(a for a in answers if a.meta.get("up") is True)
        if not kept:
            if ctx.trace and answers:
                ctx.note("*", "every answer is down: fail-open, all kept")
            return answers
        if ctx.trace and len(kept) != len(answers):
            for a in answers:
                if a.meta.get("up") is not True:
                    v = a.meta.get("up")
                    ctx.note(a.name, f"removed: up={'unset' if v is None else str(v).lower()}")
        return kept
