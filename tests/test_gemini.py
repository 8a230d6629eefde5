"""The native Gemini provider: translation both ways, streams, errors, and the whole path.

Three layers: pure translation (no I/O), the provider against the fake Google on loopback
(wire format: URL, headers, alt=sse, chunk framing), and the gateway end to end through the
official `openai` SDK.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.config import Deployment, ProviderConfig, Timeouts
from proxy.core import ChatRequest
from proxy.errors import (
    BadRequest,
    ModelUnavailable,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.providers.gemini import GeminiProvider, GeminiStream
from proxy.sse import SSEEvent, SSEParser
from tests.fakes.gemini_upstream import (
    FAKE_GEMINI,
    PROMPT_TOKENS,
    SCENARIOS,
    FakeGemini,
    create_fake_gemini,
)

SECRET = "AIza-secret-provider-key"
DEPLOYMENT = Deployment("google", "gemini-1.5-pro")
USER = [{"role": "user", "content": "Hi"}]


def provider(
    base_url: str = "https://generativelanguage.googleapis.com", api_key: str = SECRET
) -> GeminiProvider:
    return GeminiProvider(
        ProviderConfig(
            name="google",
            kind="gemini",
            base_url=base_url,
            api_key=api_key,
            api_key_env="GEMINI_API_KEY",
            timeouts=Timeouts(),
        )
    )


def chat(*, stream: bool = False, include_usage: bool = False, **body: Any) -> ChatRequest:
    body = {"model": "woozlit/gemini-1.5-pro", "messages": USER, "temperature": 0.7, **body}
    return ChatRequest(
        body=body,
        public_model=body["model"],
        stream=stream,
        include_usage=include_usage and stream,
        max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        prompt_tokens_estimate=10,
        # As validation sets it: the client's cap, or the default one.
        cap=body.get("max_completion_tokens") or body.get("max_tokens") or 4096,
    )


def translate(**body: Any) -> dict[str, Any]:
    return orjson.loads(provider().build_request(chat(**body), DEPLOYMENT).body)


def event(payload: Any) -> SSEEvent:
    return SSEEvent(orjson.dumps(payload))


def text_chunk(
    text: str, candidates: int, finish: str | None = None, thoughts: int = 0
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    usage = {
        "promptTokenCount": 11,
        "candidatesTokenCount": candidates,
        "totalTokenCount": 11 + candidates + thoughts,
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {"candidates": [candidate], "usageMetadata": usage}


def feed_all(translator: GeminiStream, payloads: list[Any]) -> list[dict[str, Any]]:
    chunks = [c for p in payloads for c in translator.feed(event(p))]
    return chunks + translator.finish()


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


# -- request translation -------------------------------------------------------------------


def test_request_url_and_headers_carry_the_key_only_in_a_header():
    p = provider()
    plain = p.build_request(chat(), DEPLOYMENT)
    streamed = p.build_request(chat(stream=True), DEPLOYMENT)
    base = "https://generativelanguage.googleapis.com/v1beta/models/gemini-1.5-pro"
    assert plain.url == f"{base}:generateContent"
    assert streamed.url == f"{base}:streamGenerateContent?alt=sse"
    assert plain.headers["x-goog-api-key"] == SECRET
    assert SECRET not in plain.url and SECRET not in streamed.url
    assert SECRET.encode() not in plain.body


def test_request_without_key_for_the_public_api_is_refused():
    with pytest.raises(ServiceUnavailable, match="GEMINI_API_KEY"):
        provider(api_key="").build_request(chat(), DEPLOYMENT)


def test_system_and_developer_hoisted_and_same_role_turns_merged():
    body = translate(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Anyone?"}]},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Ça va ?"},
        ]
    )
    assert body["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Answer in French."}]
    }
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}, {"text": "Anyone?"}]},
        {"role": "model", "parts": [{"text": "Bonjour"}]},
        {"role": "user", "parts": [{"text": "Ça va ?"}]},
    ]


def test_system_only_conversation_becomes_a_user_turn():
    body = translate(messages=[{"role": "system", "content": "Say hi."}])
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Say hi."}]}]
    assert "systemInstruction" not in body


def test_generation_config_mapping():
    body = translate(
        temperature=0.2,
        top_p=0.9,
        max_completion_tokens=256,
        max_tokens=999,
        stop=["END", "STOP"],
        presence_penalty=0.5,
        frequency_penalty=0,
        seed=42,
        n=3,
        response_format={"type": "json_object"},
        logprobs=False,
        user="u-1",
        parallel_tool_calls=False,
    )
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 256,
        "stopSequences": ["END", "STOP"],
        "presencePenalty": 0.5,
        "seed": 42,
        "candidateCount": 3,
        "responseMimeType": "application/json",
    }
    assert set(body) == {"contents", "generationConfig"}


def test_default_temperature_is_sent_and_single_stop_string_accepted():
    assert translate(stop="###")["generationConfig"] == {
        "maxOutputTokens": 4096,  # the cap reserved when the client sets none
        "temperature": 0.7,
        "stopSequences": ["###"],
    }


def test_more_than_five_stop_sequences_is_a_bad_request():
    with pytest.raises(BadRequest, match="at most 5"):
        translate(stop=["a", "b", "c", "d", "e", "f"])


def test_json_schema_narrowed_to_gemini_subset():
    schema = {
        "$defs": {"Color": {"enum": ["red", "green"], "title": "Color", "type": "string"}},
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "format": "uri", "title": "Name"},
            "when": {"type": "string", "format": "date-time"},
            "color": {"$ref": "#/$defs/Color"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "tags": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": 3},
            "kind": {"const": "fixed"},
        },
        "required": ["name", "color", "missing"],
    }
    body = translate(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "strict": True, "schema": schema},
        }
    )
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "when": {"type": "string", "format": "date-time"},
            "color": {"type": "string", "enum": ["red", "green"]},
            "note": {"type": "string", "nullable": True},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3, "nullable": True},
            "kind": {"type": "string", "enum": ["fixed"]},
        },
        "required": ["name", "color"],
    }


def test_recursive_schema_is_a_bad_request():
    schema = {
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        "$ref": "#/$defs/Node",
    }
    with pytest.raises(BadRequest, match="recursive"):
        translate(
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
        )


def test_image_parts():
    body = translate(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
                ],
            }
        ]
    )
    assert body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.com/cat.jpg", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "https://example.com/render"}},
    ]


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "data:image/png,rawbytes", ""])
def test_unusable_image_url_is_a_bad_request(url):
    with pytest.raises(BadRequest, match="image_url"):
        translate(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ]
        )


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
NOW = {
    "type": "function",
    "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
}


def test_tools_become_function_declarations():
    body = translate(tools=[WEATHER, NOW])
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather in a city.",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
                {"name": "now"},  # Gemini refuses an object schema with no properties
            ]
        }
    ]
    assert "toolConfig" not in body


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "now"}},
            {"mode": "ANY", "allowedFunctionNames": ["now"]},
        ),
    ],
)
def test_tool_choice(choice, config):
    body = translate(tools=[WEATHER, NOW], tool_choice=choice)
    assert body["toolConfig"] == {"functionCallingConfig": config}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "not in tools",
        ),
        ({"tools": [{"type": "code_interpreter"}]}, "only function tools"),
        ({"functions": [WEATHER["function"]]}, "deprecated"),
    ],
)
def test_untranslatable_tools_are_bad_requests(extra, match):
    with pytest.raises(BadRequest, match=match):
        translate(**extra)


def history(tool_content: Any, arguments: str = '{"city": "Paris"}') -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                },
                {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": tool_content},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
        {"role": "user", "content": "Thanks"},
    ]


def test_tool_calls_and_results_become_function_parts():
    body = translate(messages=history('{"temp": 21}'), tools=[WEATHER, NOW])
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "model",
            "parts": [
                # History from another model: the step's first call gets Google's dummy.
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "skip_thought_signature_validator",
                },
                {"functionCall": {"name": "now", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "now", "response": {"result": "12:00"}}},
                {"text": "Thanks"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("content", "response"),
    [
        ("[1, 2]", {"result": [1, 2]}),
        ("42", {"result": 42}),
        ("", {"result": ""}),
        ([{"type": "text", "text": '{"ok": '}, {"type": "text", "text": "true}"}], {"ok": True}),
    ],
)
def test_tool_result_is_always_an_object(content, response):
    parts = translate(messages=history(content))["contents"][2]["parts"]
    assert parts[0]["functionResponse"]["response"] == response


def test_tool_result_for_an_unknown_call_is_a_bad_request():
    messages = [*USER, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]
    with pytest.raises(BadRequest, match="call_x"):
        translate(messages=messages)


@pytest.mark.parametrize("arguments", ["{not json", "[1]"])
def test_tool_call_arguments_must_be_a_json_object(arguments):
    with pytest.raises(BadRequest, match=r"tool_calls\[0\].function.arguments"):
        translate(messages=history("1", arguments))


# -- response translation ------------------------------------------------------------------


def parse(payload: dict[str, Any], **body: Any) -> tuple[dict[str, Any], Any]:
    return provider().parse_response(orjson.dumps(payload), chat(**body))


def test_text_response_leaves_out_thoughts_and_counts_them_as_completion():
    completion, usage = parse(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "Thinking hard...", "thought": True},
                            {"text": "Hello"},
                            {"text": " there"},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 12,
                "candidatesTokenCount": 3,
                "thoughtsTokenCount": 40,
                "totalTokenCount": 55,
            },
        }
    )
    assert completion["choices"] == [
        {
            "index": 0,
            "finish_reason": "stop",
            "logprobs": None,
            "message": {"role": "assistant", "content": "Hello there"},
        }
    ]
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 43)
    assert completion["usage"] == {"prompt_tokens": 12, "completion_tokens": 43, "total_tokens": 55}


def test_function_calls_become_tool_calls():
    completion, _ = parse(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                            {"functionCall": {"name": "now"}},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 5},
        }
    )
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [
        (c["type"], c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls
    ] == [("function", "get_weather", {"city": "Paris"}), ("function", "now", {})]
    assert all(c["id"].startswith("call_") and len(c["id"]) == 37 for c in calls)
    assert calls[0]["id"] != calls[1]["id"]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(reason, expected):
    candidate: dict[str, Any] = {"content": {"parts": [{"text": "x"}]}}
    if reason:
        candidate["finishReason"] = reason
    completion, _ = parse({"candidates": [candidate]})
    assert completion["choices"][0]["finish_reason"] == expected


def test_blocked_prompt_is_content_filter_with_prompt_usage():
    completion, usage = parse(
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
        },
        n=2,
    )
    assert [
        (c["index"], c["finish_reason"], c["message"]["content"]) for c in completion["choices"]
    ] == [(0, "content_filter", ""), (1, "content_filter", "")]
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 0)


def test_candidates_answer_by_index():
    completion, _ = parse(
        {
            "candidates": [
                {"index": 1, "content": {"parts": [{"text": "second"}]}, "finishReason": "STOP"},
                {"content": {"parts": [{"text": "first"}]}, "finishReason": "MAX_TOKENS"},
            ]
        },
        n=2,
    )
    assert [
        (c["index"], c["message"]["content"], c["finish_reason"]) for c in completion["choices"]
    ] == [(0, "first", "length"), (1, "second", "stop")]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"candidates": []}'])
def test_malformed_answers_are_upstream_errors(body):
    with pytest.raises(UpstreamError):
        provider().parse_response(body, chat())


# -- stream translation --------------------------------------------------------------------


def test_stream_text_usage_from_the_last_chunk_not_summed():
    translator = provider().stream_translator(chat(stream=True, include_usage=True))
    assert isinstance(translator, GeminiStream)
    chunks = feed_all(
        translator, [text_chunk("Hel", 1), text_chunk("lo", 2), text_chunk("!", 3, "STOP")]
    )
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"content": "!"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["stop"]
    assert chunks[-1] == {
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }
    assert translator.done
    assert translator.produced_chars == len("Hello!")
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (11, 3)


def test_stream_usage_chunk_only_when_asked():
    translator = provider().stream_translator(chat(stream=True))
    chunks = feed_all(translator, [text_chunk("Hi", 1, "STOP")])
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert translator.usage is not None and translator.usage.completion_tokens == 1


def test_stream_ends_only_with_a_finish_reason():
    translator = provider().stream_translator(chat(stream=True, include_usage=True))
    assert translator.feed(SSEEvent(b"keep-alive", comment=True)) == []
    translator.feed(event(text_chunk("Hel", 1)))
    assert not translator.done
    assert translator.finish() == []  # truncated: the gateway reports it, no usage chunk


def test_stream_leaves_out_thoughts_and_bills_them():
    translator = provider().stream_translator(chat(stream=True, include_usage=True))
    thought = {
        "candidates": [{"content": {"parts": [{"text": "hmm", "thought": True}]}}],
        "usageMetadata": {"promptTokenCount": 4, "thoughtsTokenCount": 5},
    }
    chunks = feed_all(translator, [thought, text_chunk("42", 1, "STOP", thoughts=5)])
    assert deltas(chunks)[1:] == [{"content": "42"}, {}]
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_stream_function_calls_each_one_delta_with_index_and_id():
    translator = provider().stream_translator(chat(stream=True))
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    chunks = feed_all(
        translator,
        [
            {"candidates": [{"content": {"parts": [{"text": "Checking."}, call]}}]},
            {"candidates": [{"content": {"parts": [call]}, "finishReason": "STOP"}]},
        ],
    )
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert [c["index"] for c in calls] == [0, 1]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert orjson.loads(calls[1]["function"]["arguments"]) == {"city": "Paris"}
    assert deltas(chunks)[1] == {"content": "Checking."}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_blocked_prompt():
    translator = provider().stream_translator(chat(stream=True, include_usage=True))
    chunks = feed_all(
        translator,
        [
            {
                "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                "usageMetadata": {"promptTokenCount": 7},
            }
        ],
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, "content_filter"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}
    assert translator.done


def test_stream_candidates_by_index():
    translator = provider().stream_translator(chat(stream=True, n=2))
    first = {
        "candidates": [
            {"content": {"parts": [{"text": "a"}]}},
            {"index": 1, "content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"},
        ]
    }
    chunks = translator.feed(event(first))
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks] == [
        (0, {"role": "assistant", "content": ""}),
        (1, {"role": "assistant", "content": ""}),
        (0, {"content": "a"}),
        (1, {"content": "b"}),
        (1, {}),
    ]
    assert not translator.done
    last = translator.feed(event({"candidates": [{"finishReason": "MAX_TOKENS"}]}))
    assert last[0]["choices"][0]["finish_reason"] == "length"
    assert translator.done


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        (
            {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"},
            ServiceUnavailable,
            503,
        ),
        ({"code": 500, "message": "Internal error.", "status": "INTERNAL"}, UpstreamError, 502),
        (
            {"code": 429, "message": "Quota.", "status": "RESOURCE_EXHAUSTED"},
            ServiceUnavailable,
            503,
        ),
    ],
)
def test_stream_error_payload_raises(error, kind, status):
    translator = provider().stream_translator(chat(stream=True))
    translator.feed(event(text_chunk("Hel", 1)))
    with pytest.raises(kind) as caught:
        translator.feed(event({"error": error}))
    assert caught.value.status == status


@pytest.mark.parametrize("data", [b"{truncated", b'"a string"'])
def test_stream_malformed_event_is_an_upstream_error(data):
    with pytest.raises(UpstreamError, match="malformed"):
        provider().stream_translator(chat(stream=True)).feed(SSEEvent(data))


# -- errors --------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, details: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return orjson.dumps({"error": error})


KEY_INVALID = google_error(
    400,
    "INVALID_ARGUMENT",
    "API key not valid. Please pass a valid API key.",
    [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        }
    ],
)


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "ours", "message"),
    [
        (400, KEY_INVALID, {}, UpstreamError, 502, "credentials"),
        (
            400,
            google_error(400, "INVALID_ARGUMENT", "API_KEY_INVALID: bad key"),
            {},
            UpstreamError,
            502,
            "credentials",
        ),
        (
            401,
            google_error(401, "UNAUTHENTICATED", "Request had invalid authentication."),
            {},
            UpstreamError,
            502,
            "credentials",
        ),
        (
            403,
            google_error(403, "PERMISSION_DENIED", "Permission denied."),
            {},
            UpstreamError,
            502,
            "credentials",
        ),
        (
            400,
            google_error(400, "INVALID_ARGUMENT", "* contents: must not be empty"),
            {},
            BadRequest,
            400,
            "contents: must not be empty",
        ),
        (
            400,
            google_error(400, "FAILED_PRECONDITION", "User location is not supported."),
            {},
            ModelUnavailable,
            503,
            "User location is not supported.",
        ),
        (
            400,
            google_error(
                400,
                "FAILED_PRECONDITION",
                "Gemini API free tier is not available in your country. Please enable billing.",
            ),
            {},
            ModelUnavailable,
            503,
            "enable billing",
        ),
        (
            404,
            google_error(404, "NOT_FOUND", "models/x is not found for API version v1beta"),
            {},
            ModelUnavailable,
            503,
            "does not serve the configured model",
        ),
        (
            408,
            google_error(408, "DEADLINE_EXCEEDED", "Request timed out."),
            {},
            UpstreamTimeout,
            504,
            "timed out",
        ),
        (
            499,
            google_error(499, "CANCELLED", "The operation was cancelled."),
            {},
            UpstreamError,
            502,
            "dropped",
        ),
        (
            409,
            google_error(409, "ABORTED", "The operation was aborted."),
            {},
            UpstreamError,
            502,
            "dropped",
        ),
        (
            400,
            google_error(400, "INVALID_ARGUMENT", "API key expired. Please renew the API key."),
            {},
            UpstreamError,
            502,
            "credentials",
        ),
        (
            500,
            google_error(500, "INTERNAL", "An internal error has occurred."),
            {},
            UpstreamError,
            502,
            "failed",
        ),
        (
            503,
            google_error(503, "UNAVAILABLE", "The model is overloaded."),
            {},
            ServiceUnavailable,
            503,
            "overloaded",
        ),
        (
            504,
            google_error(504, "DEADLINE_EXCEEDED", "Deadline expired."),
            {},
            UpstreamTimeout,
            504,
            "timed out",
        ),
        (502, b"<html>Bad Gateway</html>", {}, UpstreamError, 502, "failed"),
        (
            400,
            b"[" + google_error(400, "INVALID_ARGUMENT", "wrapped") + b"]",
            {},
            BadRequest,
            400,
            "wrapped",
        ),
    ],
)
def test_error_mapping(status, body, headers, kind, ours, message):
    error = provider().error_from_response(status, body, headers)
    assert type(error) is kind and error.status == ours
    assert message in error.message
    assert SECRET not in error.message and "API key" not in error.message


@pytest.mark.parametrize(
    ("headers", "details", "retry_after"),
    [
        ({}, [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}], "7"),
        ({}, [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.2s"}], "3"),
        ({"retry-after": "30"}, None, "30"),
        ({}, None, "1"),
    ],
)
def test_rate_limit_is_503_with_retry_after(headers, details, retry_after):
    body = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", details)
    error = provider().error_from_response(429, body, headers)
    assert isinstance(error, ServiceUnavailable)
    assert error.headers == {"Retry-After": retry_after}


# -- the provider against the fake Google ----------------------------------------------------


@pytest.fixture
async def fake_server() -> AsyncIterator[TestServer]:
    server = TestServer(create_fake_gemini(chunk_delay=0.1))
    await server.start_server()
    yield server
    await server.close()


def fake_of(server: TestServer) -> FakeGemini:
    return server.app[FAKE_GEMINI]


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def roundtrip(
    server: TestServer, request: ChatRequest, model: str, api_key: str = "test-key"
) -> Any:
    """Send a translated request to the fake; the parsed answer, or the chunks of a stream."""
    p = provider(base_url(server), api_key)
    upstream = p.build_request(request, Deployment("google", model))
    async with (
        aiohttp.ClientSession() as session,
        session.post(upstream.url, data=upstream.body, headers=upstream.headers) as resp,
    ):
        if resp.status >= 300:
            raise p.error_from_response(
                resp.status, await resp.read(), {k.lower(): v for k, v in resp.headers.items()}
            )
        if not request.stream:
            return p.parse_response(await resp.read(), request)
        translator = p.stream_translator(request)
        parser, chunks = SSEParser(), []
        async for data in resp.content.iter_any():
            for sse in parser.feed(data):
                chunks.extend(translator.feed(sse))
        for sse in parser.close():
            chunks.extend(translator.feed(sse))
        chunks.extend(translator.finish())
        assert translator.done == (model != "truncated")
        return chunks


async def test_fake_roundtrip_non_stream(fake_server):
    completion, usage = await roundtrip(
        fake_server,
        chat(messages=[{"role": "system", "content": "Be nice."}, *USER]),
        "gemini-1.5-pro",
    )
    assert completion["choices"][0]["message"]["content"] == "Hello from Gemini!"
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 4)
    received = fake_of(fake_server).last
    assert received.path == "/v1beta/models/gemini-1.5-pro:generateContent"
    assert received.headers["x-goog-api-key"] == "test-key" and "key" not in received.query
    assert received.body["systemInstruction"] == {"parts": [{"text": "Be nice."}]}


async def test_fake_roundtrip_stream(fake_server):
    chunks = await roundtrip(fake_server, chat(stream=True, include_usage=True), "text")
    assert "".join(d.get("content", "") for d in deltas(chunks)) == "Hello from Gemini!"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": 4,
        "total_tokens": PROMPT_TOKENS + 4,
    }
    assert fake_of(fake_server).last.query == {"alt": "sse"}


def collect(chunks: list[dict[str, Any]], n: int) -> list[tuple[str, str | None, list[str]]]:
    """Per choice: the text, the finish reason and the called functions' arguments."""
    out: list[tuple[str, str | None, list[str]]] = [("", None, []) for _ in range(n)]
    for chunk in chunks:
        for choice in chunk["choices"]:
            text, finish, calls = out[choice["index"]]
            delta = choice["delta"]
            calls = calls + [c["function"]["arguments"] for c in delta.get("tool_calls", ())]
            out[choice["index"]] = (
                text + (delta.get("content") or ""),
                choice["finish_reason"] or finish,
                calls,
            )
    return out


