"""The config file watcher: signatures are taken off the event loop, a change reloads only once
the settled signature equals the one the poll took, and a reload records what it read."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from conftest import ROOT
from filterdns.serve import watch
from filterdns.serve.watch import FileWatcher, signature

pytestmark = pytest.mark.unit


def run_watcher(sigs, baseline="A", seconds=1.0, interval=0.02, on_change=None):
    """Run a FileWatcher over a scripted sequence of signatures; the reloads it asked for."""
    seq = iter(sigs)
    last = [None]

    def fake(_dirs):
        last[0] = next(seq, last[0])
        return last[0]

    reloads = []

    async def main():
        stop = asyncio.Event()
        base = [baseline]

        async def changed(cause):
            reloads.append(last[0])
            base[0] = last[0]

        w = FileWatcher(["z"], interval, lambda: base[0], on_change or changed, settle=interval)
        task = asyncio.create_task(w.run(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait_for(task, 5)

    orig = watch.signature
    watch.signature = fake
    try:
        asyncio.run(main())
    finally:
        watch.signature = orig
    return reloads


def test_no_change_no_reload():
    assert run_watcher(["A"] * 100, seconds=0.3) == []


def test_settled_change_reloads_once():
    assert run_watcher(["B"] * 200, seconds=0.5) == ["B"]


def test_still_changing_waits_for_the_settled_signature():
    # poll sees B, settled C (still being written): no reload on B; then C twice: reload C
    assert run_watcher(["B", "C", "C", "C"] + ["C"] * 200, seconds=0.5) == ["C"]


def test_burst_never_settling_never_reloads():
    assert run_watcher([f"S{i}" for i in range(10000)], seconds=0.3) == []


def test_signature_walk_does_not_block_the_event_loop():
    """A slow tree walk (here 0.2 s each) must run in a thread: the loop keeps ticking."""
    orig = watch.signature

    def slow(_dirs):
        time.sleep(0.2)
        return ("changed",)

    ticks = []

    async def main():
        stop = asyncio.Event()

        async def changed(cause):
            pass

        w = FileWatcher(["z"], 0.01, lambda: ("base",), changed, settle=0.01)
        task = asyncio.create_task(w.run(stop))
        t_end = time.monotonic() + 1.0
        worst = 0.0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            await asyncio.sleep(0.005)
            worst = max(worst, time.monotonic() - t0)
            ticks.append(1)
        stop.set()
        await asyncio.wait_for(task, 5)
        return worst

    watch.signature = slow
    try:
        worst = asyncio.run(main())
    finally:
        watch.signature = orig
    assert worst < 0.1, f"the event loop stalled for {worst * 1000:.0f} ms"


def test_real_files_edit_is_seen(tmp_path):
    d = tmp_path / "chains"
    d.mkdir()
    (d / "a.yaml").write_text("x: 1\n")
    base = signature([d])
    seen = []

    async def main():
        stop = asyncio.Event()

        async def changed(cause):
            seen.append(cause)
            stop.set()

        w = FileWatcher([d], 0.05, lambda: base, changed, settle=0.05)
        task = asyncio.create_task(w.run(stop))
        await asyncio.sleep(0.1)
        (d / "b.yaml").write_text("y: 2\n")  # a new file changes the signature
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert seen == [f"file watcher: {d / 'b.yaml'} added"]
    assert signature([d]) != base and (".hidden" not in str(signature([d])))


def test_reload_records_the_signature_it_read_accepted_or_not(tmp_path):
    from filterdns.serve.options import ServeOptions
    from filterdns.serve.single import SingleProcess

    zones, chains = tmp_path / "zones", tmp_path / "chains"
    shutil.copytree(ROOT / "zones", zones)
    shutil.copytree(ROOT / "chains", chains)

    async def main():
        rt = SingleProcess(ServeOptions(zones=str(zones), chains=str(chains)), metrics=None)
        rt.load_initial()
        assert rt.files_sig == signature([zones, chains])
        z = zones / "example.com.zone"
        z.write_text(z.read_text() + "broken IN A 999.1.2.3\n")
        ok, reasons = await rt.reload("test")
        assert not ok and reasons and rt.holder.state.generation == 1
        assert rt.files_sig == signature([zones, chains])  # not retried until the files change
        z.write_text(z.read_text().replace("broken IN A 999.1.2.3\n", ""))
        ok, reasons = await rt.reload("test")
        assert ok and rt.holder.state.generation == 2 and rt.files_sig == signature([zones, chains])

    asyncio.run(main())
