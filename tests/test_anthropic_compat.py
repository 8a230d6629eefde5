"""What Anthropic's Messages API accepts, end to end: OpenAI requests it would refuse as they
are translated into ones it takes (or refused by the gateway with a 400 naming the client's
field), and its errors sorted into the client's fault and the deployment's.

Every request goes through the gateway on loopback, with a real redis-server, to the fake
Anthropic upstream, which refuses what the real API refuses; every answer is checked against
the openai SDK's types (`tests/openai_types.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.config import ProviderConfig, Timeouts
from proxy.errors import (
    BadRequest,
    ModelUnavailable,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.providers.anthropic import AnthropicProvider
from proxy.sse import SSEEvent
from tests.fakes.anthropic_upstream import FAKE, FakeAnthropic, Scenario, ToolUse
from tests.fakes.anthropic_upstream import create_fake_anthropic as create_fake
from tests.openai_types import check_chunks, check_completion, sse_chunks

MODEL = "woozlit/claude-sonnet-4-5"
UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
    "awAAAABJRU5ErkJggg=="
)
JPEG = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHR8eHQ=="
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


class Claude:
    """The gateway in front of the fake, spoken to over HTTP as an OpenAI client would."""

    def __init__(self, url: str, key: str, fake: FakeAnthropic, session: aiohttp.ClientSession):
        self.url, self.key, self.fake, self.session = url, key, fake, session

    async def post(self, **body: Any) -> tuple[int, Any, dict[str, str]]:
        body.setdefault("model", MODEL)
        body.setdefault("stream", False)
        async with self.session.post(
            self.url, json=body, headers={"Authorization": f"Bearer {self.key}"}
        ) as resp:
            raw = await resp.read()
            headers = dict(resp.headers)
        if resp.status != 200:
            return resp.status, orjson.loads(raw), headers
        if body["stream"] and raw.rstrip().endswith(b"data: [DONE]"):
            return 200, sse_chunks(raw), headers
        if body["stream"]:  # an error event ends it, without [DONE]
            events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
            return 200, [orjson.loads(e) for e in events], headers
        return 200, orjson.loads(raw), headers

    async def answer(self, **body: Any) -> dict[str, Any]:
        """A non-stream answer that must be a 200, checked against the SDK's types."""
        status, payload, _ = await self.post(stream=False, **body)
        assert status == 200, payload
        check_completion(payload)
        result: dict[str, Any] = payload["choices"][0]
        return result

    async def stream(self, **body: Any) -> list[dict[str, Any]]:
        status, chunks, _ = await self.post(stream=True, **body)
        assert status == 200, chunks
        check_chunks(chunks)
        return list(chunks)

    async def refused(self, param: str | None, **body: Any) -> dict[str, Any]:
        """A 400 naming `param`, refused by the gateway before the upstream saw anything."""
        sent = len(self.fake.requests)
        status, payload, _ = await self.post(**body)
        assert status == 400, payload
        assert len(self.fake.requests) == sent, "the gateway refuses; the upstream never sees it"
        error: dict[str, Any] = payload["error"]
        assert error["param"] == param, error
        return error

    @property
    def sent(self) -> dict[str, Any]:
        body: dict[str, Any] = self.fake.requests[-1].body
        return body


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeAnthropic, str]]:
    server = TestServer(create_fake(api_key="test-key"))
    await server.start_server()
    try:
        yield server.app[FAKE], str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def claude(gateway: Any, fake: tuple[FakeAnthropic, str]) -> AsyncIterator[Claude]:
    upstream, url = fake
    handle = await gateway(
        providers={"anthropic": {"kind": "anthropic", "base_url": url, "api_key": "test-key"}},
        models={
            MODEL: [{"provider": "anthropic", "model": UPSTREAM_MODEL}],
            # The first deployment's model is retired: the second must serve.
            "woozlit/claude-fallback": [
                {"provider": "anthropic", "model": "claude-2.1"},
                {"provider": "anthropic", "model": UPSTREAM_MODEL},
            ],
        },
    )
    async with aiohttp.ClientSession() as session:
        yield Claude(handle.base_url + "/v1/chat/completions", handle.api_key, upstream, session)


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


