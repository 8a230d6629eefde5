"""OpenAI's Responses API over HTTP (`POST /v1/responses`, `/api/woozlit/v1/responses`):
natively on an OpenAI deployment with `responses_api`, translated on every other family
(an OpenAI-kind upstream without it, DeepSeek, Claude, Gemini), both modes, both prefixes.
Every answer is checked against openai-python's own types (`Response`, `ResponseStreamEvent`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxy.app_state import ACCOUNTANT, ACCOUNTS, METRICS
from proxy.estimates import BUILTIN_TOOL_RESERVE
from tests.conftest import FakeUpstream, Gateway, GatewayFactory, openai_provider
from tests.fakes.anthropic_upstream import (
    FAKE,
    FakeAnthropic,
    Scenario,
    ToolUse,
    create_fake_anthropic,
)
from tests.fakes.gemini_upstream import create_fake_gemini
from tests.fakes.openai_responses import INPUT_TOKENS, OUTPUT_TOKENS

NATIVE = "woozlit/gpt-4o"
CHAT_OPENAI = "woozlit/gpt-4o-chat"  # an OpenAI-kind upstream without the Responses API
DEEPSEEK = "woozlit/deepseek-reasoner"
CLAUDE = "woozlit/claude-3-5-sonnet-20241022"
GEMINI = "woozlit/gemini-1.5-pro"
FAMILIES = [NATIVE, CHAT_OPENAI, DEEPSEEK, CLAUDE, GEMINI]
ANSWERS = {
    NATIVE: "Hello! How can I help?",
    CHAT_OPENAI: "Hello! How can I help?",
    DEEPSEEK: "Hello! How can I help?",
    CLAUDE: "Hello from Claude.",
    GEMINI: "Hello from Gemini!",
}
MODELS = {
    NATIVE: [{"provider": "openai", "model": "gpt-4o"}],
    CHAT_OPENAI: [{"provider": "chat", "model": "gpt-4o"}],
    DEEPSEEK: [{"provider": "deepseek", "model": "deepseek-reasoner"}],
    CLAUDE: [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022"}],
    GEMINI: [{"provider": "google", "model": "gemini-1.5-pro"}],
    "woozlit/gemini-tools": [{"provider": "google", "model": "tools"}],
    "woozlit/gpt-tools": [{"provider": "openai", "model": "tools"}],
    "woozlit/gpt-json": [{"provider": "openai", "model": "json"}],
    "woozlit/gpt-crashing": [{"provider": "openai", "model": "midstream-error"}],
    "woozlit/chat-crashing": [{"provider": "chat", "model": "midstream-error"}],
    "woozlit/chat-endless": [{"provider": "chat", "model": "endless"}],
    "woozlit/gpt-5-mini": [{"provider": "openai", "model": "gpt-5-mini"}],
    "woozlit/gpt-404": [{"provider": "openai", "model": "error-404"}],
    "woozlit/gpt-retired": [{"provider": "openai", "model": "retired"}],
}
TIERS = {
    "free": {"monthly_tokens": 1000, "requests_per_minute": 1000},
    "premium": {"monthly_tokens": None, "requests_per_minute": 1000},
    "spent": {"monthly_tokens": 5, "requests_per_minute": 1000},
}
PREFIXES = ["/v1", "/api/woozlit/v1"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CODEX = Path(__file__).parent / "corpus" / "clients" / "codex.requests.json"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@dataclass
class Served:
    gateway: Gateway
    openai: FakeUpstream
    anthropic: FakeAnthropic

    async def post(
        self, body: dict[str, Any], prefix: str = "/v1", key: str | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        auth = {"Authorization": f"Bearer {key or self.gateway.api_key}", **headers}
        url = self.gateway.base_url + prefix + "/responses"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=body, headers=auth) as resp,
        ):
            return resp.status, dict(resp.headers), await resp.read()

    async def answer(self, body: dict[str, Any], prefix: str = "/v1") -> dict[str, Any]:
        status, _, raw = await self.post({**body, "stream": False}, prefix)
        assert status == 200, raw
        answer: dict[str, Any] = json.loads(raw)
        Response.model_validate(answer)
        return answer

    async def events(self, body: dict[str, Any], prefix: str = "/v1") -> list[dict[str, Any]]:
        status, headers, raw = await self.post({**body, "stream": True}, prefix)
        assert status == 200, raw
        assert headers["Content-Type"].startswith("text/event-stream")
        return parse_events(raw)


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    """A Responses stream's events, each checked: its `event:` name is its type, its shape
    openai-python's, its sequence number the next one."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = lines[0].removeprefix("event: ")
        data = json.loads(lines[1].removeprefix("data: "))
        assert data["type"] == name, block
        EVENTS.validate_python(data)
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def text_of(answer: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in answer["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


@pytest.fixture
async def served(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
) -> AsyncIterator[Served]:
    anthropic = TestServer(create_fake_anthropic("test-key"))
    gemini = TestServer(create_fake_gemini("test-key", chunk_delay=0.01))
    await anthropic.start_server()
    await gemini.start_server()
    try:
        providers = {
            "openai": openai_provider(fake_openai.url, responses_api=True),
            "chat": openai_provider(fake_openai.url),
            "deepseek": openai_provider(fake_openai.url),
            "anthropic": {"kind": "anthropic", "api_key": "test-key",
                          "base_url": str(anthropic.make_url("")).rstrip("/")},
            "google": {"kind": "gemini", "api_key": "test-key",
                       "base_url": str(gemini.make_url("")).rstrip("/")},
        }  # fmt: skip
        gw = await gateway(providers, MODELS, tiers=TIERS, redis_url=redis_url)
        yield Served(gw, fake_openai, anthropic.app[FAKE])
    finally:
        await anthropic.close()
        await gemini.close()


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("model", FAMILIES)
async def test_non_stream(served: Served, model: str, prefix: str) -> None:
    answer = await served.answer({"model": model, "input": "Hello!"}, prefix)
    assert text_of(answer) == ANSWERS[model]
    assert answer["model"] == model and answer["status"] == "completed"
    assert answer["id"].startswith("woozlit-") and answer["store"] is True  # items kept
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0


async def test_native_sends_the_body_as_it_came(served: Served) -> None:
    body = {"model": NATIVE, "input": "Hello!", "instructions": "Be brief.",
            "metadata": {"a": "b"}, "store": True, "max_output_tokens": 64}  # fmt: skip
    answer = await served.answer(body)
    sent = served.openai.record.requests[-1]
    assert sent["model"] == "gpt-4o" and sent["store"] is False
    assert sent["max_output_tokens"] == 64 and sent["stream"] is False
    assert sent["input"] == "Hello!" and sent["metadata"] == {"a": "b"}
    assert "temperature" not in sent  # the reasoning models refuse one
    assert answer["usage"]["input_tokens"] == INPUT_TOKENS
    assert answer["usage"]["output_tokens"] == OUTPUT_TOKENS


async def test_translated_request_is_chat_completions(served: Served) -> None:
    body = {
        "model": CHAT_OPENAI,
        "instructions": "Be brief.",
        "input": [
            {"type": "message", "role": "developer", "content": "Answer in English."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "low"},
        "max_output_tokens": 100,
    }
    await served.answer(body)
    sent = served.openai.record.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
    ]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["reasoning_effort"] == "low"
    assert sent["max_tokens"] == 100


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("model", FAMILIES)
async def test_stream(served: Served, model: str, prefix: str) -> None:
    events = await served.events({"model": model, "input": "Hello!"}, prefix)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == ANSWERS[model]
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1 and ids.pop().startswith("woozlit-")
    final = events[-1]["response"]
    assert final["model"] == model and text_of(final) == ANSWERS[model]
    assert final["usage"]["total_tokens"] > 0
    assert "[DONE]" not in json.dumps(events)
    if model == DEEPSEEK:  # its reasoning_content, as a reasoning item before the message
        assert final["output"][0]["type"] == "reasoning"
        assert final["output"][0]["content"][0]["text"] == "Let me think."


async def function_round_trip(served: Served, model: str, stream: bool) -> dict[str, Any]:
    """A function call, then its output sent back with the whole conversation: the second
    answer (the fake Gemini's `tools` model calls its tools again)."""
    body: dict[str, Any] = {"model": model, "input": "Weather in Paris?", "tools": [WEATHER]}
    if stream:
        events = await served.events(body)
        answer = events[-1]["response"]
        done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
        calls = [item for item in answer["output"] if item["type"] == "function_call"]
        assert [e["arguments"] for e in done] == [c["arguments"] for c in calls]
    else:
        answer = await served.answer(body)
    calls = [item for item in answer["output"] if item["type"] == "function_call"]
    assert calls and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"])["city"] == "Paris"
    outputs = [
        {"type": "function_call_output", "call_id": c["call_id"], "output": "sunny"} for c in calls
    ]
    second = {**body, "input": [{"role": "user", "content": "Weather in Paris?"},
                                *calls, *outputs]}  # fmt: skip
    if model == CLAUDE:
        served.anthropic.scenario = Scenario()  # the answer, once the call is answered
    sent = len(served.openai.record.requests)
    again = await served.answer(second)
    if model == "woozlit/gpt-tools":
        assert served.openai.record.requests[sent]["input"] == second["input"]
    return again


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["woozlit/gpt-tools", CLAUDE, "woozlit/gemini-tools"])
async def test_function_tools_round_trip(served: Served, model: str, stream: bool) -> None:
    if model == CLAUDE:
        served.anthropic.scenario = Scenario(
            tools=[ToolUse("toolu_1", "get_weather", {"city": "Paris"})], text=[]
        )
    again = await function_round_trip(served, model, stream)
    assert again["status"] == "completed"
    if model != "woozlit/gemini-tools":
        assert text_of(again) in ("It is sunny.", ANSWERS[CLAUDE])


async def test_json_schema_natively(served: Served) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    text = {"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}}
    answer = await served.answer({"model": "woozlit/gpt-json", "input": "Where?", "text": text})
    assert json.loads(text_of(answer)) == {"city": "Paris"}
    assert answer["text"]["format"]["name"] == "place"


async def test_json_schema_translated(served: Served) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    text = {"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}}
    await served.answer({"model": CHAT_OPENAI, "input": "Where?", "text": text})
    sent = served.openai.record.requests[-1]["response_format"]
    assert sent == {"type": "json_schema",
                    "json_schema": {"name": "place", "schema": schema, "strict": True}}  # fmt: skip


@pytest.mark.parametrize("model", [CHAT_OPENAI, DEEPSEEK, CLAUDE, GEMINI])
async def test_builtin_tools_are_refused_where_translated(served: Served, model: str) -> None:
    body = {"model": model, "input": "News?", "tools": [WEATHER, {"type": "web_search"}]}
    status, _, raw = await served.post(body)
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == "tools[1].type"
    assert "web_search" in error["message"] and model in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_builtin_tools_go_through_natively(served: Served) -> None:
    body = {"model": NATIVE, "input": "News?", "tools": [{"type": "web_search"}]}
    await served.answer(body)
    assert served.openai.record.requests[-1]["tools"] == [{"type": "web_search"}]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].id"),
        ({"max_output_tokens": 8}, "max_output_tokens"),
        ({"max_output_tokens": 10**12}, "max_output_tokens"),
        ({"reasoning": {"effort": "ultra"}}, "reasoning.effort"),
        ({"input": [{"type": "nonsense"}]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"model": "woozlit/no-such-model"}, "model"),
        ({"input": None}, "input"),
    ],
)
async def test_bad_requests_name_the_field(
    served: Served, prefix: str, extra: dict[str, Any], param: str
) -> None:
    body = {"model": NATIVE, "input": "Hello!", **extra}
    status, headers, raw = await served.post(body, prefix)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert error["param"] == param and error["message"]
    assert "x-ratelimit-limit-requests" in headers


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_401_and_quota_in_openai_shape(served: Served, prefix: str) -> None:
    bad_key = "woozlit_" + "x" * 43
    status, _, raw = await served.post({"model": NATIVE, "input": "hi"}, prefix, key=bad_key)
    assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
    accounts = served.gateway.app[ACCOUNTS]
    spent = await accounts.create_account({"tier": "spent", "developer": True})
    key = (await accounts.create_key(spent["id"], "spent"))["key"]
    status, headers, raw = await served.post({"model": NATIVE, "input": "hi"}, prefix, key=key)
    error = json.loads(raw)["error"]
    assert status == 429 and error["code"] == "insufficient_quota"
    assert error["message"] == "Monthly token limit exceeded. Your usage will reset next month."
    assert headers["x-should-retry"] == "false"


