"""The rule shared by the fence filters (NS1 semantics).

Answers whose metadata lists the client's value are "matched", answers whose metadata lists
other values are removed, and answers without the metadata are kept, unless the filter's
``remove_no_*`` option is set *and* at least one answer matched. When the client's value is
unknown (no location, no ASN), nothing is removed.
"""

from __future__ import annotations

from typing import Callable

from filterdns.routing.filters.base import Answer, Context


def fence(answers: tuple[Answer, ...], ctx: Context, client_value, test: Callable[[Answer], bool | None],
          remove_missing: bool, what: str, shown: str) -> tuple[Answer, ...]:
    """``test(answer)``: True matched, False fenced out, None no metadata."""
    if client_value is None:
        ctx.note("*", f"client {what} unknown: nothing fenced")
        return answers
    verdicts = [(a, test(a)) for a in answers]
    matched = any(v is True for _, v in verdicts)
    out = []
    for a, v in verdicts:
        if v is False:
            ctx.note(a.name, f"removed: {what} {shown} not in its fence")
        elif v is None and remove_missing and matched:
            ctx.note(a.name, f"removed: no {what} metadata and another answer matched")
        else:
            out.append(a)
    return answers if len(out) == len(answers) else tuple(out)
