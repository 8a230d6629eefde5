"""The quota with the three client protocols mixed: two gateway instances sharing one real
Redis, hundreds of concurrent requests of one account in chat completions, Anthropic
Messages (natively on a Claude deployment) and OpenAI Responses (natively on an OpenAI
deployment), as in test_accounting.py.

The three protocols hold different amounts for the same question (their bodies differ), so
"exactly k pass" becomes its two halves: the holds of the requests that passed fit in the
limit, and every request refused was refused because its own hold did not fit in what was
left (the upstreams hold every admitted answer until all are decided: nothing is settled
during the race, and what is left only shrinks). Then what is charged is exactly the sum of
the usage each client was told, in its own protocol's shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app_state import ACCOUNTANT, ACCOUNTS
from tests.conftest import FakeUpstream, Gateway, GatewayFactory, openai_provider
from tests.fakes.anthropic_upstream import FAKE, FakeAnthropic, create_fake_anthropic

QUOTA_MESSAGE = "Monthly token limit exceeded. Your usage will reset next month."
GPT = "woozlit/gated"
CLAUDE = "woozlit/claude-gated"
MODELS = {
    GPT: [{"provider": "openai", "model": "gated"}],
    CLAUDE: [{"provider": "anthropic", "model": "claude-3-5-haiku-20241022"}],
}
QUESTION = "What is the capital of France?"
MAX_TOKENS = 100
PROTOCOLS = ("chat", "messages", "responses")


@pytest.fixture
async def fake_claude() -> AsyncIterator[FakeAnthropic]:
    server = TestServer(create_fake_anthropic("test-key"))
    await server.start_server()
    fake = server.app[FAKE]
    fake.base_url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        await server.close()


async def two_instances(
    gateway: GatewayFactory,
    fake_openai: FakeUpstream,
    fake_claude: FakeAnthropic,
    redis_url: str,
    account: dict[str, Any],
) -> tuple[Gateway, Gateway]:
    claude_url = fake_claude_url(fake_claude)
    providers = {
        "openai": openai_provider(fake_openai.url, responses_api=True),
        "anthropic": {"kind": "anthropic", "base_url": claude_url, "api_key": "test-key"},
    }
    a = await gateway(providers, MODELS, redis_url=redis_url, account=account)
    b = await gateway(providers, MODELS, redis_url=redis_url, same_account_as=a)
    return a, b


def fake_claude_url(fake: FakeAnthropic) -> str:
    return str(fake.base_url)  # type: ignore[attr-defined]


async def send(
    session: aiohttp.ClientSession, gw: Gateway, protocol: str
) -> tuple[str, int, dict[str, Any]]:
    """One request in `protocol`: (protocol, status, body)."""
    if protocol == "chat":
        path, headers = "/chat/completions", gw.auth()
        body: dict[str, Any] = {
            "model": GPT,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": MAX_TOKENS,
        }
    elif protocol == "messages":
        path, headers = "/messages", {"x-api-key": gw.api_key, "anthropic-version": "2023-06-01"}
        body = {
            "model": CLAUDE,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": MAX_TOKENS,
        }
    else:
        path, headers = "/responses", gw.auth()
        body = {"model": GPT, "input": QUESTION, "max_output_tokens": MAX_TOKENS}
    async with session.post(gw.base_url + "/v1" + path, json=body, headers=headers) as r:
        return protocol, r.status, await r.json()


def charged(protocol: str, body: dict[str, Any]) -> int:
    """What the client was told it used, read in its protocol's shape."""
    usage = body["usage"]
    if protocol == "messages":
        return sum(
            usage.get(name) or 0
            for name in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            )
        )
    return int(usage["total_tokens"])


def quota_sentence(protocol: str, body: dict[str, Any]) -> str:
    if protocol == "messages":
        assert body["type"] == "error"
        assert body["error"]["type"] == "rate_limit_error"
    return str(body["error"]["message"])


async def usage_of(*gws: Gateway) -> dict[str, Any]:
    for gw in gws:
        await gw.app[ACCOUNTANT].flush()
    return await gws[0].app[ACCOUNTS].usage(gws[0].account_id)


def open_gates(fake_openai: FakeUpstream, fake_claude: FakeAnthropic) -> None:
    fake_openai.record.gate.set()
    gate = fake_claude.scenario.gate
    assert gate is not None
    gate.set()


async def holds(gw: Gateway, fake_openai: FakeUpstream, fake_claude: FakeAnthropic) -> dict:
    """What one request of each protocol holds, read from Redis while it is held."""
    found = {}
    async with aiohttp.ClientSession() as session:
        for protocol in PROTOCOLS:
            fake_openai.record.gate = asyncio.Event()
            fake_claude.scenario.gate = asyncio.Event()
            task = asyncio.create_task(send(session, gw, protocol))
            for _ in range(500):
                held = (await usage_of(gw))["held"]
                if held:
                    break
                await asyncio.sleep(0.01)
            found[protocol] = held
            open_gates(fake_openai, fake_claude)
            _, status, body = await task
            assert status == 200, body
    fake_openai.record.gate = asyncio.Event()
    fake_claude.scenario.gate = asyncio.Event()
    return found


async def test_quota_is_exact_with_three_protocols_across_two_instances(
    gateway: GatewayFactory,
    fake_openai: FakeUpstream,
    fake_claude: FakeAnthropic,
    redis_url: str,
) -> None:
    n = 300
    big = {"tier": "free", "developer": True, "monthly_token_limit": 10**9}
    probe, _ = await two_instances(gateway, fake_openai, fake_claude, redis_url, big)
    hold = await holds(probe, fake_openai, fake_claude)
    assert all(hold.values()), hold
    limit = 40 * sum(hold.values()) // 3
    account = {
        "tier": "free",
        "developer": True,
        "monthly_token_limit": limit,
        "requests_per_minute": 1000,
    }
    a, b = await two_instances(gateway, fake_openai, fake_claude, redis_url, account)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [
            asyncio.create_task(send(session, (a, b)[i % 2], PROTOCOLS[i % 3])) for i in range(n)
        ]
        # Every request is decided once the upstreams hold each admitted one.
        while True:
            waiting = len(fake_openai.record.requests) + len(fake_claude.requests)
            if waiting + sum(t.done() for t in tasks) >= n + len(PROTOCOLS):  # + the probes
                break
            await asyncio.sleep(0.01)
        open_gates(fake_openai, fake_claude)
        results = await asyncio.gather(*tasks)

    passed = [(p, body) for p, status, body in results if status == 200]
    refused = [(p, body) for p, status, body in results if status == 429]
    assert len(passed) + len(refused) == n, [s for _, s, _ in results if s not in (200, 429)]
    assert {p for p, _ in passed} == set(PROTOCOLS)  # every protocol got some through
    assert {p for p, _ in refused} == set(PROTOCOLS)  # and was refused some
    held = sum(hold[p] for p, _ in passed)
    assert held <= limit  # no overrun
    for protocol, body in refused:
        assert quota_sentence(protocol, body) == QUOTA_MESSAGE
        assert limit - held < hold[protocol]  # refused only when its hold did not fit

    usage = await usage_of(a, b)
    probes = await usage_of(probe)
    assert usage["used"] == sum(charged(p, body) for p, body in passed)
    assert usage["requests"] == len(passed)
    assert usage["held"] == 0
    assert probes["used"] > 0
