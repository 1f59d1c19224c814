"""``shed_load``: shed answers whose load is high, probabilistically between watermarks.

For each answer, reads the load metric named by ``metric`` and the answer's
``low_watermark`` / ``high_watermark``: at or below the low watermark the answer is kept; at or
above the high watermark it is removed; in between it is removed with probability
``(load - low) / (high - low)`` (so load shifts gradually). Answers without the metric or
without both watermarks are left alone. Uses the query's RNG (``random = True``).

Options:

* ``metric`` (``loadavg`` | ``connections`` | ``requests``, default ``loadavg``)

Metadata read: the metric, ``low_watermark``, ``high_watermark`` (numbers; answer over region
over record: watermarks usually sit on the region, the metric comes from a data feed).

Metrics: ``filterdns_filter_removed_total{filter="shed_load"}`` (counted by the core).

Example::

    chains:
      shed:
        - up
        - shed_load: {metric: connections}
        - select_first_n
"""

from __future__ import annotations

from filterdns.cache import Cache
from filterdns.routing.filters.base import Answer, Context, Filter, Option, as_float


class ShedLoad(Filter):
    name = "shed_load"
    OPTIONS = (Option("metric", "choice", "loadavg", choices=("loadavg", "connections", "requests"),
                      doc="the load metric compared with the watermarks"),)
    random = True
    per_answer = True

    def __init__(self, options, build):
        super().__init__(options, build)
        self.metric = self.options["metric"]
        #: id(answers) -> (answers, each answer's verdict): the metadata is read once per
        #: candidate tuple (candidates are built once per region-state snapshot), not per query
        self._plans = Cache(1024)

    def _verdict(self, a: Answer) -> float | None:
        """None: keep; 1.0 or more: shed; between 0 and 1: shed with that probability."""
        m = a.meta
        load = as_float(m.get(self.metric))
        low = as_float(m.get("low_watermark"))
        high = as_float(m.get("high_watermark"))
        if load is None or low is None or high is None or load <= low:
            return None
        if load >= high:
            return 1.0
        return (load - low) / (high - low) if high > low else 1.0

    def _plan(self, answers: tuple[Answer, ...]) -> tuple:
        hit = self._plans.get(id(answers))
        if hit is None or hit[0] is not answers:
            hit = self._plans.put(id(answers), (answers, tuple(self._verdict(a) for a in answers)))
        return hit[1]

    def random_for(self, answers: tuple[Answer, ...]) -> bool:
        """Only loads strictly between the watermarks are decided by a draw."""
        return any(p is not None and p < 1.0 for p in self._plan(answers))

    def apply(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        if ctx.trace:
            return self._apply_traced(answers, ctx)
        out = []
        rand = ctx.rng.random
        for a, p in zip(answers, self._plan(answers), strict=True):
            if p is None or (p < 1.0 and rand() >= p):
                out.append(a)
        return answers if len(out) == len(answers) else tuple(out)

    def _apply_traced(self, answers: tuple[Answer, ...], ctx: Context) -> tuple[Answer, ...]:
        """``apply`` with a note per answer (explain): the same draws, in the same order."""
        metric = self.metric
        out = []
        rand = ctx.rng.random
        for a in answers:
            m = a.meta
            load = as_float(m.get(metric))
            low = as_float(m.get("low_watermark"))
            high = as_float(m.get("high_watermark"))
            if load is None or low is None or high is None or load <= low:
                out.append(a)
                continue
            if load >= high:
                ctx.note(a.name, f"shed: {metric} {load:g} above high watermark {high:g}")
                continue
            p = (load - low) / (high - low) if high > low else 1.0
            if rand() < p:
                ctx.note(a.name, f"shed: {metric} {load:g} between watermarks {low:g}..{high:g} "
                                 f"(shed with p={p:.2f})")
                continue
            out.append(a)
        return answers if len(out) == len(answers) else tuple(out)
