"""The stream relay's idle watchdog: only time spent waiting on the provider counts."""

from __future__ import annotations

import asyncio

import pytest

from proxy.relay import IdleWatchdog


async def test_time_not_reading_is_not_idle():
    watchdog = IdleWatchdog(0.05)
    try:
        await asyncio.sleep(0.15)  # writing to a slow client, say: the timer sets itself again
        assert not watchdog.fired
        watchdog.reading = True
        await asyncio.sleep(0.02)  # a read shorter than idle
        watchdog.reading = False
        await asyncio.sleep(0.1)
        assert not watchdog.fired
    finally:
        watchdog.close()


async def test_a_read_that_waits_too_long_cancels_the_task():
    watchdog = IdleWatchdog(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        watchdog.reading = True
        with pytest.raises(asyncio.CancelledError):
            await asyncio.sleep(1)
        assert watchdog.fired
        assert 0.05 <= loop.time() - started < 0.5
        assert watchdog.task.uncancel() == 0
    finally:
        watchdog.close()
