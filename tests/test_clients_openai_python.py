"""The official openai Python SDK, as a user runs it, on both API profiles and every family.

Clients keep their default retry settings: the quota 429 must not be retried because the
gateway says so (`x-should-retry: false`), not because the test turned retries off. Every
answer the SDK receives is also checked against the SDK's own types (tests/openai_types.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.clients.harness import (
    ANSWERS,
    BAD_KEY,
    CLAUDE_MODEL,
    CRASHING_MODEL,
    FAMILIES,
    HELLO,
    OPENAI_MODEL,
    QUOTA_SENTENCE,
    REASONING,
    TOOL_CITIES,
    TOOLS_MODEL,
    UNKNOWN_MODEL,
    WEATHER_TOOL,
    ClientGateway,
    serving,
)
from tests.conftest import FakeUpstream, GatewayFactory
from tests.openai_types import check_chunks, check_completion


@pytest.fixture
async def client_gateway(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
) -> AsyncIterator[ClientGateway]:
    async with serving(gateway, fake_openai, redis_url) as served:
        yield served


@pytest.fixture(params=["v1", "woozlit"])
async def sdk(
    request: pytest.FixtureRequest, client_gateway: ClientGateway
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK on one profile, with its defaults (max_retries=2)."""
    async with openai.AsyncOpenAI(
        api_key=client_gateway.key, base_url=client_gateway.url(request.param), timeout=20
    ) as client:
        client.profile = request.param  # type: ignore[attr-defined]
        yield client


async def create(sdk: openai.AsyncOpenAI, **body: Any) -> openai.types.chat.ChatCompletion:
    """A non-stream completion, its raw JSON checked against the SDK's types first."""
    raw = await sdk.chat.completions.with_raw_response.create(**body)
    check_completion(json.loads(raw.text))
    return raw.parse()


async def stream(sdk: openai.AsyncOpenAI, **body: Any) -> list[Any]:
    """A stream's chunks, each as received (unset keys left out) checked with the types."""
    chunks = [c async for c in await sdk.chat.completions.create(stream=True, **body)]
    check_chunks([c.to_dict() for c in chunks])
    return chunks


@pytest.mark.parametrize("model", FAMILIES)
async def test_non_stream(sdk: openai.AsyncOpenAI, model: str) -> None:
    completion = await create(sdk, model=model, messages=HELLO)
    assert completion.choices[0].message.content == ANSWERS[model]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == model
    assert completion.usage is not None and completion.usage.total_tokens > 0


@pytest.mark.parametrize("model", FAMILIES)
async def test_stream(sdk: openai.AsyncOpenAI, model: str) -> None:
    chunks = await stream(sdk, model=model, messages=HELLO, stream_options={"include_usage": True})
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ANSWERS[model]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == REASONING.get(model, "")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


@pytest.mark.parametrize("model", [TOOLS_MODEL, CLAUDE_MODEL])
async def test_tool_call(
    sdk: openai.AsyncOpenAI, client_gateway: ClientGateway, model: str
) -> None:
    client_gateway.claude_calls_tools()
    completion = await create(sdk, model=model, messages=HELLO, tools=[WEATHER_TOOL])
    calls = completion.choices[0].message.tool_calls or []
    cities = TOOL_CITIES if model == TOOLS_MODEL else ["Paris"]
    assert [c.function.name for c in calls] == ["get_weather"] * len(cities)  # type: ignore[union-attr]
    assert [json.loads(c.function.arguments)["city"] for c in calls] == cities  # type: ignore[union-attr]
    assert all(c.id for c in calls)
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", [TOOLS_MODEL, CLAUDE_MODEL])
async def test_tool_call_stream(
    sdk: openai.AsyncOpenAI, client_gateway: ClientGateway, model: str
) -> None:
    client_gateway.claude_calls_tools()
    chunks = await stream(sdk, model=model, messages=HELLO, tools=[WEATHER_TOOL])
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                into = calls.setdefault(call.index, {"name": "", "arguments": ""})
                if call.function is not None:
                    into["name"] += call.function.name or ""
                    into["arguments"] += call.function.arguments or ""
    cities = TOOL_CITIES if model == TOOLS_MODEL else ["Paris"]
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather"] * len(cities)
    assert [json.loads(calls[i]["arguments"])["city"] for i in sorted(calls)] == cities
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_models_retrieve(sdk: openai.AsyncOpenAI) -> None:
    model = await sdk.models.retrieve(OPENAI_MODEL)
    assert (model.id, model.object) == (OPENAI_MODEL, "model")


# -- what a user sees of each error --------------------------------------------------------


def shown(exc: openai.APIStatusError, sentence: str, profile: str) -> None:
    """What the SDK shows of an error answer: on the OpenAI profile the sentence is in the
    exception's text (`Error code: 401 - <sentence>`); on the Woozlit profile, whose error is
    a plain string, openai 3.x keeps it only in `body` (its text says `Error code: 401`)."""
    if profile == "v1":
        assert str(exc) == f"Error code: {exc.status_code} - {sentence}"
        assert isinstance(exc.body, dict) and exc.body["message"] == sentence
    else:
        assert exc.body == sentence


async def test_bad_key(sdk: openai.AsyncOpenAI, client_gateway: ClientGateway) -> None:
    sentence = await client_gateway.sentence("401", sdk.profile)  # type: ignore[attr-defined]
    with pytest.raises(openai.AuthenticationError) as info:
        await sdk.with_options(api_key=BAD_KEY).chat.completions.create(
            model=OPENAI_MODEL, messages=HELLO
        )
    shown(info.value, sentence, sdk.profile)  # type: ignore[attr-defined]
    if sdk.profile == "v1":  # type: ignore[attr-defined]
        assert (info.value.type, info.value.code) == ("invalid_request_error", "invalid_api_key")


async def test_bad_request(sdk: openai.AsyncOpenAI, client_gateway: ClientGateway) -> None:
    sentence = await client_gateway.sentence("400", sdk.profile)  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model=UNKNOWN_MODEL, messages=HELLO)
    shown(info.value, sentence, sdk.profile)  # type: ignore[attr-defined]
    if sdk.profile == "v1":  # type: ignore[attr-defined]
        assert (info.value.type, info.value.param) == ("invalid_request_error", "model")


@pytest.mark.parametrize("streaming", [False, True], ids=["non-stream", "stream"])
async def test_quota_is_not_retried(
    sdk: openai.AsyncOpenAI, client_gateway: ClientGateway, streaming: bool
) -> None:
    spent = sdk.with_options(api_key=client_gateway.quota_key)
    before = client_gateway.quota_refusals()
    with pytest.raises(openai.RateLimitError) as info:
        await spent.chat.completions.create(model=OPENAI_MODEL, messages=HELLO, stream=streaming)
    assert client_gateway.quota_refusals() - before == 1  # default max_retries=2, none used
    shown(info.value, QUOTA_SENTENCE, sdk.profile)  # type: ignore[attr-defined]
    assert info.value.response.headers["x-should-retry"] == "false"
    if sdk.profile == "v1":  # type: ignore[attr-defined]
        assert (info.value.type, info.value.code) == ("insufficient_quota", "insufficient_quota")


async def test_error_mid_stream(sdk: openai.AsyncOpenAI, client_gateway: ClientGateway) -> None:
    sentence = await client_gateway.sentence("midstream", sdk.profile)  # type: ignore[attr-defined]
    received = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in await sdk.chat.completions.create(
            model=CRASHING_MODEL, messages=HELLO, stream=True
        ):
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert received == "Hello!"  # what came before the error still reached the user
    assert info.value.message == sentence
