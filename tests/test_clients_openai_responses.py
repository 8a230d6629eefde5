"""The official openai Python SDK's Responses API, as a user runs it: `responses.create`,
`responses.stream` (its events and `get_final_response`), function tools, structured output
(`responses.parse` with a pydantic model) and its errors, on both prefixes and every family
(natively on the OpenAI deployment, translated elsewhere). Clients keep their default retry
settings (max_retries=2): the quota 429 must not be retried because the gateway says so.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pydantic
import pytest

from tests.fakes.anthropic_upstream import Scenario, ToolUse
from tests.test_responses import (
    ANSWERS,
    CLAUDE,
    FAMILIES,
    NATIVE,
    PREFIXES,
    WEATHER,
    Served,
    served,
)

__all__ = ["served"]  # the fixture, shared with tests/test_responses.py


@pytest.fixture(params=PREFIXES)
async def sdk(request: pytest.FixtureRequest, served: Served) -> AsyncIterator[openai.AsyncOpenAI]:
    base = served.gateway.base_url + request.param
    async with openai.AsyncOpenAI(api_key=served.gateway.api_key, base_url=base,
                                  timeout=20) as client:  # fmt: skip
        yield client


@pytest.mark.parametrize("model", FAMILIES)
async def test_create(sdk: openai.AsyncOpenAI, model: str) -> None:
    response = await sdk.responses.create(model=model, input="Hello!", instructions="Be nice.")
    assert response.output_text == ANSWERS[model]
    assert response.model == model and response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens > 0


@pytest.mark.parametrize("model", FAMILIES)
async def test_stream(sdk: openai.AsyncOpenAI, model: str) -> None:
    async with sdk.responses.stream(model=model, input="Hello!") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == ANSWERS[model] == final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", FAMILIES)
async def test_create_stream_true(sdk: openai.AsyncOpenAI, model: str) -> None:
    events = [e async for e in await sdk.responses.create(model=model, input="Hi", stream=True)]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == ANSWERS[model]


@pytest.mark.parametrize("model", ["woozlit/gpt-tools", CLAUDE, "woozlit/gemini-tools"])
async def test_function_tools(sdk: openai.AsyncOpenAI, served: Served, model: str) -> None:
    if model == CLAUDE:
        served.anthropic.scenario = Scenario(
            tools=[ToolUse("toolu_1", "get_weather", {"city": "Paris"})], text=[]
        )
    tools: Any = [WEATHER]
    first = await sdk.responses.create(model=model, input="Weather in Paris?", tools=tools)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"] == "Paris"
    if model == CLAUDE:
        served.anthropic.scenario = Scenario()
    history: Any = [{"role": "user", "content": "Weather in Paris?"}]
    for call in calls:
        history.append(call.model_dump(exclude_none=True))
        history.append({"type": "function_call_output", "call_id": call.call_id,
                        "output": "sunny"})  # fmt: skip
    async with sdk.responses.stream(model=model, input=history, tools=tools) as stream:
        second = await stream.get_final_response()
    assert second.status == "completed"


class Place(pydantic.BaseModel):
    city: str


async def test_structured_output(sdk: openai.AsyncOpenAI) -> None:
    parsed = await sdk.responses.parse(model="woozlit/gpt-json", input="Where?", text_format=Place)
    assert parsed.output_parsed == Place(city="Paris")


async def test_structured_output_translated(sdk: openai.AsyncOpenAI, served: Served) -> None:
    """On Claude the schema becomes the answer tool (providers/anthropic/request.py): its input
    comes back as the output text, which the SDK parses into the pydantic model."""
    served.anthropic.scenario = Scenario(
        tools=[ToolUse("toolu_1", "Place", {"city": "Paris"})], text=[]
    )
    try:
        parsed = await sdk.responses.parse(model=CLAUDE, input="Where?", text_format=Place)
        async with sdk.responses.stream(model=CLAUDE, input="Where?", text_format=Place) as s:
            streamed = await s.get_final_response()
    finally:
        served.anthropic.scenario = Scenario()
    assert parsed.output_parsed == Place(city="Paris")
    assert streamed.output_parsed == Place(city="Paris")
    schema = served.anthropic.requests[-1].body["tools"][0]
    assert schema["name"] == "Place"


async def test_errors(sdk: openai.AsyncOpenAI, served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.responses.create(model=NATIVE, input="hi", previous_response_id="resp_1")
    assert "previous_response_id" in bad.value.message and bad.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):  # the gateway keeps no responses to retrieve
        await sdk.responses.retrieve("resp_1")
    async with openai.AsyncOpenAI(api_key="woozlit_" + "x" * 43, base_url=str(sdk.base_url),
                                  max_retries=0) as stranger:  # fmt: skip
        with pytest.raises(openai.AuthenticationError) as unauthorized:
            await stranger.responses.create(model=NATIVE, input="hi")
    assert unauthorized.value.code == "invalid_api_key"


async def test_quota_is_not_retried(sdk: openai.AsyncOpenAI, served: Served) -> None:
    from proxy.app_state import ACCOUNTS

    accounts = served.gateway.app[ACCOUNTS]
    spent = await accounts.create_account({"tier": "spent", "developer": True})
    key = (await accounts.create_key(spent["id"], "spent"))["key"]
    before = len(served.openai.record.requests)
    async with openai.AsyncOpenAI(api_key=key, base_url=str(sdk.base_url)) as client:
        with pytest.raises(openai.RateLimitError) as quota:
            await client.responses.create(model=NATIVE, input="hi")
    assert quota.value.code == "insufficient_quota"
    assert "Monthly token limit exceeded" in quota.value.message
    assert len(served.openai.record.requests) == before


@pytest.mark.parametrize("model", ["woozlit/gpt-crashing", "woozlit/chat-crashing"])
async def test_midstream_error(sdk: openai.AsyncOpenAI, model: str) -> None:
    async with sdk.responses.stream(model=model, input="Hello!") as stream:
        events = [e async for e in stream]
        with pytest.raises(RuntimeError):
            await stream.get_final_response()
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1 and errors[0].message
    assert events[-1].type == "response.failed"
