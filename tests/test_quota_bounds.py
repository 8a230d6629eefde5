"""What a request may cost is bounded before it is sent, and every request is charged.

Each probe of a hostile user becomes a test here, through the HTTP API, against an upstream
that bills as the real providers do (`tests/fakes/billing_upstream.py`): it honours the cap
it is sent, multiplies by `n`, and answers as long as the model wants when it gets no cap.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
import pytest

from proxy.app_state import ACCOUNTANT, ACCOUNTS, METRICS
from proxy.estimates import estimate_prompt_tokens
from tests.conftest import Gateway, GatewayFactory, eventually
from tests.fakes.billing_upstream import (
    BillingUpstream,
    billing_upstream_fixture,  # noqa: F401
)

MESSAGES = [{"role": "user", "content": "Write a long story."}]
PROMPT_ESTIMATE = estimate_prompt_tokens({"messages": MESSAGES})
FREE = {"tier": "free", "developer": True, "requests_per_minute": 10_000}
QUOTA_MESSAGE = "Monthly token limit exceeded. Your usage will reset next month."


def providers(up: BillingUpstream) -> dict:
    return {
        "openai": {"kind": "openai", "base_url": up.openai_base_url, "api_key": "sk-test"},
        "deepseek": {"kind": "openai", "base_url": up.openai_base_url, "api_key": "sk-test"},
        "anthropic": {"kind": "anthropic", "base_url": up.anthropic_base_url, "api_key": "k"},
        "google": {"kind": "gemini", "base_url": up.gemini_base_url, "api_key": "k"},
    }


def models(length: int, scenario: str = "answer") -> dict:
    """One public model per provider kind, each answering `length` tokens a choice."""
    upstream = f"{scenario}-{length}"
    return {
        "woozlit/gpt": [{"provider": "openai", "model": upstream}],
        "woozlit/deepseek": [{"provider": "deepseek", "model": upstream}],
        "woozlit/claude": [{"provider": "anthropic", "model": upstream}],
        "woozlit/gemini": [{"provider": "google", "model": upstream}],
    }


async def start(
    gateway: GatewayFactory,
    up: BillingUpstream,
    redis_url: str,
    limit: int | None,
    *,
    length: int = 20_000,
    scenario: str = "answer",
    **options,
) -> Gateway:
    providers_ = providers(up)
    providers_["openai"]["max_tokens_parameter"] = "max_completion_tokens"
    account = {**FREE, "monthly_token_limit": limit} if limit is not None else None
    return await gateway(
        providers_, models(length, scenario), redis_url=redis_url, account=account, **options
    )


async def post(
    session: aiohttp.ClientSession, gw: Gateway, model: str, key: str | None = None, **body
) -> tuple[int, dict, dict]:
    payload = {"model": model, "messages": MESSAGES, "stream": False, **body}
    async with session.post(gw.api + "/chat/completions", json=payload, headers=gw.auth(key)) as r:
        return r.status, orjson.loads(await r.read()), dict(r.headers)


async def usage_of(gw: Gateway) -> dict:
    await gw.app[ACCOUNTANT].flush()
    return await gw.app[ACCOUNTS].usage(gw.account_id)


def sent_cap(billed) -> int | None:
    return billed.cap_sent


# -- the hold bounds the charge ---------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["woozlit/gpt", "woozlit/deepseek", "woozlit/claude", "woozlit/gemini"]
)
async def test_no_cap_from_the_client_sends_the_reserved_one(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str, model: str
):
    """A limit of 5,000, no max_tokens, a model that would answer 20,000 tokens: the upstream
    is told the cap that was reserved (4,096), under its own name, and `used` stays under."""
    gw = await start(gateway, billing_upstream, redis_url, 5_000)
    async with aiohttp.ClientSession() as session:
        status, body, _ = await post(session, gw, model)
    assert status == 200, body
    billed = billing_upstream.record.last
    assert billed.cap == 4096
    name = {"woozlit/gpt": "max_completion_tokens", "woozlit/deepseek": "max_tokens"}.get(model)
    if name:
        other = "max_tokens" if name == "max_completion_tokens" else "max_completion_tokens"
        assert billed.body[name] == 4096 and other not in billed.body
    usage = await usage_of(gw)
    assert usage["used"] == billed.total_tokens <= 5_000
    assert usage["excess_tokens"] == 0
    assert body["usage"]["completion_tokens"] == 4096


async def test_every_choice_is_held_and_the_cap_lowered_to_fit(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str
):
    """n=128 and max_tokens=9000 on a limit of 10,000: each choice gets an equal share of
    what remains, and the answer costs no more than the limit."""
    gw = await start(gateway, billing_upstream, redis_url, 10_000)
    async with aiohttp.ClientSession() as session:
        status, body, _ = await post(session, gw, "woozlit/gpt", n=128, max_tokens=9000)
    assert status == 200, body
    billed = billing_upstream.record.last
    assert billed.n == 128
    assert billed.cap == (10_000 - PROMPT_ESTIMATE) // 128
    usage = await usage_of(gw)
    assert usage["used"] == billed.total_tokens <= 10_000
    assert usage["excess_tokens"] == 0


async def test_concurrent_requests_without_a_cap_never_pass_the_limit(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str
):
    gw = await start(gateway, billing_upstream, redis_url, 50_000)
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, gw, "woozlit/gpt") for _ in range(12)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}
    usage = await usage_of(gw)
    served = [b for b in billing_upstream.record.requests]
    assert len(served) == statuses.count(200)
    assert usage["used"] == sum(b.total_tokens for b in served) <= 50_000
    assert usage["held"] == 0


@pytest.mark.parametrize("scenario", ["greedy", "lying"])
async def test_a_provider_that_bills_past_the_cap_is_not_charged_past_the_hold(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str, scenario: str
):
    """The excess is recorded apart (usage and a metric), never charged to the user."""
    gw = await start(gateway, billing_upstream, redis_url, 5_000, scenario=scenario)
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, gw, "woozlit/gpt", max_tokens=100)
    assert status == 200
    billed = billing_upstream.record.last
    usage = await usage_of(gw)
    hold = PROMPT_ESTIMATE + 100
    assert usage["used"] == hold
    assert usage["excess_tokens"] == billed.total_tokens - hold > 0
    samples = {
        s.name: s.value
        for family in gw.app[METRICS].registry.collect()
        for s in family.samples
        if s.name == "woozlit_tokens_excess_total"
    }
    assert samples["woozlit_tokens_excess_total"] == billed.total_tokens - hold


async def test_the_last_tokens_of_a_month_can_be_spent(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str
):
    """With what remains covering the prompt and a little more, a request is admitted with
    the cap lowered to what remains, and the month ends exactly at the limit."""
    billing_upstream.record.prompt_tokens = PROMPT_ESTIMATE  # the estimate is exact here
    limit = 2 * PROMPT_ESTIMATE + 1000 + 10
    gw = await start(gateway, billing_upstream, redis_url, limit)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gw, "woozlit/gpt", max_tokens=1000))[0] == 200
        async with session.get(gw.api + "/usage", headers=gw.auth()) as resp:
            assert (await resp.json())["remaining"] == PROMPT_ESTIMATE + 10
        status, body, _ = await post(session, gw, "woozlit/gpt", max_tokens=1000)
        assert status == 200
        assert body["choices"][0]["finish_reason"] == "length"
        assert billing_upstream.record.last.cap == 10
        status, body, _ = await post(session, gw, "woozlit/gpt", max_tokens=1000)
        assert (status, body) == (429, {"error": QUOTA_MESSAGE})
    usage = await usage_of(gw)
    assert usage["used"] == limit and usage["remaining"] == 0


# -- every stream is charged ------------------------------------------------------------------


def raw_stream_request(gw: Gateway, body: dict) -> bytes:
    data = orjson.dumps(body)
    port = gw.server.port
    return (
        f"POST /api/woozlit/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {gw.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def test_a_stream_that_outlives_its_hold_is_charged(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str
):
    """hold_ttl 1 s: a stream whose client stops reading for 3 s, while another request of
    the account is admitted (which sweeps expired holds), is still charged in full."""
    gw = await start(
        gateway,
        billing_upstream,
        redis_url,
        10**9,
        length=1_000_000,  # 20 MB of events: more than the socket buffers take
        accounting={"hold_ttl_seconds": 1},
    )
    body = {"model": "woozlit/gpt", "messages": MESSAGES, "max_tokens": 1_000_000, "stream": True}
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(raw_stream_request(gw, body))
    await reader.read(1024)  # the stream began
    await asyncio.sleep(3)  # the client reads nothing: its hold would have expired twice
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gw, "woozlit/gpt", max_tokens=10))[0] == 200
    tail = b""
    while chunk := await reader.read(1 << 16):
        tail = tail[-16:] + chunk
        if b"data: [DONE]" in tail:
            break
    writer.close()
    assert b"data: [DONE]" in tail
    stream = billing_upstream.record.requests[0]
    assert stream.finished and stream.tokens_sent == 1_000_000
    await eventually(lambda: not gw.app[ACCOUNTANT]._live)
    usage = await usage_of(gw)
    assert usage["used"] == stream.total_tokens + billing_upstream.record.last.total_tokens
    assert usage["held"] == 0


# -- replays pass the same checks -------------------------------------------------------------


async def test_a_replay_passes_the_key_account_and_rate_checks(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str
):
    gw = await start(gateway, billing_upstream, redis_url, None)
    accounts = gw.app[ACCOUNTS]
    replay = {"Idempotency-Key": "order-17"}

    async def send(session: aiohttp.ClientSession, key: str | None = None):
        payload = {"model": "woozlit/gpt", "messages": MESSAGES, "stream": False, "max_tokens": 5}
        headers = {**gw.auth(key), **replay}
        async with session.post(gw.api + "/chat/completions", json=payload, headers=headers) as r:
            return r.status, await r.json(), r.headers

    async with aiohttp.ClientSession() as session:
        first = await send(session)
        assert first[0] == 200
        again = await send(session)
        assert again[0] == 200 and again[2]["Idempotent-Replayed"] == "true"
        assert again[1] == first[1]
        # A disabled account: 403 for the replay too.
        await accounts.update_account(gw.account_id, {"disabled": True})
        assert (await send(session))[:2] == (403, {"error": "This account is disabled."})
        await accounts.update_account(gw.account_id, {"disabled": False})
        # The rate limit counts replays: 2 a minute, two requests already.
        await accounts.update_account(gw.account_id, {"requests_per_minute": 3})
        assert (await send(session))[0] == 200
        status, body, headers = await send(session)
        assert status == 429 and "Rate limit" in body["error"] and "Retry-After" in headers
        # A revoked key: 401 for the replay too, and another key of the account still works.
        await accounts.update_account(gw.account_id, {"requests_per_minute": 100})
        other = (await accounts.create_key(gw.account_id, "other"))["key"]
        key_id = next(
            k["id"] for k in await accounts.list_keys(gw.account_id) if k["name"] == "test"
        )
        await accounts.revoke_key(key_id)
        assert (await send(session))[:2] == (401, {"error": "Invalid API key."})
        replayed = await send(session, other)
        assert replayed[0] == 200 and replayed[2]["Idempotent-Replayed"] == "true"
    assert len(billing_upstream.record.requests) == 1


# -- requests in flight -----------------------------------------------------------------------


async def test_requests_in_flight_are_capped_per_key(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str
):
    tiers = {
        "free": {
            "monthly_tokens": 10**9,
            "requests_per_minute": 1000,
            "max_concurrent_requests": 3,
        },
        "premium": {"monthly_tokens": None, "requests_per_minute": 1000},
    }
    gw = await start(gateway, billing_upstream, redis_url, None, length=10**7, tiers=tiers)
    await gw.app[ACCOUNTS].update_account(gw.account_id, {"tier": "free"})
    body = {"model": "woozlit/gpt", "messages": MESSAGES, "max_tokens": 10**7, "stream": True}
    streams = []
    for _ in range(3):  # streams that last: their clients read only the status line
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(raw_stream_request(gw, body))
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        streams.append(writer)
    async with aiohttp.ClientSession() as session:
        status, answer, headers = await post(session, gw, "woozlit/gpt", max_tokens=5)
        assert status == 429
        assert "3 requests in progress" in answer["error"]
        assert headers["Retry-After"] == "1"
        streams.pop().close()  # one ends: its slot is free again
        await eventually(lambda: len(gw.app[ACCOUNTANT]._live.get(gw.account_id, {})) == 2)
        await gw.app[ACCOUNTANT].flush()
        assert (await post(session, gw, "woozlit/gpt", max_tokens=5))[0] == 200
    for writer in streams:
        writer.close()


# -- a client that stops reading --------------------------------------------------------------


async def test_a_stalled_client_is_cut_off_and_charged_what_was_produced(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str
):
    gw = await start(
        gateway,
        billing_upstream,
        redis_url,
        10**9,
        length=10**8,  # more than the moment after the cut can read
        server={"client_read_timeout_seconds": 0.5},
    )
    body = {"model": "woozlit/gpt", "messages": MESSAGES, "max_tokens": 10**8, "stream": True}
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(raw_stream_request(gw, body))
    await reader.read(1024)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await eventually(lambda: billing_upstream.record.last.left_early, seconds=10)
    assert loop.time() - started < 5
    # Cut off with a reset: what it did not read is dropped, and it sees the end at once.
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(5):
            while await reader.read(1 << 16):
                pass
    writer.close()
    await eventually(lambda: not gw.app[ACCOUNTANT]._live)
    usage = await usage_of(gw)
    stream = billing_upstream.record.last
    # Charged what the gateway read (its estimate of the text), not the whole answer.
    assert 0 < usage["completion_tokens"] <= stream.tokens_sent < 10**8
    assert usage["held"] == 0
    stalls = [
        s.value
        for family in gw.app[METRICS].registry.collect()
        for s in family.samples
        if s.name == "woozlit_client_stalls_total"
    ]
    assert stalls == [1.0]


async def test_a_client_that_leaves_during_admission_leaves_no_hold(
    gateway: GatewayFactory, billing_upstream: BillingUpstream, redis_url: str, monkeypatch
):
    """The admit script ran, but its reply came after the client left: the hold and the slot
    of the key's requests in flight are released, not left for hold_ttl_seconds."""
    gw = await start(gateway, billing_upstream, redis_url, 100_000)
    store = gw.app[ACCOUNTANT].store
    real_run = store.run

    async def slow_reply(name, keys_for_month, args):
        reply = await real_run(name, keys_for_month, args)
        if name == "admit":
            await asyncio.sleep(1)
        return reply

    monkeypatch.setattr(store, "run", slow_reply)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(session, gw, "woozlit/gpt"), 0.3)
    for _ in range(100):  # the release follows the client's leaving
        usage = await usage_of(gw)
        if usage["held"] == 0:
            break
        await asyncio.sleep(0.05)
    assert usage["held"] == 0 and usage["used"] == 0 and usage["by_model"] == {}
    assert billing_upstream.record.requests == []
