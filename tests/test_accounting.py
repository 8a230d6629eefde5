"""Accounting through the HTTP API: two gateway instances sharing one real Redis.

In the style of the `limits` library's tests: hundreds of concurrent requests against one
account, asserting the exact number admitted, and that what was charged is exactly what the
clients were told they used.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from proxy.app_state import ACCOUNTANT, ACCOUNTS
from proxy.estimates import estimate_prompt_tokens
from tests.conftest import (
    FakeUpstream,
    Gateway,
    GatewayFactory,
    RedisServer,
    eventually,
    openai_provider,
)
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS

MODELS = {
    "woozlit/gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini"}],
    "woozlit/gated": [{"provider": "openai", "model": "gated"}],
    "woozlit/endless": [{"provider": "openai", "model": "endless"}],
}
MESSAGES = [{"role": "user", "content": "hi"}]
# The hold of one request: its prompt estimate + max_tokens.
MAX_TOKENS = 100
PROMPT_ESTIMATE = estimate_prompt_tokens({"messages": MESSAGES})
HOLD = PROMPT_ESTIMATE + MAX_TOKENS
QUOTA_MESSAGE = "Monthly token limit exceeded. Your usage will reset next month."


async def two_instances(
    gateway: GatewayFactory, upstream: FakeUpstream, redis_url: str, account: dict
) -> tuple[Gateway, Gateway]:
    providers = {"openai": openai_provider(upstream.url)}
    a = await gateway(providers, MODELS, redis_url=redis_url, account=account)
    b = await gateway(providers, MODELS, redis_url=redis_url, same_account_as=a)
    return a, b


async def chat(
    session: aiohttp.ClientSession, gw: Gateway, model: str = "woozlit/gated", **extra
) -> tuple[int, dict, dict]:
    body = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "stream": False,
        **extra,
    }
    async with session.post(gw.api + "/chat/completions", json=body, headers=gw.auth()) as r:
        return r.status, await r.json(), dict(r.headers)


async def usage_of(gw: Gateway) -> dict:
    await gw.app[ACCOUNTANT].flush()
    return await gw.app[ACCOUNTS].usage(gw.account_id)


async def run_concurrently(
    a: Gateway, b: Gateway, upstream: FakeUpstream, n: int
) -> list[tuple[int, dict, dict]]:
    """n concurrent requests, alternating between the two instances. The upstream holds every
    admitted request until all n are decided, so no settle frees quota during the race."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(chat(session, (a, b)[i % 2])) for i in range(n)]
        done: set[asyncio.Task] = set()
        while True:
            done = {t for t in tasks if t.done()}
            if len(upstream.record.requests) + len(done) >= n:
                break
            await asyncio.sleep(0.01)
        upstream.record.gate.set()
        return await asyncio.gather(*tasks)


async def check_quota_admits_exactly_k(
    gateway: GatewayFactory, upstream: FakeUpstream, store_url: str, k: int
) -> tuple[Gateway, Gateway]:
    """300 concurrent requests through two instances sharing `store_url`, against an account
    whose quota admits exactly k of them: exactly k pass, and `used` is what they were told.
    (What remains after k holds covers the next request's prompt, not one token more.)"""
    account = {
        "tier": "free",
        "developer": True,
        "monthly_token_limit": k * HOLD + PROMPT_ESTIMATE,
        "requests_per_minute": 1000,
    }
    a, b = await two_instances(gateway, upstream, store_url, account)
    results = await run_concurrently(a, b, upstream, 300)

    ok = [body for status, body, _ in results if status == 200]
    refused = [body for status, body, _ in results if status == 429]
    assert len(ok) == k
    assert len(refused) == 300 - k
    assert all(body == {"error": QUOTA_MESSAGE} for body in refused)
    await b.app[ACCOUNTANT].flush()
    usage = await usage_of(a)
    assert usage["used"] == sum(body["usage"]["total_tokens"] for body in ok)
    assert usage["used"] == k * (PROMPT_TOKENS + COMPLETION_TOKENS)
    assert usage["requests"] == k
    assert usage["held"] == 0
    return a, b


