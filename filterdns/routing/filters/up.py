"""``up``: remove answers that are not up.

Removes every answer whose ``up`` metadata is false or unset. If that would remove every
answer, returns all of them unchanged (fail-open, as NS1 does: better to send clients to a
region believed down than to send them nowhere).

The ``up`` value is the region's effective one (``filterdns.routing.region_state``): NS1
precedence over config and data feeds, ``false`` while a health drain is in force. ``1``/``0``
are accepted for true/false in config and feeds. A region drained by an operator never reaches
any filter (it is no candidate), so fail-open cannot bring it back.

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
                    why = f" ({a.state.why})" if a.state is not None else ""
                    ctx.note(a.name, f"removed: up={'unset' if v is None else str(v).lower()}{why}")
        return kept
