"""The native Anthropic provider: translation in both directions, then end to end.

The first half drives `AnthropicProvider` directly (no gateway, no network). The second half
puts the gateway in front of the fake Anthropic upstream of `tests/fakes` and talks to it with
the official `openai` SDK, as a customer would.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from proxy.config import Deployment, ProviderConfig, Timeouts
from proxy.core import ChatRequest
from proxy.errors import BadRequest, ServiceUnavailable, UpstreamError
from proxy.providers import build_provider
from proxy.providers.anthropic import AnthropicProvider, AnthropicStream
from proxy.sse import SSEEvent, SSEParser
from tests.fakes.anthropic_upstream import (
    FAKE,
    FakeAnthropic,
    Scenario,
    ToolUse,
    create_fake_anthropic,
)

MODEL = "woozlit/claude-3-5-sonnet-20241022"
UPSTREAM_MODEL = "claude-3-5-sonnet-20241022"
DEPLOYMENT = Deployment("anthropic", UPSTREAM_MODEL)
SECRET = "sk-ant-api03-secret"

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def provider(
    base_url: str = "https://api.anthropic.com", api_key: str = SECRET
) -> AnthropicProvider:
    config = ProviderConfig(
        name="anthropic",
        kind="anthropic",
        base_url=base_url,
        api_key=api_key,
        api_key_env="ANTHROPIC_API_KEY",
        timeouts=Timeouts(),
    )
    built = build_provider(config)
    assert isinstance(built, AnthropicProvider)
    return built


def chat(
    *, stream: bool = False, include_usage: bool = False, max_tokens: int | None = None, **body: Any
) -> ChatRequest:
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    body.setdefault("temperature", 0.7)
    return ChatRequest(
        body={"model": MODEL, **body},
        public_model=MODEL,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        prompt_tokens_estimate=11,
        cap=max_tokens or 4096,  # as validation sets it: the client's cap, or the default
    )


def upstream_body(request: ChatRequest) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(provider().build_request(request, DEPLOYMENT).body)
    return result


# -- request translation -------------------------------------------------------------------


def test_request_url_headers_and_defaults() -> None:
    built = provider().build_request(chat(), DEPLOYMENT)
    assert built.url == "https://api.anthropic.com/v1/messages"
    assert built.headers["x-api-key"] == SECRET
    assert built.headers["anthropic-version"] == "2023-06-01"
    assert orjson.loads(built.body) == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "temperature": 0.7,
    }


def test_base_url_that_already_names_v1() -> None:
    built = provider("https://proxy.example/anthropic/v1").build_request(chat(), DEPLOYMENT)
    assert built.url == "https://proxy.example/anthropic/v1/messages"


def test_system_hoisted_turns_merged_and_parameters_mapped() -> None:
    body = upstream_body(
        chat(
            stream=True,
            max_tokens=300,
            temperature=1.7,
            top_p=0.9,
            stop="END",
            user="user-42",
            seed=7,
            frequency_penalty=0.5,
            presence_penalty=0.1,
            logit_bias={"50256": -100},
            logprobs=False,
            n=1,
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "First."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": [{"type": "text", "text": "Second."}]},
                {"role": "assistant", "content": "Bonjour."},
                {"role": "assistant", "content": [{"type": "text", "text": "Encore?"}]},
                {"role": "user", "content": "Oui."},
            ],
        )
    )
    assert body == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 300,
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "First."},
                    {"type": "text", "text": "Second."},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Bonjour."},
                    {"type": "text", "text": "Encore?"},
                ],
            },
            {"role": "user", "content": [{"type": "text", "text": "Oui."}]},
        ],
        "temperature": 1.0,  # and no top_p: newer models refuse the two together
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }


@pytest.mark.parametrize(("given", "sent"), [(-0.5, 0.0), (0, 0.0), (0.3, 0.3), (2, 1.0)])
def test_temperature_clamped_to_anthropic_range(given: float, sent: float) -> None:
    assert upstream_body(chat(temperature=given))["temperature"] == sent


def test_stop_list_and_empty_turns() -> None:
    body = upstream_body(
        chat(
            stop=["\n\nHuman:", "END"],
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": ""},  # empty: dropped, and the user turns merge
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "Sure:  "},  # a prefill may not end in whitespace
            ],
        )
    )
    assert body["stop_sequences"] == ["\n\nHuman:", "END"]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Sure:"}]},
    ]


def test_image_parts() -> None:
    body = upstream_body(
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare these."},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
                        },
                    ],
                }
            ]
        )
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these."},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ],
)
def test_unsupported_parts_are_bad_requests(part: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content\[0\]"):
        upstream_body(chat(messages=[{"role": "user", "content": [part]}]))


def test_tool_conversation() -> None:
    body = upstream_body(
        chat(
            tools=[WEATHER_TOOL],
            tool_choice="auto",
            messages=[
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call.2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
                {
                    "role": "tool",
                    "tool_call_id": "call.2",
                    "content": [{"type": "text", "text": "3C"}],
                },
                {"role": "user", "content": "Which is warmer?"},
            ],
        )
    )
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert body["tool_choice"] == {"type": "auto"}
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "3C"}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "sent"),
    [
        (None, None, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("auto", True, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, sent: Any) -> None:
    extra: dict[str, Any] = {"tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    if choice is not None:
        extra["tool_choice"] = choice
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    body = upstream_body(chat(**extra))
    assert body.get("tool_choice") == sent
    assert body["tools"] == [
        {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    ]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"n": 2}, "n=2"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{oops"},
                            }
                        ],
                    }
                ]
            },
            "not JSON",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[1]"},
                            }
                        ],
                    }
                ]
            },
            "JSON object",
        ),
        ({"tools": [{"type": "code_interpreter"}]}, "only function tools"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_requests_anthropic_cannot_serve(extra: dict[str, Any], match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        upstream_body(chat(**extra))


def test_missing_key_refused_for_the_public_api_only() -> None:
    with pytest.raises(ServiceUnavailable, match="ANTHROPIC_API_KEY"):
        provider(api_key="").build_request(chat(), DEPLOYMENT)
    local = provider("http://127.0.0.1:9", api_key="").build_request(chat(), DEPLOYMENT)
    assert "x-api-key" not in local.headers


# -- response translation ------------------------------------------------------------------


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": UPSTREAM_MODEL,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
        }
    )


def test_text_response() -> None:
    completion, usage = provider().parse_response(
        message(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Hello"},
                {"type": "text", "text": " there"},
            ],
            cache_read_input_tokens=100,
            cache_creation_input_tokens=7,
        ),
        chat(),
    )
    assert completion["choices"] == [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
        }
    ]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (117, 5, False)
    assert completion["usage"] == {
        "prompt_tokens": 117,
        "completion_tokens": 5,
        "total_tokens": 122,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


def test_tool_use_response() -> None:
    completion, _ = provider().parse_response(
        message(
            [
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
            "tool_use",
        ),
        chat(),
    )
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    completion, _ = provider().parse_response(
        message([{"type": "text", "text": "x"}], stop_reason), chat()
    )
    assert completion["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"type": "message"}'])
def test_malformed_response(body: bytes) -> None:
    with pytest.raises(UpstreamError):
        provider().parse_response(body, chat())


# -- stream translation --------------------------------------------------------------------

# A stream as Anthropic sends it, with extended thinking and two parallel tool calls: the tool
# blocks are Anthropic blocks 2 and 3, and must become OpenAI tool calls 0 and 1.
RECORDED_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",\
"content":[],"model":"claude-3-5-sonnet-20241022","stop_reason":null,"stop_sequence":null,\
"usage":{"input_tokens":472,"cache_creation_input_tokens":20,"cache_read_input_tokens":100,\
"output_tokens":2}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking",\
"thinking":"","signature":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta",\
"thinking":"Two cities, two calls."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta",\
"signature":"EqQBCgIYAhIM"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Checking"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":" both."}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use",\
"id":"toolu_01A","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta",\
"partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta",\
"partial_json":"{\\"city\\": \\"Par"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta",\
"partial_json":"is\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: some_future_event
data: {"type":"some_future_event","detail":42}

event: content_block_start
data: {"type":"content_block_start","index":3,"content_block":{"type":"tool_use",\
"id":"toolu_01B","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta",\
"partial_json":"{\\"city\\": \\"Oslo\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":3}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},\
"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

""".replace(b"\\\n", b"")