@pytest.mark.parametrize(
    ("scenario", "n", "finish"),
    [
        ("text", 1, "stop"),
        ("max-tokens", 1, "length"),
        ("safety", 1, "content_filter"),
        ("tools", 1, "tool_calls"),
        ("blocked", 1, "content_filter"),
        ("thinking", 1, "stop"),
        ("multi", 3, "stop"),
    ],
)
async def test_fake_stream_and_non_stream_agree(fake_server, scenario, n, finish):
    completion, usage = await roundtrip(fake_server, chat(n=n, tools=[WEATHER]), scenario)
    chunks = await roundtrip(
        fake_server, chat(stream=True, include_usage=True, n=n, tools=[WEATHER]), scenario
    )
    whole = [
        (
            c["message"]["content"] or "",
            c["finish_reason"],
            [t["function"]["arguments"] for t in c["message"].get("tool_calls", ())],
        )
        for c in completion["choices"]
    ]
    assert collect(chunks, n) == whole
    assert {f for _, f, _ in whole} == {finish}
    assert chunks[-1]["usage"] == completion["usage"] == usage.as_dict()


async def test_fake_truncated_stream_is_not_done(fake_server):
    chunks = await roundtrip(fake_server, chat(stream=True, include_usage=True), "truncated")
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "Hello"}]


