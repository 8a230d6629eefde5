"""A property of the accounting, driven by hypothesis: whatever a client sends, `used` never
passes the limit and equals what was served.

Each example is a fresh account with a small monthly limit and a handful of concurrent
requests through two gateway instances sharing one Redis, against an upstream that bills as
the real providers do (`tests/fakes/billing_upstream.py`). The requests draw their provider,
`n`, output cap (absent, or under either name, or both), a large text in one of the fields a
provider bills (a message, the system prompt, a tool's description, a JSON schema), streaming
or not, and what the client does with a stream: read it all, cut it, or stall. Then:

- `used <= limit`, nothing is held, nothing is left in flight;
- with an upstream that honours caps and reports no more prompt than the estimate, nothing
  is excess: `used` is exactly the usage the upstream reported for each request it served
  in full, plus, for streams the client cut, at least what the client received and at most
  the prompt estimate plus what the upstream wrote;
- with an upstream that bills past the cap, `used + excess` is the same sum, and `used` still
  does not pass the limit.
"""

from __future__ import annotations

import asyncio
import socket
import warnings
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app_state import ACCOUNTANT, ACCOUNTS
from proxy.estimates import estimate_prompt_tokens
from tests.conftest import Gateway, GatewayFactory, eventually
from tests.fakes.billing_upstream import BillingUpstream, start_billing_upstream

with warnings.catch_warnings():
    # See tests/test_hostile.py: hypothesis's failure report imports libcst, which warns.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

KINDS = {
    "gpt": "openai",
    "deepseek": "openai",
    "claude": "anthropic",
    "gemini": "gemini",
}
LENGTHS = {"short": 300, "long": 40_000}
STALL_SECONDS = 0.4  # a stalled client: longer than the gateway's client_read_timeout
PROPERTY = settings(
    deadline=None,
    max_examples=30,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Case:
    model: str  # public name: woozlit/<family>-<length>-<scenario>
    body: dict[str, Any]
    instance: int  # which gateway instance gets it
    client: str  # "read", "cut" or "stall" (streams only)
    cut_after: int  # bytes a cutting client reads


def huge(text_tokens: int) -> str:
    return "lorem ipsum " * (text_tokens // 3 + 1)


@st.composite
def cases(draw: st.DrawFn, greedy: bool) -> Case:
    family = draw(st.sampled_from(sorted(KINDS)))
    length = draw(st.sampled_from(sorted(LENGTHS)))
    scenario = "greedy" if greedy and draw(st.booleans()) else "answer"
    body: dict[str, Any] = {
        "model": f"woozlit/{family}-{length}-{scenario}",
        "messages": [{"role": "user", "content": "Tell me a story."}],
    }
    where = draw(st.sampled_from(["message", "system", "tool", "schema", "name", "none"]))
    text = huge(draw(st.integers(0, 3000)))
    if where == "message":
        body["messages"][0]["content"] = text
    elif where == "system":
        body["messages"].insert(0, {"role": "system", "content": text})
    elif where == "name":
        body["messages"][0]["name"] = text[:64]
    elif where == "tool":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": text,
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ]
    elif where == "schema" and family != "claude":  # Anthropic drops response_format
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": "story",
                "schema": {
                    "type": "object",
                    "properties": {"story": {"type": "string", "description": text}},
                },
            },
        }
    if family != "claude":
        n = draw(st.integers(1, 4))
        if n > 1:
            body["n"] = n
    caps = draw(st.sampled_from(["none", "max_tokens", "max_completion_tokens", "both"]))
    if caps in ("max_tokens", "both"):
        body["max_tokens"] = draw(st.integers(1, 60_000))
    if caps in ("max_completion_tokens", "both"):
        body["max_completion_tokens"] = draw(st.integers(1, 60_000))
    stream = draw(st.booleans())
    body["stream"] = stream
    if stream and draw(st.booleans()):
        body["stream_options"] = {"include_usage": True}
    client = draw(st.sampled_from(["read", "cut", "stall"])) if stream else "read"
    return Case(
        body["model"],
        body,
        draw(st.integers(0, 1)),
        client,
        draw(st.integers(200, 20_000)),
    )


@pytest.fixture
async def billing() -> Any:
    up = await start_billing_upstream()
    yield up
    await up.close()


def config_for(up: BillingUpstream) -> tuple[dict[str, Any], dict[str, Any]]:
    providers = {
        "openai": {
            "kind": "openai",
            "base_url": up.openai_base_url,
            "api_key": "sk-test",
            "max_tokens_parameter": "max_completion_tokens",
        },
        "deepseek": {"kind": "openai", "base_url": up.openai_base_url, "api_key": "sk-test"},
        "claude": {"kind": "anthropic", "base_url": up.anthropic_base_url, "api_key": "k"},
        "gemini": {"kind": "gemini", "base_url": up.gemini_base_url, "api_key": "k"},
    }
    family_provider = {
        "gpt": "openai",
        "deepseek": "deepseek",
        "claude": "claude",
        "gemini": "gemini",
    }
    models = {
        f"woozlit/{family}-{length}-{scenario}": [
            {"provider": family_provider[family], "model": f"{scenario}-{tokens}"}
        ]
        for family in KINDS
        for length, tokens in LENGTHS.items()
        for scenario in ("answer", "greedy")
    }
    return providers, models


