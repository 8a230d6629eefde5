"""The official anthropic Python SDK, as a user runs it, on both API prefixes and every family:
`messages.create`, `messages.stream` (text_stream, get_final_message), a tool_use round trip,
`messages.count_tokens`, and what it shows of each error.

Clients keep their default retry settings: the quota 429 must not be retried because the
gateway says so (`x-should-retry: false`), not because the test turned retries off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from tests.clients.harness import (
    ANSWERS,
    BAD_KEY,
    CLAUDE_MODEL,
    CRASHING_MODEL,
    FAMILIES,
    OPENAI_MODEL,
    QUOTA_SENTENCE,
    REASONING,
    TOOL_CITIES,
    TOOLS_MODEL,
    UNKNOWN_MODEL,
    ClientGateway,
    serving,
)
from tests.conftest import FakeUpstream, GatewayFactory
from tests.fakes.anthropic_upstream import Scenario, ToolUse

HELLO: list[Any] = [{"role": "user", "content": "Hello!"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PREFIXES = {"v1": "", "woozlit": "/api/woozlit"}  # the SDK adds /v1/messages


@pytest.fixture
async def cg(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
) -> AsyncIterator[ClientGateway]:
    async with serving(gateway, fake_openai, redis_url) as served:
        yield served


@pytest.fixture(params=list(PREFIXES))
async def sdk(
    request: pytest.FixtureRequest, cg: ClientGateway
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The SDK on one prefix, with its defaults (max_retries=2), its key as x-api-key."""
    base_url = cg.gateway.base_url + PREFIXES[request.param]
    async with anthropic.AsyncAnthropic(api_key=cg.key, base_url=base_url, timeout=20) as client:
        yield client


@pytest.mark.parametrize("model", FAMILIES)
async def test_create(sdk: anthropic.AsyncAnthropic, model: str) -> None:
    message = await sdk.messages.create(model=model, max_tokens=256, messages=HELLO)
    texts = [block.text for block in message.content if block.type == "text"]
    assert texts == [ANSWERS[model]]
    assert (message.model, message.role, message.stop_reason) == (model, "assistant", "end_turn")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("model", FAMILIES)
async def test_stream(sdk: anthropic.AsyncAnthropic, model: str) -> None:
    async with sdk.messages.stream(model=model, max_tokens=256, messages=HELLO) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == ANSWERS[model]
    assert [b.type for b in final.content] == (
        ["thinking", "text"] if model in REASONING else ["text"]
    )
    assert final.stop_reason == "end_turn" and final.model == model
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


async def test_auth_token(cg: ClientGateway) -> None:
    """ANTHROPIC_AUTH_TOKEN's way: the key as `Authorization: Bearer`."""
    async with anthropic.AsyncAnthropic(auth_token=cg.key, base_url=cg.gateway.base_url) as sdk:
        message = await sdk.messages.create(model=CLAUDE_MODEL, max_tokens=64, messages=HELLO)
    assert message.content[0].type == "text"


async def test_thinking_native(sdk: anthropic.AsyncAnthropic) -> None:
    """Extended thinking from a Claude deployment: the block and its signature, streamed."""
    async with sdk.messages.stream(
        model=CLAUDE_MODEL,
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=HELLO,
    ) as stream:
        final = await stream.get_final_message()
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.signature and thinking.thinking


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("model", [CLAUDE_MODEL, TOOLS_MODEL])
async def test_tool_round_trip(
    sdk: anthropic.AsyncAnthropic, cg: ClientGateway, model: str, streaming: bool
) -> None:
    cg.anthropic.scenario = Scenario(tools=[ToolUse("toolu_01", "get_weather", {"city": "Paris"})])
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": 256,
        "messages": HELLO,
        "tools": [WEATHER],
    }
    message = await _answer(sdk, request, streaming)
    calls = [block for block in message.content if block.type == "tool_use"]
    cities = ["Paris"] if model == CLAUDE_MODEL else TOOL_CITIES
    assert [call.input["city"] for call in calls] == cities
    assert message.stop_reason == "tool_use"
    cg.anthropic.scenario = Scenario()
    results = [
        {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"} for call in calls
    ]
    request["messages"] = [
        *HELLO,
        {"role": "assistant", "content": message.content},
        {"role": "user", "content": results},
    ]
    follow_up = await _answer(sdk, request, streaming)
    assert follow_up.content


async def _answer(
    sdk: anthropic.AsyncAnthropic, request: dict[str, Any], streaming: bool
) -> anthropic.types.Message:
    if not streaming:
        return await sdk.messages.create(**request)
    async with sdk.messages.stream(**request) as stream:
        return await stream.get_final_message()


@pytest.mark.parametrize("model", FAMILIES)
async def test_count_tokens(sdk: anthropic.AsyncAnthropic, model: str) -> None:
    count = await sdk.messages.count_tokens(model=model, messages=HELLO, tools=[WEATHER])
    if model == CLAUDE_MODEL:
        assert count.input_tokens == 21  # Anthropic's own count (the fake's)
    else:
        assert count.input_tokens > 0  # the gateway's estimate


# -- what a user sees of each error --------------------------------------------------------


async def test_bad_key(sdk: anthropic.AsyncAnthropic, cg: ClientGateway) -> None:
    sentence = await cg.sentence("401")
    with pytest.raises(anthropic.AuthenticationError) as info:
        await sdk.with_options(api_key=BAD_KEY).messages.create(
            model=OPENAI_MODEL, max_tokens=10, messages=HELLO
        )
    assert info.value.status_code == 401
    assert (info.value.type, info.value.api_message) == ("authentication_error", sentence)
    assert sentence in str(info.value)


async def test_bad_request(sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(model=CLAUDE_MODEL, max_tokens=0, messages=HELLO)
    assert info.value.type == "invalid_request_error"
    assert info.value.api_message is not None and "max_tokens" in info.value.api_message


async def test_unknown_model(sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        await sdk.messages.create(model=UNKNOWN_MODEL, max_tokens=10, messages=HELLO)
    assert info.value.type == "not_found_error"
    assert info.value.api_message is not None and UNKNOWN_MODEL in info.value.api_message


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
async def test_quota_is_not_retried(
    sdk: anthropic.AsyncAnthropic, cg: ClientGateway, streaming: bool
) -> None:
    spent = sdk.with_options(api_key=cg.quota_key)
    before = cg.quota_refusals()
    with pytest.raises(anthropic.RateLimitError) as info:
        await spent.messages.create(
            model=OPENAI_MODEL, max_tokens=10, messages=HELLO, stream=streaming
        )
    assert cg.quota_refusals() - before == 1  # default max_retries=2, none used
    assert (info.value.type, info.value.api_message) == ("rate_limit_error", QUOTA_SENTENCE)
    assert info.value.response.headers["x-should-retry"] == "false"


async def test_error_mid_stream(sdk: anthropic.AsyncAnthropic, cg: ClientGateway) -> None:
    sentence = await cg.sentence("midstream")
    received = ""
    with pytest.raises(anthropic.APIStatusError) as info:
        async with sdk.messages.stream(
            model=CRASHING_MODEL, max_tokens=10, messages=HELLO
        ) as stream:
            async for piece in stream.text_stream:
                received += piece
    assert received == "Hello!"  # what came before the error still reached the user
    assert sentence in str(info.value)
    assert info.value.type == "api_error"