# -- 1. conversations Anthropic would refuse as they are ----------------------------------

CALL = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": ""}}


def calls(*ids: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": i} for i in ids]}


def result(call_id: str, content: Any = "18C") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


@pytest.mark.parametrize(
    ("messages", "system", "sent"),
    [
        pytest.param(
            [{"role": "system", "content": "Write a haiku about autumn."}],
            None,
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Write a haiku about autumn."}],
                }
            ],
            id="system-only",
        ),
        pytest.param(
            [
                {"role": "developer", "content": "Be brief."},
                {"role": "assistant", "content": "Hi!"},
            ],
            "Be brief.",
            [
                {"role": "user", "content": [{"type": "text", "text": "..."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
            ],
            id="assistant-first",
        ),
        pytest.param(
            [
                {"role": "assistant", "content": "How can I help?"},
                {"role": "user", "content": "Weather?"},
            ],
            None,
            [
                {"role": "user", "content": [{"type": "text", "text": "..."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "How can I help?"}]},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            ],
            id="assistant-greeting-first",
        ),
        *(
            pytest.param(
                [{"role": "system", "content": "S"}, {"role": "user", "content": empty}],
                "S",
                [{"role": "user", "content": [{"type": "text", "text": "..."}]}],
                id=f"empty-user-{i}",
            )
            for i, empty in enumerate(
                ["", "  \n", [], [{"type": "text", "text": ""}], [{"type": "text", "text": " "}]]
            )
        ),
        pytest.param(
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": ""},
            ],
            None,
            [
                {"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
                {"role": "user", "content": [{"type": "text", "text": "..."}]},
            ],
            id="empty-last-user-is-not-a-prefill",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": ""}, {"type": "text", "text": "x"}],
                },
                {"role": "user", "content": "y"},
                {"role": "assistant", "content": "   "},
                {"role": "assistant", "content": "Sure: \n"},
            ],
            None,
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Sure:"}]},
            ],
            id="blank-parts-dropped-same-roles-merged-prefill-trimmed",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_conversations_anthropic_refuses_as_they_are(
    claude: Claude, messages: Any, system: str | None, sent: Any, stream: bool
) -> None:
    if stream:
        assert text_of(await claude.stream(messages=messages)) == "Hello from Claude."
    else:
        assert (await claude.answer(messages=messages))["message"][
            "content"
        ] == "Hello from Claude."
    assert claude.sent["messages"] == sent
    assert claude.sent.get("system") == system


async def test_tool_ids_of_other_providers_repeated_across_turns(claude: Claude) -> None:
    # Providers that number calls per turn repeat ids; others use characters Anthropic refuses.
    messages: Any = [
        {"role": "user", "content": "Paris and Oslo?"},
        calls("call_0", "functions.get_weather:1"),
        {"role": "user", "content": "(thinking)"},  # text between calls and results
        result("functions.get_weather:1", "3C"),
        result("call_0"),
        {"role": "assistant", "content": "Now Rome."},
        calls("call_0"),
        result("call_0", [{"type": "text", "text": "25C"}]),
    ]
    await claude.answer(messages=messages, tools=[WEATHER])
    turns = claude.sent["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    first = [b["id"] for b in turns[1]["content"]]
    assert first == ["call_0", "functions_get_weather_1"]
    assert [(b["type"], b.get("tool_use_id")) for b in turns[2]["content"]] == [
        ("tool_result", "functions_get_weather_1"),
        ("tool_result", "call_0"),
        ("text", None),
    ]
    assert turns[3]["content"][1]["id"] == "call_0_2"
    assert turns[4]["content"][0]["tool_use_id"] == "call_0_2"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": "x"}, result("call_9")], "messages[1].tool_call_id"),
        ([{"role": "user", "content": "x"}, calls("a"), result("b")], "messages[2].tool_call_id"),
        (
            [{"role": "user", "content": "x"}, calls("a"), result("a"), result("a")],
            "messages[3].tool_call_id",
        ),
        (
            [{"role": "user", "content": "x"}, calls("a", "b"), result("a")],
            "messages[1].tool_calls[1].id",
        ),
        ([{"role": "user", "content": "x"}, calls("a")], "messages[1].tool_calls[0].id"),
        (
            [{"role": "user", "content": "x"}, calls("a", "a"), result("a")],
            "messages[1].tool_calls[1].id",
        ),
        ([{"role": "user", "content": "x"}, calls("")], "messages[1].tool_calls[0].id"),
    ],
)
async def test_tool_results_that_answer_nothing_are_refused_by_name(
    claude: Claude, messages: Any, param: str
) -> None:
    await claude.refused(param, messages=messages, tools=[WEATHER])


# -- 2. translated fields the upstream refuses --------------------------------------------


@pytest.mark.parametrize(
    ("stop", "sent"),
    [(["\n"], None), ("\n", None), (["\n\n", "END"], ["END"]), (["", " \t", "x"], ["x"])],
)
async def test_blank_stop_sequences_are_dropped(claude: Claude, stop: Any, sent: Any) -> None:
    await claude.answer(messages=[{"role": "user", "content": "Hi"}], stop=stop)
    assert claude.sent.get("stop_sequences") == sent


@pytest.mark.parametrize(
    ("extra", "sent"),
    [
        ({"temperature": 2}, {"temperature": 1.0}),
        ({"temperature": 0.2, "top_p": 0.5}, {"temperature": 0.2}),
        ({"top_p": 0.5}, {"top_p": 0.5}),  # no default temperature beside the client's top_p
    ],
)
async def test_sampling_fields_anthropic_takes(claude: Claude, extra: Any, sent: Any) -> None:
    await claude.answer(messages=[{"role": "user", "content": "Hi"}], **extra)
    assert {k: claude.sent[k] for k in ("temperature", "top_p") if k in claude.sent} == sent


async def test_long_user_is_hashed_not_refused(claude: Claude) -> None:
    await claude.answer(messages=[{"role": "user", "content": "Hi"}], user="u" * 300)
    assert len(claude.sent["metadata"]["user_id"]) == 64


@pytest.mark.parametrize(
    ("url", "media_type"),
    [
        (f"data:image/jpg;base64,{JPEG}", "image/jpeg"),
        (f"data:image/jpeg;base64,{PNG}", "image/png"),  # mislabelled: its bytes say PNG
        (f"data:application/octet-stream;base64,{PNG}", "image/png"),
    ],
)
async def test_image_media_types_are_the_bytes(claude: Claude, url: str, media_type: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    await claude.answer(messages=[{"role": "user", "content": [part]}])
    assert claude.sent["messages"][0]["content"][0]["source"]["media_type"] == media_type


async def test_text_files_are_text_documents(claude: Claude) -> None:
    part = {"type": "file", "file": {"file_data": "data:text/plain;base64,aGVsbG8="}}
    await claude.answer(messages=[{"role": "user", "content": [part]}])
    assert claude.sent["messages"][0]["content"][0]["source"] == {
        "type": "text",
        "media_type": "text/plain",
        "data": "hello",
    }


USER: Any = [{"role": "user", "content": "Hi"}]
BMP = {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0eAAAAAAAAAA=="}}
ZIP = {"type": "file", "file": {"file_data": "data:application/zip;base64,UEsDBA=="}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [BMP]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [ZIP]}]},
            "messages[0].content[0].file.file_data",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "get.weather"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {
                "messages": [
                    *USER,
                    {
                        "role": "assistant",
                        "tool_calls": [{**CALL, "function": {"name": "a b", "arguments": "{}"}}],
                    },
                    result("call_0"),
                ]
            },
            "messages[1].tool_calls[0].function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a.b"}}},
            "response_format.json_schema.name",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "get_weather", "schema": {"type": "object"}},
                },
                "tools": [WEATHER],
            },
            "response_format.json_schema.name",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "list", "schema": {"type": "array"}},
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
async def test_what_anthropic_cannot_take_is_refused_naming_the_clients_field(
    claude: Claude, extra: dict[str, Any], param: str
) -> None:
    extra.setdefault("messages", USER)
    error = await claude.refused(param, **extra)
    assert param.split("[")[0].split(".")[0] in error["message"]


