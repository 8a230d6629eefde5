"""Clients that abandon streams: the upstream request is closed at once, accounting
settles, and no task or connection is left behind."""

from __future__ import annotations

import asyncio
import resource

import aiohttp

from proxy.appkeys import ACCOUNTANT, ACCOUNTS, METRICS, UPSTREAM
from tests.conftest import FakeUpstream, GatewayFactory, eventually, openai_provider

STREAMS = 1000


def gauge(gw, name: str) -> float:
    for family in gw.app[METRICS].registry.collect():
        if family.name == name:
            return sum(sample.value for sample in family.samples)
    raise KeyError(name)


async def test_a_thousand_abandoned_streams_leave_nothing_behind(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8 * STREAMS), hard), hard))
    fake_openai.record.delay = 5.0  # the fake would take 25 s per stream: all are cut
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        {"woozlit/slow": [{"provider": "openai", "model": "slow"}]},
        redis_url=redis_url,
        account={"tier": "free", "developer": True, "requests_per_minute": 10 * STREAMS},
    )
    connector = gw.app[UPSTREAM].session.connector
    assert connector is not None
    baseline_tasks = len(asyncio.all_tasks())
    body = {"model": "woozlit/slow", "messages": [{"role": "user", "content": "hi"}]}

    async def abandon(session: aiohttp.ClientSession) -> None:
        async with session.post(gw.api + "/chat/completions", json=body, headers=gw.auth()) as r:
            assert r.status == 200
            await r.content.readuntil(b"\n\n")  # the first event, then leave

    for _ in range(STREAMS // 250):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(abandon(session) for _ in range(250)))

    await eventually(lambda: fake_openai.record.disconnects == STREAMS, seconds=30)
    await eventually(lambda: gauge(gw, "woozlit_open_streams") == 0)
    await eventually(lambda: gauge(gw, "woozlit_in_flight_requests") == 0)
    await gw.app[ACCOUNTANT].flush(10)
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline_tasks, seconds=10)
    # No upstream connection is held (the cut ones were closed, not pooled half-read).
    assert len(connector._acquired) == 0  # type: ignore[attr-defined]
    usage = await gw.app[ACCOUNTS].usage(gw.account_id)
    assert usage["requests"] == STREAMS
    assert usage["held"] == 0