async def test_fake_roundtrip_tool_history_passes_google_validation(fake_server):
    completion, _ = await roundtrip(
        fake_server, chat(messages=history('{"temp": 21}'), tools=[WEATHER, NOW]), "tools"
    )
    calls = completion["choices"][0]["message"]["tool_calls"]
    assert [orjson.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris", "London"]


async def test_fake_refuses_a_wrong_key_and_we_do_not_leak_it(fake_server):
    with pytest.raises(UpstreamError) as caught:
        await roundtrip(fake_server, chat(), "text", api_key=SECRET)
    assert caught.value.status == 502 and SECRET not in caught.value.message


# -- end to end through the gateway and the official SDK -------------------------------------


PUBLIC = "woozlit/gemini-1.5-pro"


@pytest.fixture
async def client(gateway: Any, fake_server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    models = {PUBLIC: [{"provider": "google", "model": "gemini-1.5-pro"}]}
    models.update({f"woozlit/fake-{s}": [{"provider": "google", "model": s}] for s in SCENARIOS})
    handle = await gateway(
        providers={
            "google": {"kind": "gemini", "base_url": base_url(fake_server), "api_key": "test-key"}
        },
        models=models,
    )
    sdk = openai.AsyncOpenAI(
        base_url=handle.base_url + "/v1", api_key=handle.api_key, max_retries=0, timeout=10
    )
    yield sdk
    await sdk.close()


async def test_sdk_text(client, fake_server):
    completion = await client.chat.completions.create(
        model=PUBLIC, messages=[{"role": "system", "content": "Be nice."}, *USER], max_tokens=50
    )
    assert completion.model == PUBLIC and completion.id.startswith("woozlit-")
    assert completion.choices[0].message.content == "Hello from Gemini!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        PROMPT_TOKENS,
        4,
    )
    config = fake_of(fake_server).last.body["generationConfig"]
    assert config == {"temperature": 0.7, "maxOutputTokens": 50}


async def test_sdk_stream_usage_is_googles_last_count(client):
    stream = await client.chat.completions.create(
        model=PUBLIC, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert {c.model for c in chunks} == {PUBLIC} and len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Gemini!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    # Every upstream chunk repeats the cumulative usage; summing would give 44 and 10.
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 4)


async def test_sdk_tools_non_stream(client, fake_server):
    completion = await client.chat.completions.create(
        model="woozlit/fake-tools", messages=USER, tools=[WEATHER], tool_choice="required"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, orjson.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_weather", {"city": "London", "unit": "celsius"}),
    ]
    assert fake_of(fake_server).last.body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY"}
    }