async def test_fields_that_do_not_change_the_answers_shape_are_ignored(claude: Claude) -> None:
    await claude.answer(
        messages=USER,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"50256": -100},
        prediction={"type": "content", "content": "Hello"},
        metadata={"team": "a"},
        store=False,
        service_tier="auto",
        reasoning_effort="low",
        logprobs=False,
        top_logprobs=0,
        modalities=["text"],
        parallel_tool_calls=True,
        response_format={"type": "text"},
        stream_options=None,
        tools=[{**WEATHER, "function": {**WEATHER["function"], "strict": True}}],
    )
    assert set(claude.sent) == {"model", "max_tokens", "messages", "temperature", "tools"}


# -- 3. a tool without parameters, streamed ------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_without_parameters_has_arguments_of_json(claude: Claude, stream: bool) -> None:
    claude.fake.scenario = Scenario(text=[], tools=[ToolUse("toolu_01", "get_time", {})])
    tool = {"type": "function", "function": {"name": "get_time"}}
    if not stream:
        answer = await claude.answer(messages=USER, tools=[tool])
        assert answer["message"]["tool_calls"][0]["function"]["arguments"] == "{}"
        return
    chunks = await claude.stream(messages=USER, tools=[tool])
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    arguments = "".join(
        call["function"].get("arguments", "") for d in deltas for call in d.get("tool_calls", ())
    )
    assert arguments == "{}"
    assert [e.data["delta"] for e in claude.fake.sent if e.event == "content_block_delta"] == [
        {"type": "input_json_delta", "partial_json": ""}
    ]