def events_of(raw: bytes, piece: int = 37) -> list[SSEEvent]:
    """Parse a recorded stream fed in small pieces, as it would come off a socket."""
    parser = SSEParser()
    events = [e for i in range(0, len(raw), piece) for e in parser.feed(raw[i : i + piece])]
    return events + parser.close()


def delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def translate(events: list[SSEEvent], request: ChatRequest) -> tuple[AnthropicStream, list[Any]]:
    translator = provider().stream_translator(request)
    assert isinstance(translator, AnthropicStream)
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    return translator, chunks + translator.finish()


@pytest.mark.parametrize("include_usage", [True, False])
def test_recorded_stream(include_usage: bool) -> None:
    translator, chunks = translate(
        events_of(RECORDED_STREAM), chat(stream=True, include_usage=include_usage)
    )
    expected = [
        delta({"role": "assistant", "content": ""}),
        delta({"content": "Checking"}),
        delta({"content": " both."}),
        delta(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_01A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Par'}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]}),
        delta(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "toolu_01B",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        delta({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Oslo"}'}}]}),
        delta({}, "tool_calls"),
    ]
    usage = {"prompt_tokens": 592, "completion_tokens": 89, "total_tokens": 681}
    if include_usage:
        expected.append({"choices": [], "usage": usage})
    assert chunks == expected
    assert translator.done
    assert translator.usage is not None and translator.usage.as_dict() == usage
    assert translator.final_usage() is translator.usage
    produced = "Two cities, two calls." + "Checking both." + '{"city": "Paris"}{"city": "Oslo"}'
    assert translator.produced_chars == len(produced) + 2 * len("get_weather")


def test_stream_takes_input_counts_from_message_delta() -> None:
    raw = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":0,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"max_tokens"},"usage":{"input_tokens":40,"cache_read_input_tokens":8,'
        b'"output_tokens":16}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    _, chunks = translate(events_of(raw), chat(stream=True, include_usage=True))
    assert chunks[-2] == delta({}, "length")
    assert chunks[-1]["usage"] == {"prompt_tokens": 48, "completion_tokens": 16, "total_tokens": 64}


def test_cut_stream_charges_real_input_and_estimated_output() -> None:
    # The connection drops in the middle of the first tool call's arguments.
    cut = RECORDED_STREAM[
        : RECORDED_STREAM.rindex(b"event:", 0, RECORDED_STREAM.index(b'"partial_json":"is'))
    ]
    translator, _ = translate(events_of(cut), chat(stream=True))
    assert not translator.done and translator.usage is None
    usage = translator.final_usage()
    assert usage.estimated
    assert usage.prompt_tokens == 592  # the upstream's count, not the gateway's estimate
    # Thinking is billed as output though never sent: it counts in the estimate.
    produced = "Two cities, two calls." + "Checking both." + "get_weather" + '{"city": "Par'
    assert usage.completion_tokens == (len(produced) + 3) // 4


def test_cut_before_message_start_is_all_estimate() -> None:
    translator = provider().stream_translator(chat(stream=True))
    usage = translator.final_usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (11, 0, True)


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("overloaded_error", ServiceUnavailable),
        ("rate_limit_error", ServiceUnavailable),
        ("api_error", UpstreamError),
    ],
)
def test_stream_error_event(kind: str, error: type[Exception]) -> None:
    translator = provider().stream_translator(chat(stream=True))
    data = orjson.dumps({"type": "error", "error": {"type": kind, "message": "Overloaded"}})
    with pytest.raises(error):
        translator.feed(SSEEvent(data, "error"))


def test_stream_ignores_comments_and_rejects_garbage() -> None:
    translator = provider().stream_translator(chat(stream=True))
    assert translator.feed(SSEEvent(b"keep-alive", comment=True)) == []
    assert translator.feed(SSEEvent(b'{"type": "ping"}', "ping")) == []
    with pytest.raises(UpstreamError):
        translator.feed(SSEEvent(b"{not json", "content_block_delta"))


# -- error mapping -------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_01"}
    )


@pytest.mark.parametrize(
    ("status", "kind", "ours"),
    [
        (400, "invalid_request_error", 400),
        (401, "authentication_error", 502),
        (403, "permission_error", 502),
        (404, "not_found_error", 503),
        (413, "request_too_large", 400),
        (429, "rate_limit_error", 503),
        (500, "api_error", 502),
        (529, "overloaded_error", 503),
    ],
)
def test_error_statuses(status: int, kind: str, ours: int) -> None:
    error = provider().error_from_response(
        status, anthropic_error(kind, f"{SECRET} is bad"), {"Retry-After": "12"}
    )
    assert error.status == ours
    if kind in ("rate_limit_error", "overloaded_error"):
        assert error.headers == {"Retry-After": "12"}
    if status in (401, 403):
        assert SECRET not in error.message


def test_error_details() -> None:
    p = provider()
    invalid = p.error_from_response(
        400, anthropic_error("invalid_request_error", "max_tokens: Field required"), {}
    )
    assert invalid.status == 400 and "max_tokens: Field required" in invalid.message
    overloaded = p.error_from_response(529, anthropic_error("overloaded_error", "Overloaded"), {})
    assert overloaded.headers == {"Retry-After": "1"}
    assert p.error_from_response(502, b"<html>Bad gateway</html>", {}).status == 502


# -- end to end, through the gateway with the openai SDK ------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeAnthropic, str]]:
    server = TestServer(create_fake_anthropic(api_key="test-key"))
    await server.start_server()
    try:
        yield server.app[FAKE], str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def claude(
    gateway: Any, upstream: tuple[FakeAnthropic, str]
) -> AsyncIterator[tuple[AsyncOpenAI, FakeAnthropic]]:
    fake, url = upstream
    handle = await gateway(
        providers={"anthropic": {"kind": "anthropic", "base_url": url, "api_key": "test-key"}},
        models={MODEL: [{"provider": "anthropic", "model": UPSTREAM_MODEL}]},
    )
    async with AsyncOpenAI(
        base_url=handle.base_url + "/v1", api_key=handle.api_key, max_retries=0
    ) as client:
        yield client, fake


USER: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]