@pytest.mark.parametrize("model", ["woozlit/gpt-crashing", "woozlit/chat-crashing"])
async def test_midstream_failure(served: Served, model: str) -> None:
    events = await served.events({"model": model, "input": "Hello!"})
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["message"] and events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["message"] == events[-2]["message"]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) == 2


async def test_client_leaving_midstream_is_charged(served: Served) -> None:
    gw = served.gateway
    url = gw.base_url + "/v1/responses"
    body = {"model": "woozlit/chat-endless", "input": "hi", "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=gw.auth()) as resp,
    ):
        seen = b""
        while seen.count(b"response.output_text.delta") < 5:
            seen += await resp.content.readany()
    accountant = gw.app[ACCOUNTANT]
    for _ in range(100):
        await accountant.flush(10)
        used = (await usage(gw))["used"]
        if used:
            break
        await asyncio.sleep(0.05)
    assert used > 0


async def usage(gw: Gateway) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.base_url + "/v1/usage", headers=gw.auth()) as resp,
    ):
        result: dict[str, Any] = await resp.json()
        return result


async def test_account_usage_is_the_sum_of_the_answers(served: Served) -> None:
    total = 0
    for model in FAMILIES:
        total += (await served.answer({"model": model, "input": "Hello!"}))["usage"]["total_tokens"]
        events = await served.events({"model": model, "input": "Hello!"})
        total += events[-1]["response"]["usage"]["total_tokens"]
    await served.gateway.app[ACCOUNTANT].flush(10)
    assert (await usage(served.gateway))["used"] == total