# -- 4. response_format ------------------------------------------------------------------

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "haiku",
        "description": "A haiku.",
        "schema": {"type": "object", "properties": {"lines": {"type": "array"}}},
        "strict": True,
    },
}


@pytest.mark.parametrize(
    ("fmt", "name"), [({"type": "json_object"}, "json_answer"), (SCHEMA, "haiku")]
)
@pytest.mark.parametrize("stream", [False, True])
async def test_response_format_is_the_content_of_an_answer_tool(
    claude: Claude, fmt: Any, name: str, stream: bool
) -> None:
    claude.fake.scenario = Scenario(text=[], tools=[ToolUse("toolu_01", name, {"lines": ["a"]})])
    if stream:
        chunks = await claude.stream(messages=USER, response_format=fmt)
        content = text_of(chunks)
        assert not any(c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"])
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
    else:
        answer = await claude.answer(messages=USER, response_format=fmt)
        assert "tool_calls" not in answer["message"]
        content, finish = answer["message"]["content"], answer["finish_reason"]
    assert orjson.loads(content) == {"lines": ["a"]}
    assert finish == "stop"
    assert claude.sent["tool_choice"] == {"type": "tool", "name": name}
    assert [t["name"] for t in claude.sent["tools"]] == [name]


async def test_response_format_beside_tools_lets_the_model_call_them(claude: Claude) -> None:
    claude.fake.scenario = Scenario(text=[], tools=[ToolUse("toolu_01", "get_weather", {})])
    answer = await claude.answer(messages=USER, response_format=SCHEMA, tools=[WEATHER])
    assert answer["finish_reason"] == "tool_calls"
    assert claude.sent["tool_choice"] == {"type": "any"}
    assert [t["name"] for t in claude.sent["tools"]] == ["get_weather", "haiku"]
    # Forcing one of the client's tools leaves no room for the answer tool.
    await claude.answer(
        messages=USER, response_format=SCHEMA, tools=[WEATHER], tool_choice="required"
    )
    assert [t["name"] for t in claude.sent["tools"]] == ["get_weather"]


# -- 5. errors: the client's fault, or the deployment's -----------------------------------


async def test_retired_model_falls_through_to_the_next_deployment(claude: Claude) -> None:
    answer = await claude.answer(model="woozlit/claude-fallback", messages=USER)
    assert answer["message"]["content"] == "Hello from Claude."
    assert [r.body["model"] for r in claude.fake.requests] == ["claude-2.1", UPSTREAM_MODEL]


@pytest.mark.parametrize(
    ("scenario", "status", "code", "retry_after"),
    [
        ("credit_low", 503, "model_unavailable", None),
        ("billing", 503, "model_unavailable", None),
        ("not_found", 503, "model_unavailable", None),
        ("unauthorized", 502, "upstream_error", None),
        ("forbidden", 502, "upstream_error", None),
        ("request_timeout", 504, "timeout", None),
        ("gateway_timeout", 504, "timeout", None),
        ("rate_limited", 503, "service_unavailable", "7"),
        ("overloaded", 503, "service_unavailable", "7"),
        ("unavailable", 503, "service_unavailable", "1"),
        ("server_error", 502, "upstream_error", None),
        ("too_large", 400, None, None),
        ("invalid_request", 400, None, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_errors_are_classified(
    claude: Claude, scenario: str, status: int, code: str | None, retry_after: Any, stream: bool
) -> None:
    claude.fake.scenario = Scenario(kind=scenario)
    got, payload, headers = await claude.post(messages=USER, stream=stream)
    assert got == status, payload
    assert payload["error"]["code"] == code
    assert headers.get("Retry-After") == retry_after
    message = payload["error"]["message"]
    assert "test-key" not in message and "credit balance" not in message


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("overloaded_error", "service_unavailable"),
        ("api_error", "upstream_error"),
        ("timeout_error", "timeout"),
        ("billing_error", "model_unavailable"),
    ],
)
async def test_error_events_mid_stream(claude: Claude, kind: str, code: str) -> None:
    claude.fake.scenario = Scenario(kind="error_midstream", midstream_error=kind)
    status, raw, _ = await claude.post(messages=USER, stream=True)
    assert status == 200
    assert raw[-1]["error"]["code"] == code
    check_chunks(raw[:-1])


def provider() -> AnthropicProvider:
    config = ProviderConfig(
        name="anthropic",
        kind="anthropic",
        base_url="https://api.anthropic.com",
        api_key="k",
        api_key_env="ANTHROPIC_API_KEY",
        timeouts=Timeouts(),
    )
    return AnthropicProvider(config)


@pytest.mark.parametrize(
    ("kind", "message", "error", "retryable"),
    [
        ("overloaded_error", "Overloaded", ServiceUnavailable, True),
        ("rate_limit_error", "slow down", ServiceUnavailable, True),
        ("timeout_error", "Request timed out", UpstreamTimeout, True),
        ("billing_error", "no payment method", ModelUnavailable, True),
        (
            "invalid_request_error",
            "Your credit balance is too low to access",
            ModelUnavailable,
            True,
        ),
        ("not_found_error", "model: claude-2.1", ModelUnavailable, True),
        ("authentication_error", "invalid x-api-key", UpstreamError, True),
        ("permission_error", "no", UpstreamError, True),
        ("api_error", "Internal server error", UpstreamError, True),
        ("something_new", "?", UpstreamError, True),
        ("invalid_request_error", "messages: bad", BadRequest, False),
    ],
)
def test_error_types_without_a_status(
    kind: str, message: str, error: type[Exception], retryable: bool
) -> None:
    data = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    with pytest.raises(error) as caught:
        provider().stream_translator(_chat()).feed(SSEEvent(data, "error"))
    assert caught.value.retryable is retryable  # type: ignore[attr-defined]
    assert type(caught.value) is error


def _chat() -> Any:
    from proxy.core import ChatRequest

    return ChatRequest(
        body={"model": MODEL, "messages": USER},
        public_model=MODEL,
        stream=True,
        include_usage=False,
        max_tokens=None,
        prompt_tokens_estimate=1,
    )


# -- 6. the fake refuses what the real API refuses ----------------------------------------

OK: Any = {
    "model": UPSTREAM_MODEL,
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "Hi"}],
}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}