async def test_e2e_text(claude: tuple[AsyncOpenAI, FakeAnthropic]) -> None:
    client, fake = claude
    fake.scenario = Scenario(
        input_tokens=30, cache_read_input_tokens=200, cache_creation_input_tokens=5, output_tokens=9
    )
    completion = await client.chat.completions.create(model=MODEL, messages=USER, temperature=1.5)
    assert completion.model == MODEL
    assert completion.id.startswith("woozlit-")
    assert completion.choices[0].message.content == "Hello from Claude."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (235, 9)
    sent = fake.requests[-1]
    assert sent.headers["x-api-key"] == "test-key"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "Be brief."
    assert sent.body["temperature"] == 1.0
    assert sent.body["max_tokens"] == 4096
    assert sent.body["model"] == UPSTREAM_MODEL
    assert "stream" not in sent.body


async def test_e2e_stream(claude: tuple[AsyncOpenAI, FakeAnthropic]) -> None:
    client, fake = claude
    fake.scenario = Scenario(text=["One", " two", " three."], input_tokens=12, output_tokens=7)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        max_tokens=50,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert {chunk.model for chunk in chunks} == {MODEL}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["One", " two", " three."]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 7)
    assert fake.requests[-1].body["stream"] is True
    assert fake.requests[-1].body["max_tokens"] == 50