async def test_metrics_carry_the_protocol(served: Served) -> None:
    await served.answer({"model": CLAUDE, "input": "Hello!"})
    registry = served.gateway.app[METRICS].registry
    labels = {"model": CLAUDE, "provider": "anthropic", "status": "200", "protocol": "responses"}
    assert registry.get_sample_value("woozlit_requests_total", labels) == 1


async def test_idempotency_key_replays(served: Served) -> None:
    body = {"model": NATIVE, "input": "Hello!"}
    first = await served.post(body, **{"Idempotency-Key": "k-1"})
    second = await served.post(body, **{"Idempotency-Key": "k-1"})
    assert first[0] == second[0] == 200
    assert second[2] == first[2] and second[1]["Idempotent-Replayed"] == "true"
    status, _, _ = await served.post({**body, "input": "Other"}, **{"Idempotency-Key": "k-1"})
    assert status == 422


def codex_body() -> dict[str, Any]:
    captured = json.loads(CODEX.read_text())
    body: dict[str, Any] = captured[0]["body"]
    return body


async def test_codex_request_natively(served: Served) -> None:
    """The request Codex CLI 0.171.0 sends, as captured: a 200 stream on OpenAI, natively."""
    body = codex_body()
    assert body["store"] is False and body["model"] == "woozlit/gpt-5-mini"
    events = await served.events(body)
    assert events[-1]["type"] == "response.completed"
    sent = served.openai.record.requests[-1]
    assert sent["tools"] == body["tools"] and sent["input"] == body["input"]
    assert sent["client_metadata"] == body["client_metadata"]


