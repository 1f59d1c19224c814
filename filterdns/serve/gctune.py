"""The garbage collector of a process that answers DNS: freeze what was loaded, collect rarely.

CPython's cyclic collector runs a young collection every 700 new container objects and a full
one whenever the surviving objects grew by a quarter. On the many-subnet mix (bench/run.py) a
worker creates several per query and keeps many in its bounded caches, so with the defaults the
collector took about a third of the CPU of the query path (in-process, 120,000 distinct client
subnets: 28 us/query with the defaults, 26 after ``gc.freeze()`` alone, 19.5 with the
thresholds below, 17 with no collector at all; with the two-generation caches of the
query path: 25, 24, 17.5 and 15.5).

``tune()`` (called once the listeners are open, i.e. after the config is loaded):

* ``gc.freeze()``: the loaded config, the geo database's objects and the modules move to the
  permanent generation, which no collection traverses again;
* ``gc.set_threshold(50000, 20, 10)``: young collections 70 times rarer. A query allocates
  few cycles (none on the hot path), so what this holds back is at most some 50,000 objects.

``refreeze()`` after a reload: unfreeze, one full collection (the old config's cycles are freed
there, not leaked in the permanent generation), freeze again. ``FILTERDNS_GC=default`` leaves
the collector as CPython configures it (for comparison).
"""

from __future__ import annotations

import gc
import os

THRESHOLDS = (50_000, 20, 10)


def enabled() -> bool:
    return os.environ.get("FILTERDNS_GC", "") != "default"


def tune() -> bool:
    if not enabled():
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return True


def refreeze() -> None:
    if not enabled():
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
