"""Clients that abandon streams: the upstream request is closed at once, accounting
settles, and no task or connection is left behind."""

from __future__ import annotations

import asyncio
import resource

import aiohttp

from proxy.app_state import ACCOUNTANT, ACCOUNTS, METRICS, UPSTREAM
from tests.conftest import FakeUpstream, GatewayFactory, eventually, openai_provider

STREAMS = 1000


def gauge(gw, name: str) -> float:
    for family in gw.app[METRICS].registry.collect():
        if family.name == name:
            return sum(sample.value for sample in family.samples)
    raise KeyError(name)


def assert_clients_leaving_are_no_errors(gw, caplog) -> None:
    """A client that leaves is no error of ours: no traceback, no 5xx in the metrics."""
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    statuses = {
        s.labels.get("status")
        for family in gw.app[METRICS].registry.collect()
        for s in family.samples
        if s.name == "woozlit_requests_total"
    }
    assert statuses <= {"499", "200"}, statuses


async def test_a_thousand_abandoned_streams_leave_nothing_behind(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, caplog
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
    # A small cap: 250 streams at once must fit the free tier's month in their holds, even
    # when a loaded machine settles the cut ones late.
    body = {
        "model": "woozlit/slow",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
    }

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
    assert_clients_leaving_are_no_errors(gw, caplog)


async def test_clients_that_reset_their_connections_are_no_errors(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, caplog
):
    """A client that resets its connection (RST) while its stream or its body is on the way:
    the gateway's next write or read fails; that is the client leaving, not a 500."""
    import socket
    import struct

    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        {"woozlit/endless": [{"provider": "openai", "model": "endless"}]},
        redis_url=redis_url,
    )
    body = b'{"model": "woozlit/endless", "messages": [{"role": "user", "content": "hi"}]}'

    async def reset(after_bytes: int, send_all: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
        head = (
            "POST /api/woozlit/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {gw.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + (body if send_all else body[:10]))
        if send_all:
            await reader.readexactly(after_bytes)
        else:
            await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    await asyncio.gather(*(reset(200 + 37 * i, i % 4 != 0) for i in range(80)))
    await eventually(lambda: gauge(gw, "woozlit_open_streams") == 0)
    await gw.app[ACCOUNTANT].flush(10)
    assert_clients_leaving_are_no_errors(gw, caplog)