async def test_codex_request_translated_names_web_search(served: Served) -> None:
    body = {**codex_body(), "model": CLAUDE}
    status, _, raw = await served.post(body)
    error = json.loads(raw)["error"]
    assert status == 400 and "web_search" in error["message"]


async def test_codex_namespace_tools_are_flattened_and_split_back(served: Served) -> None:
    namespace = {"type": "namespace", "name": "agents", "description": "Sub-agents.",
                 "tools": [{**WEATHER, "name": "spawn"}]}  # fmt: skip
    call = {"type": "function_call", "call_id": "c1", "name": "spawn", "namespace": "agents",
            "arguments": "{}"}  # fmt: skip
    output = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    body = {"model": CHAT_OPENAI, "tools": [namespace],
            "input": [{"role": "user", "content": "go"}, call, output]}  # fmt: skip
    await served.answer(body)
    sent = served.openai.record.requests[-1]
    assert sent["tools"][0]["function"]["name"] == "agents__spawn"
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "agents__spawn"


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [("woozlit/gpt-404", 404, None), ("woozlit/gpt-retired", 503, "model_unavailable")],
)
async def test_a_native_404_is_the_clients_unless_it_is_the_model(
    served: Served, model: str, status: int, code: str | None
) -> None:
    """Natively the client's body goes as it came: OpenAI's 404 about what it named (a file,
    an item) is its own 404; `model_not_found` (the config chose the model) is the
    deployment's, a 503 the next deployment may take."""
    got, _, raw = await served.post({"model": model, "input": "hi"}, "/v1")
    assert got == status, raw
    assert json.loads(raw)["error"]["code"] == code