def turns(*messages: Any) -> dict[str, Any]:
    return {**OK, "messages": list(messages)}


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def tool_result(i: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": i, "content": "ok"}


def image(media_type: str, data: str = PNG) -> dict[str, Any]:
    source = {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "image", "source": source}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({**OK, "messages": []}, 400, "at least one message"),
        (turns(user(text(""))), 400, "must be non-empty"),
        (turns(user(text(" \n"))), 400, "non-whitespace"),
        (turns({"role": "user", "content": ""}), 400, "must be non-empty"),
        (turns(user()), 400, "non-empty content"),
        ({**OK, "stop_sequences": ["\n"]}, 400, "stop_sequences"),
        ({**OK, "stop_sequences": [""]}, 400, "stop_sequences"),
        (turns(user(image("image/bmp"))), 400, "media_type"),
        (turns(user(image("image/jpeg"))), 400, "does not match"),
        (
            turns(user(text("a")), assistant(TOOL_USE), user(text("b"))),
            400,
            "without `tool_result`",
        ),
        (turns(user(tool_result())), 400, "unexpected `tool_use_id`"),
        (
            turns(user(text("a")), assistant(TOOL_USE), user(text("b"), tool_result())),
            400,
            "must come first",
        ),
        (turns(user(text("a")), assistant({**TOOL_USE, "id": "call.1"})), 400, "tool_use.id"),
        (
            turns(
                user(text("a")),
                assistant(TOOL_USE),
                user(tool_result()),
                assistant(TOOL_USE),
                user(tool_result()),
            ),
            400,
            "must be unique",
        ),
        ({k: v for k, v in OK.items() if k != "max_tokens"}, 400, "max_tokens: Field required"),
        ({**OK, "temperature": 1.5}, 400, "temperature"),
        ({**OK, "temperature": 0.5, "top_p": 0.9}, 400, "cannot both be specified"),
        (turns(assistant(text("a"))), 400, "first message"),
        (turns(user(text("a")), assistant(text("b "))), 400, "trailing whitespace"),
        ({**OK, "logprobs": True}, 400, "Extra inputs are not permitted"),
        ({**OK, "tools": [{"name": "a.b", "input_schema": {"type": "object"}}]}, 400, "name"),
        ({**OK, "model": "claude-2.1"}, 404, "model: claude-2.1"),
    ],
)
async def test_the_fake_refuses_what_anthropic_refuses(
    fake: tuple[FakeAnthropic, str], body: Any, status: int, message: str
) -> None:
    _, url = fake
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/messages", json=body, headers=headers) as resp,
    ):
        payload = await resp.json()
    assert resp.status == status
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    assert payload["type"] == "error"
    assert payload["error"]["type"] == kind
    assert message in payload["error"]["message"]


async def test_the_fake_lists_its_models_in_pages() -> None:
    models = [(f"claude-{i}", f"Claude {i}", f"2025-01-0{i}T00:00:00Z") for i in range(1, 6)]
    server = TestServer(create_fake(api_key="k", models=models))
    await server.start_server()
    url = str(server.make_url("/v1/models"))
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"x-api-key": "k"}) as resp:
                assert resp.status == 400
            async with session.get(url, headers={**headers, "x-api-key": "bad"}) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["type"] == "authentication_error"
            pages, after = [], None
            while True:
                query = {"limit": "2", **({"after_id": after} if after else {})}
                async with session.get(url, headers=headers, params=query) as resp:
                    page = await resp.json()
                pages.append([m["id"] for m in page["data"]])
                assert page["first_id"] == page["data"][0]["id"]
                after = page["last_id"]
                if not page["has_more"]:
                    break
            assert page["data"][0] == {
                "type": "model",
                "id": "claude-1",
                "display_name": "Claude 1",
                "created_at": "2025-01-01T00:00:00Z",
            }
    finally:
        await server.close()
    assert pages == [["claude-5", "claude-4"], ["claude-3", "claude-2"], ["claude-1"]]