async def check_rate_limit_passes_exactly_r(
    gateway: GatewayFactory, upstream: FakeUpstream, store_url: str, r: int = 25
) -> None:
    """The same for a per-key rate limit of r a minute: exactly r pass."""
    account = {"tier": "premium", "developer": True, "requests_per_minute": r}
    a, b = await two_instances(gateway, upstream, store_url, account)
    results = await run_concurrently(a, b, upstream, 300)

    assert sum(status == 200 for status, _, _ in results) == r
    refusals = [(body, headers) for status, body, headers in results if status == 429]
    assert len(refusals) == 300 - r
    for body, headers in refusals:
        assert "Rate limit" in body["error"]
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-limit-requests"] == str(r)


@pytest.mark.parametrize("k", [0, 1, 37])
async def test_quota_admits_exactly_k_across_two_instances(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, k: int
):
    await check_quota_admits_exactly_k(gateway, fake_openai, redis_url, k)


async def test_rate_limit_passes_exactly_r_across_two_instances(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    await check_rate_limit_passes_exactly_r(gateway, fake_openai, redis_url)


async def test_rate_limit_headers_on_every_answer(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        MODELS,
        redis_url=redis_url,
        account={"tier": "free", "developer": True, "requests_per_minute": 5},
    )
    async with aiohttp.ClientSession() as session:
        remaining = []
        for _ in range(2):
            status, _, headers = await chat(session, gw, "woozlit/gpt-4o-mini")
            assert status == 200
            assert headers["x-ratelimit-limit-requests"] == "5"
            assert headers["x-ratelimit-reset-requests"] == "60s"
            remaining.append(headers["x-ratelimit-remaining-requests"])
        assert remaining == ["4", "3"]
        async with session.get(gw.api + "/models", headers=gw.auth()) as resp:
            assert resp.status == 200
            assert resp.headers["x-ratelimit-remaining-requests"] == "3"  # listing is free


async def test_revoked_key_fails_at_once_on_the_other_instance(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    a, b = await two_instances(
        gateway, fake_openai, redis_url, {"tier": "premium", "developer": True}
    )
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, b, "woozlit/gpt-4o-mini"))[0] == 200  # b has cached the key
        keys = await a.app[ACCOUNTS].list_keys(a.account_id)
        await a.app[ACCOUNTS].revoke_key(keys[0]["id"])
        status, body, _ = await chat(session, b, "woozlit/gpt-4o-mini")
        assert status == 401
        assert body == {"error": "Invalid API key."}


async def test_stream_cut_by_the_client_is_charged_what_was_produced(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        MODELS,
        redis_url=redis_url,
        account={"tier": "free", "developer": True},
    )
    received = 0
    async with aiohttp.ClientSession() as session:
        body = {"model": "woozlit/endless", "messages": MESSAGES, "stream": True}
        async with session.post(gw.api + "/chat/completions", json=body, headers=gw.auth()) as resp:
            async for line in resp.content:
                if line.startswith(b"data: ") and b'"la "' in line:
                    received += 1
                    if received == 10:
                        break
    for _ in range(200):
        usage = await usage_of(gw)
        if usage["requests"]:
            break
        await asyncio.sleep(0.01)
    assert fake_openai.record.disconnects == 1
    # The gateway forwarded at least what we read (10 x "la "), and charges it as estimated,
    # with what the provider sent in the moment (0.25 s, a chunk every 10 ms) after the
    # client left, which it bills too.
    assert usage["prompt_tokens"] == PROMPT_ESTIMATE
    assert usage["completion_tokens"] >= (10 * 3 + 3) // 4
    assert usage["completion_tokens"] <= ((20 + 25) * 3 + 3) // 4
    assert usage["requests"] == 1
    assert usage["held"] == 0


