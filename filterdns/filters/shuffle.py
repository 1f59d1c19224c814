"""``shuffle``: put the answers in random order (uniform; the query's RNG).

Options: none. Metadata read: none.

Example::

    chains:
      any-of-three:
        - geotarget_country
        - select_first_n: {n: 3}
        - shuffle
        - select_first_n
"""

from __future__ import annotations

from .base import Answer, Context, Filter


class Shuffle(Filter):
    name = "shuffle"
    random = True

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        if len(answers) < 2:
            return answers
        out = list(answers)
        ctx.rng.shuffle(out)
        return tuple(out)