async def test_e2e_stream_without_usage_chunk(claude: tuple[AsyncOpenAI, FakeAnthropic]) -> None:
    client, _ = claude
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from Claude."


TOOLS = [
    ToolUse("toolu_01A", "get_weather", {"city": "Paris"}),
    ToolUse("toolu_01B", "get_weather", {"city": "Oslo", "unit": "celsius"}),
]


async def test_e2e_tools(claude: tuple[AsyncOpenAI, FakeAnthropic]) -> None:
    client, fake = claude
    fake.scenario = Scenario(text=[], tools=TOOLS)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=True,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (t.id, t.name, t.input) for t in TOOLS
    ]
    assert fake.requests[-1].body["tool_choice"] == {"type": "any"}

    # The results go back as one user turn of tool_result blocks; the fake checks the ids.
    fake.scenario = Scenario(text=["Paris is warmer."])
    messages.append(choice.message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "18C"} for c in calls]
    answer = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL]
    )
    assert answer.choices[0].message.content == "Paris is warmer."
    turns = fake.requests[-1].body["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert [b["tool_use_id"] for b in turns[2]["content"]] == ["toolu_01A", "toolu_01B"]


async def test_e2e_tools_streamed(claude: tuple[AsyncOpenAI, FakeAnthropic]) -> None:
    client, fake = claude
    fake.scenario = Scenario(text=["Checking."], tools=TOOLS, thinking=True, unknown_event=True)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    text, finish = "", None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                if call.function:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
    assert text == "Checking."
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]  # OpenAI numbering, not Anthropic's block indexes 2 and 3
    assert [
        (calls[i]["id"], calls[i]["name"], json.loads(calls[i]["arguments"])) for i in (0, 1)
    ] == [(t.id, t.name, t.input) for t in TOOLS]