async def test_builtin_tools_are_held_for(served: Served) -> None:
    """A built-in tool's results are billed as input by OpenAI, unseen by the prompt's
    estimate: each one declared holds BUILTIN_TOOL_RESERVE more of the quota."""
    accounts = served.gateway.app[ACCOUNTS]
    account = await accounts.create_account(
        {"tier": "free", "developer": True, "monthly_token_limit": BUILTIN_TOOL_RESERVE}
    )
    key = (await accounts.create_key(account["id"], "small"))["key"]
    body = {"model": NATIVE, "input": "hi", "max_output_tokens": 100}
    status, _, raw = await served.post(body, key=key)
    assert status == 200, raw
    body["tools"] = [{"type": "web_search"}]
    status, _, raw = await served.post(body, key=key)
    assert status == 429 and json.loads(raw)["error"]["code"] == "insufficient_quota", raw


def test_the_native_stream_reframes_and_refuses_what_it_cannot_read() -> None:
    """An event whose data spans lines goes on as one line of JSON; a delta that is not JSON
    is the provider's error (502), not a crash of the relay."""
    from proxy.core import ChatRequest
    from proxy.errors import UpstreamError
    from proxy.providers.openai_responses import ResponsesStream
    from proxy.sse import SSEEvent

    chat = ChatRequest({}, NATIVE, True, True, None, 1)
    stream = ResponsesStream(chat, None)  # type: ignore[arg-type]
    data = b'{"type": "response.output_text.delta",\n "delta": "Hi"}'
    [framed] = stream.feed(SSEEvent(data=data, event="response.output_text.delta"))
    assert framed.count(b"\n") == 3 and framed.endswith(b"\n\n")
    assert json.loads(framed.split(b"data: ", 1)[1]) == json.loads(data)
    assert stream.produced_chars == 2
    with pytest.raises(UpstreamError):
        stream.feed(SSEEvent(data=b"{not json", event="response.output_text.delta"))


@pytest.mark.parametrize(
    ("cap", "code"),
    [(8, "integer_below_min_value"), (2**31, "integer_above_max_value"),
     (100.5, "invalid_type"), (True, "invalid_type")],
)  # fmt: skip
async def test_max_output_tokens_errors_say_what_is_wrong(
    served: Served, cap: Any, code: str
) -> None:
    status, _, raw = await served.post({"model": NATIVE, "input": "hi", "max_output_tokens": cap})
    error = json.loads(raw)["error"]
    assert (status, error["param"], error["code"]) == (400, "max_output_tokens", code)