@pytest.fixture
async def pair(gateway: GatewayFactory, billing: BillingUpstream, redis_url: str) -> Any:
    providers, models = config_for(billing)
    options = {
        "redis_url": redis_url,
        "server": {"client_read_timeout_seconds": 0.2},
        "accounting": {"hold_ttl_seconds": 1},  # renewed while live: streams outlive it
    }
    a = await gateway(providers, models, **options)
    b = await gateway(providers, models, same_account_as=a, **options)
    return a, b


@dataclass
class Outcome:
    status: int
    received: int  # completion tokens ("tok ") the client saw
    whole: bool  # the client read the whole answer


async def run_stream(gw: Gateway, key: str, case: Case) -> Outcome:
    data = orjson.dumps(case.body)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    if case.client == "stall":
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        (
            "POST /api/woozlit/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + data
    )
    received = b""
    try:
        while chunk := await reader.read(4096):
            received += chunk
            if case.client == "cut" and len(received) >= case.cut_after:
                break
            if case.client == "stall" and len(received) >= 1024:
                await asyncio.sleep(STALL_SECONDS)
                case = Case(case.model, case.body, case.instance, "read", 0)
    except ConnectionError:
        pass
    finally:
        writer.close()
    status = int(received[9:12]) if received.startswith(b"HTTP/1.1 ") else 0
    return Outcome(status, received.count(b"tok "), b"data: [DONE]" in received)


async def run_json(session: aiohttp.ClientSession, gw: Gateway, key: str, case: Case) -> Outcome:
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(gw.api + "/chat/completions", json=case.body, headers=headers) as r:
        body = await r.read()
        return Outcome(r.status, body.count(b"tok "), r.status == 200)


async def check_property(
    pair: tuple[Gateway, Gateway], billing: BillingUpstream, limit: int, batch: list[Case]
) -> None:
    a, _ = pair
    accounts = a.app[ACCOUNTS]
    account = await accounts.create_account(
        {"tier": "free", "developer": True, "monthly_token_limit": limit}
    )
    key = (await accounts.create_key(account["id"], "property"))["key"]
    billing.record.requests.clear()
    for i, case in enumerate(batch):  # a mark that finds each request's bill upstream
        message = case.body["messages"][-1]
        message["content"] = f"[case {i}] " + message["content"]
    async with aiohttp.ClientSession() as session:
        outcomes = await asyncio.gather(
            *(
                run_stream(pair[c.instance], key, c)
                if c.body["stream"]
                else run_json(session, pair[c.instance], key, c)
                for c in batch
            )
        )
    for outcome in outcomes:
        assert outcome.status in (200, 400, 429), outcomes
    for gw in pair:  # every request is settled, on both instances
        await eventually(lambda gw=gw: account["id"] not in gw.app[ACCOUNTANT]._live)
        await gw.app[ACCOUNTANT].flush(10)
    usage = await accounts.usage(account["id"])
    assert usage["used"] <= limit, usage
    assert usage["held"] == 0, usage

    # What each request may have been charged, from what the upstream billed and the client
    # saw: exactly the upstream's usage when the client read the whole answer (the gateway
    # then read it all too), else at least the prompt and what the client received and at
    # most the prompt estimate and all the upstream wrote.
    low = high = 0
    for i, (case, outcome) in enumerate(zip(batch, outcomes, strict=True)):
        bills = [
            b for b in billing.record.requests if f"[case {i}] ".encode() in orjson.dumps(b.body)
        ]
        assert len(bills) <= 1
        if not bills or bills[0].status != 200:
            continue  # refused before or by the upstream: nothing charged
        bill = bills[0]
        if outcome.whole:
            low += bill.total_tokens
            high += bill.total_tokens
        else:
            low += bill.prompt_tokens + outcome.received
            high += estimate_prompt_tokens(case.body) + bill.tokens_sent + 1
    total = usage["used"] + usage["excess_tokens"]
    assert low <= total <= high, (usage, low, high, outcomes)
    if not any("greedy" in c.model for c in batch):
        assert usage["excess_tokens"] == 0, usage


@PROPERTY
@given(
    limit=st.integers(200, 30_000),
    batch=st.lists(cases(greedy=False), min_size=1, max_size=6),
)
async def test_used_never_passes_the_limit_and_is_what_was_served(pair, billing, limit, batch):
    await check_property(pair, billing, limit, batch)


@PROPERTY
@given(
    limit=st.integers(200, 30_000),
    batch=st.lists(cases(greedy=True), min_size=1, max_size=6),
)
async def test_a_provider_billing_past_the_cap_never_takes_used_past_the_limit(
    pair, billing, limit, batch
):
    await check_property(pair, billing, limit, batch)
