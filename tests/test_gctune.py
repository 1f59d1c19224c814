"""serve/gctune.py: the collector runs on a clock (young collection, then freeze), and a
cycle that becomes garbage after it was frozen is still freed once the permanent generation
has doubled."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from filterdns.serve import gctune

pytestmark = pytest.mark.unit


class Node:
    def __init__(self):
        self.other = None


def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


def test_pace_collects_young_cycles_and_frees_frozen_ones_when_the_permanent_generation_doubles():
    async def main():
        assert gctune.tune()
        task = asyncio.create_task(gctune.pace(young=0.01, check=0.05, full_min=1))
        try:
            young0 = gc.get_stats()[0]["collections"]
            a, young_ref = cycle()
            del a
            await asyncio.sleep(0.1)
            assert not gc.isenabled()
            assert gc.get_stats()[0]["collections"] >= young0 + 3
            assert young_ref() is None  # garbage within a tick: a young collection freed it

            keep, frozen_ref = cycle()
            await asyncio.sleep(0.05)  # survives a tick: frozen
            assert gc.is_tracked(keep) and frozen_ref() is not None
            del keep  # garbage now, in the permanent generation
            ballast = [Node() for _ in range(2 * gc.get_freeze_count() + 10)]
            await asyncio.sleep(0.2)  # frozen, the permanent generation doubled: a full collection
            assert frozen_ref() is None
            del ballast
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert gc.isenabled() and gc.get_freeze_count() == 0

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
        gc.enable()


def test_default_leaves_the_collector_alone(monkeypatch):
    monkeypatch.setenv("FILTERDNS_GC", "default")
    assert gctune.tune() is False and gc.isenabled()