async def test_e2e_every_delta_arrives_before_the_next_upstream_event(
    claude: tuple[AsyncOpenAI, FakeAnthropic],
) -> None:
    client, fake = claude
    fake.scenario = Scenario(
        text=["Each", " delta", " flushed", " alone."], tools=TOOLS[:1], delay=0.03
    )
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    received = [(time.monotonic(), chunk) async for chunk in stream]
    sent = fake.sent
    checked = 0
    for at, chunk in received:
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        fragment = d.content or (
            d.tool_calls[0].function.arguments if d.tool_calls and d.tool_calls[0].function else ""
        )
        if not fragment:
            continue
        # The upstream event this chunk came from: its own, one event per chunk.
        [source] = [
            i
            for i, e in enumerate(sent)
            if e.event == "content_block_delta"
            and fragment in (e.data["delta"].get("text"), e.data["delta"].get("partial_json"))
        ]
        assert at < sent[source + 1].at, f"{fragment!r} was held until the next event"
        checked += 1
    assert checked == 4 + 3  # four text deltas and three non-empty argument fragments


@pytest.mark.parametrize(
    ("scenario", "error", "status", "text"),
    [
        ("invalid_request", openai.BadRequestError, 400, "text content blocks must be non-empty"),
        ("not_found", openai.InternalServerError, 503, "does not serve this model"),
        ("overloaded", openai.InternalServerError, 503, "overloaded"),
        ("rate_limited", openai.InternalServerError, 503, "rate-limited"),
        ("server_error", openai.InternalServerError, 502, "failed"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_e2e_upstream_errors(
    claude: tuple[AsyncOpenAI, FakeAnthropic],
    scenario: str,
    error: type[openai.APIStatusError],
    status: int,
    text: str,
    stream: bool,
) -> None:
    client, fake = claude
    fake.scenario = Scenario(kind=scenario)
    with pytest.raises(error) as caught:
        await client.chat.completions.create(model=MODEL, messages=USER, stream=stream)
    assert caught.value.status_code == status
    assert text in caught.value.message
    if scenario in ("overloaded", "rate_limited"):
        assert caught.value.response.headers["retry-after"] == "7"


async def test_e2e_rejected_provider_key_is_ours_and_stays_secret(
    claude: tuple[AsyncOpenAI, FakeAnthropic],
) -> None:
    client, fake = claude
    fake.api_key = "the-real-key"
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=MODEL, messages=USER)
    assert caught.value.status_code == 502
    assert "credentials" in caught.value.message
    assert "test-key" not in str(caught.value.body)
    assert "invalid x-api-key" not in str(caught.value.body)


async def test_e2e_overloaded_mid_stream(claude: tuple[AsyncOpenAI, FakeAnthropic]) -> None:
    client, fake = claude
    fake.scenario = Scenario(kind="overloaded_midstream")
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == "Hello from"
    assert "overloaded" in str(caught.value.body)