async def test_sdk_tools_stream(client):
    stream = await client.chat.completions.create(
        model="woozlit/fake-tools", messages=USER, tools=[WEATHER], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert [orjson.loads(calls[i]["arguments"])["city"] for i in (0, 1)] == ["Paris", "London"]
    assert all(c["id"].startswith("call_") and c["name"] == "get_weather" for c in calls.values())


async def test_sdk_blocked_prompt_is_content_filter(client):
    completion = await client.chat.completions.create(model="woozlit/fake-blocked", messages=USER)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.usage is not None and completion.usage.prompt_tokens == 7


@pytest.mark.parametrize(
    ("scenario", "exception", "status", "says"),
    [
        ("bad-request", openai.BadRequestError, 400, "max_output_tokens: must be positive"),
        ("not-found", openai.InternalServerError, 503, "does not serve the configured model"),
        ("precondition", openai.InternalServerError, 503, "User location is not supported"),
        ("rate-limited", openai.InternalServerError, 503, "rate-limited"),
        ("unavailable", openai.InternalServerError, 503, "overloaded"),
        ("server-error", openai.InternalServerError, 502, "failed"),
    ],
)
async def test_sdk_errors(client, scenario, exception, status, says):
    with pytest.raises(exception) as caught:
        await client.chat.completions.create(model=f"woozlit/fake-{scenario}", messages=USER)
    assert caught.value.status_code == status
    error = caught.value.response.json()["error"]
    assert says in error["message"]
    assert error["param"] == ("max_completion_tokens" if scenario == "bad-request" else None)
    if scenario == "rate-limited":
        assert caught.value.response.headers["retry-after"] == "7"


async def test_sdk_bad_provider_key_is_502_without_the_key(gateway, fake_server):
    handle = await gateway(
        providers={
            "google": {"kind": "gemini", "base_url": base_url(fake_server), "api_key": SECRET}
        },
        models={PUBLIC: [{"provider": "google", "model": "gemini-1.5-pro"}]},
    )
    async with openai.AsyncOpenAI(
        base_url=handle.base_url + "/v1", api_key=handle.api_key, max_retries=0
    ) as sdk:
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.chat.completions.create(model=PUBLIC, messages=USER)
    assert caught.value.status_code == 502
    assert SECRET not in caught.value.response.text


async def test_sdk_untranslatable_request_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=PUBLIC, messages=USER, stop=["1", "2", "3", "4", "5", "6"]
        )
    error = caught.value.response.json()["error"]
    assert "at most 5" in error["message"] and error["param"] == "stop"


async def test_sdk_midstream_error_ends_the_stream_with_an_error_event(client):
    stream = await client.chat.completions.create(
        model="woozlit/fake-midstream-error", messages=USER, stream=True
    )
    texts = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            texts.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(texts) == "Hello"
    # Our error event is {"error": "<sentence>"}; the SDK keeps the sentence as the body.
    assert "overloaded" in str(caught.value.body)


async def test_each_delta_reaches_the_client_before_the_next_upstream_chunk(client, fake_server):
    stream = await client.chat.completions.create(
        model="woozlit/fake-slow", messages=USER, stream=True
    )
    arrivals: list[tuple[float, str]] = []
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals.append((time.monotonic(), choice.delta.content))
    sent_at = fake_of(fake_server).last.sent_at
    assert [text for _, text in arrivals] == ["Hello", " from", " Gemini", "!"]
    assert len(sent_at) == 4
    for (arrived, _), next_sent in zip(arrivals, sent_at[1:], strict=False):
        assert arrived < next_sent
