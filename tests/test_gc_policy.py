"""The collector policy for many open streams: survivors are frozen, and the periodic full
collection still finds cycles that were frozen while they were alive."""

from __future__ import annotations

import asyncio
import gc
import weakref

from proxy import gc_policy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_survivors_are_frozen_and_full_collection_finds_frozen_cycles():
    gc_policy.install()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle, alive for now
        gone = weakref.ref(a)
        gc.collect(1)  # it survives a collection of the older generations: frozen
        assert gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        del a, b
        gc.collect(2)  # the frozen cycle is out of the collector's sight
        assert gone() is not None
        assert gc_policy.collect_everything() >= 2
        assert gone() is None
        assert gc.get_freeze_count() <= frozen  # what survived is frozen again
    finally:
        gc_policy.uninstall()
    assert gc.get_freeze_count() == 0
    assert gc_policy._freeze_survivors not in gc.callbacks


async def test_collections_run_young_ones_on_a_clock_and_full_ones_rarely(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: seen.append(generation) or 0)
    monkeypatch.setattr(gc, "unfreeze", lambda: None)
    task = asyncio.create_task(gc_policy.collections(young_every=0.01, full_every=0.2))
    await asyncio.sleep(0.35)
    task.cancel()
    assert seen.count(1) >= 10
    assert seen.count(2) == 1