async def test_quota_refusal_message_and_usage_endpoint(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    # The first request leaves less than the next one's prompt estimate + 1 token.
    limit = PROMPT_TOKENS + COMPLETION_TOKENS + PROMPT_ESTIMATE
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        MODELS,
        redis_url=redis_url,
        account={"tier": "free", "developer": True, "monthly_token_limit": limit},
    )
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, gw, "woozlit/gpt-4o-mini"))[0] == 200
        status, body, headers = await chat(session, gw, "woozlit/gpt-4o-mini")
        assert (status, body) == (429, {"error": QUOTA_MESSAGE})
        assert headers["x-should-retry"] == "false"
        async with session.get(gw.base_url + "/v1/usage", headers=gw.auth()) as resp:
            assert resp.status == 200
            usage = await resp.json()
    assert usage["limit"] == limit
    assert usage["used"] == PROMPT_TOKENS + COMPLETION_TOKENS
    assert usage["remaining"] == limit - usage["used"]
    assert set(usage) == {"month", "limit", "used", "remaining", "reset_at"}


async def test_redis_down_gives_fast_503_and_recovers(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, redis_server: RedisServer
):
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=redis_url)
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, gw, "woozlit/gpt-4o-mini"))[0] == 200
        redis_server.stop()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            status, body, _ = await chat(session, gw, "woozlit/gpt-4o-mini")
            assert status == 503
            assert "store" in body["error"]
            assert loop.time() - started < 2.5
            async with session.get(gw.base_url + "/readyz") as resp:
                assert resp.status == 503
        finally:
            redis_server.start()  # an empty Redis: scripts must be reloaded (NOSCRIPT)
        # The data is gone with that Redis; a fresh account on the same app works.
        acct = await gw.app[ACCOUNTS].create_account({"tier": "premium", "developer": True})
        key = await gw.app[ACCOUNTS].create_key(acct["id"], "again")
        body = {"model": "woozlit/gpt-4o-mini", "messages": MESSAGES, "stream": False}
        async with session.post(
            gw.api + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key['key']}"},
        ) as resp:
            assert resp.status == 200
        async with session.get(gw.base_url + "/readyz") as resp:
            assert resp.status == 200
    metrics = gw.app[ACCOUNTS].store.metrics.render().decode()
    assert 'woozlit_admissions_total{result="store"}' in metrics


async def test_a_stream_cut_by_the_upstream_tells_the_client_its_charge(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    models = {"woozlit/crash": [{"provider": "openai", "model": "midstream-error"}]}
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, models, redis_url=redis_url,
                       account={"tier": "free", "developer": True})  # fmt: skip
    body = {"model": "woozlit/crash", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.api + "/chat/completions", json=body, headers=gw.auth()) as resp,
    ):
        events = [line[6:] for line in (await resp.read()).split(b"\n\n") if line]
    usage_event, error_event = orjson.loads(events[-2]), orjson.loads(events[-1])
    assert "error" in error_event
    told = usage_event["usage"]["total_tokens"]
    assert told > 0
    assert (await usage_of(gw))["used"] == told


async def test_a_client_that_leaves_a_non_stream_request_is_charged_its_answer(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    """The provider bills the whole answer although the client left: so does the gateway,
    once the answer is in; till then the request still counts as in flight."""
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        MODELS,
        redis_url=redis_url,
        account={"tier": "free", "developer": True},
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(chat(session, gw), 0.5)
    await asyncio.sleep(0.2)
    assert gw.account_id in gw.app[ACCOUNTANT]._live
    fake_openai.record.gate.set()
    await eventually(lambda: gw.account_id not in gw.app[ACCOUNTANT]._live)
    usage = await usage_of(gw)
    assert usage["used"] == PROMPT_TOKENS + COMPLETION_TOKENS
    assert usage["requests"] == 1 and usage["held"] == 0
