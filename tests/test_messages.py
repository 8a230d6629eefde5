"""Anthropic's Messages API on the gateway, over plain HTTP: `POST /messages` and
`/messages/count_tokens` on both prefixes, both key headers, every family of the client
harness (Claude natively, the others translated), stream or not; the answers' shapes and
event grammar, the errors' shapes, the charge, the metrics, idempotency, and Claude Code's
captured requests replayed (tests/corpus/clients/).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from proxy.app_state import ACCOUNTANT, ACCOUNTS
from proxy.estimates import BUILTIN_TOOL_RESERVE
from tests.clients.harness import (
    ANSWERS,
    BAD_KEY,
    CLAUDE_MODEL,
    CRASHING_MODEL,
    DEEPSEEK_MODEL,
    FAMILIES,
    GEMINI_MODEL,
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
from tests.fakes.anthropic_upstream import SIGNATURE, Scenario, ToolUse

CORPUS = Path(__file__).parent / "corpus" / "clients"
HELLO = [{"role": "user", "content": "Hello!"}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}
USAGE_FIELDS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


@pytest.fixture
async def cg(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
) -> AsyncIterator[ClientGateway]:
    async with serving(gateway, fake_openai, redis_url) as served:
        yield served


async def post(
    cg: ClientGateway,
    body: dict[str, Any],
    *,
    profile: str = "v1",
    auth: str = "x-api-key",
    key: str | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/messages",
) -> tuple[int, CIMultiDict[str], bytes]:
    key = key or cg.key
    sent = {"x-api-key": key} if auth == "x-api-key" else {"Authorization": f"Bearer {key}"}
    sent["anthropic-version"] = "2023-06-01"
    sent.update(headers or {})
    async with (
        aiohttp.ClientSession() as session,
        session.post(cg.url(profile) + path, json=body, headers=sent) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a Messages stream; every event has both lines."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        names = [line[7:] for line in lines if line.startswith("event: ")]
        data = [line[6:] for line in lines if line.startswith("data: ")]
        assert len(names) == 1 and len(data) == 1, block
        out.append((names[0], json.loads(data[0])))
    return out


def assemble(stream: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message a stream adds up to, its event grammar checked on the way (Anthropic's
    streaming guide): message_start, blocks opened in order, deltas into open blocks,
    message_delta with the cumulative usage, message_stop last."""
    assert stream[0][0] == "message_start", stream[:2]
    assert stream[-1][0] == "message_stop", stream[-2:]
    message = stream[0][1]["message"]
    assert message["content"] == [] and message["stop_reason"] is None
    json_parts: dict[int, str] = {}
    open_blocks: set[int] = set()
    for name, data in stream[1:-1]:
        assert data["type"] == name
        if name == "content_block_start":
            assert data["index"] == len(message["content"])
            message["content"].append(dict(data["content_block"]))
            open_blocks.add(data["index"])
        elif name == "content_block_delta":
            assert data["index"] in open_blocks
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "input_json_delta":
                json_parts[data["index"]] = (
                    json_parts.get(data["index"], "") + delta["partial_json"]
                )
            else:
                field = delta["type"].removesuffix("_delta")
                block[field] = block.get(field, "") + delta[field]
        elif name == "content_block_stop":
            open_blocks.remove(data["index"])
        elif name == "message_delta":
            assert not open_blocks
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["usage"].update(data["usage"])
        else:
            assert name == "ping", name
    for at, text in json_parts.items():
        message["content"][at]["input"] = json.loads(text)
    return message


def charge(usage: dict[str, Any]) -> int:
    return sum(usage.get(name) or 0 for name in USAGE_FIELDS)


async def used(cg: ClientGateway, expected: int | None = None) -> int:
    """The account's tokens this month, once the settles in flight are done (polled when
    `expected`: a stream's settle may start after its client read the end)."""
    app = cg.gateway.app
    for _ in range(200):
        await app[ACCOUNTANT].flush()
        value: int = (await app[ACCOUNTS].usage(cg.gateway.account_id))["used"]
        if expected is None or value == expected:
            return value
        await asyncio.sleep(0.02)
    return value


def text_of(message: dict[str, Any]) -> str:
    return "".join(b["text"] for b in message["content"] if b["type"] == "text")


async def answer(
    cg: ClientGateway, body: dict[str, Any], streaming: bool, **kwargs: Any
) -> tuple[CIMultiDict[str], dict[str, Any]]:
    """A 200 answer as a message (a stream assembled), and its headers."""
    body = {**body, "stream": True} if streaming else body
    status, headers, raw = await post(cg, body, **kwargs)
    assert status == 200, raw
    if streaming:
        assert headers["Content-Type"].startswith("text/event-stream")
        return headers, assemble(events(raw))
    assert headers["Content-Type"].startswith("application/json")
    return headers, json.loads(raw)


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
@pytest.mark.parametrize("profile", ["v1", "woozlit"])
@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", FAMILIES)
async def test_answer(
    cg: ClientGateway, model: str, streaming: bool, profile: str, auth: str
) -> None:
    """`stream` absent is a JSON answer on both prefixes; the charge is the answer's usage."""
    body = {"model": model, "max_tokens": 256, "messages": HELLO}
    headers, message = await answer(cg, body, streaming, profile=profile, auth=auth)
    assert (message["type"], message["role"], message["model"]) == ("message", "assistant", model)
    assert message["id"] == headers["x-request-id"]
    assert text_of(message) == ANSWERS[model]
    assert message["stop_reason"] == "end_turn"
    # DeepSeek's reasoning_content is a thinking block (the fake sends it in streams only).
    thinking = [b["thinking"] for b in message["content"] if b["type"] == "thinking"]
    assert thinking == ([REASONING[model]] if model in REASONING and streaming else [])
    assert message["usage"]["output_tokens"] > 0 and message["usage"]["input_tokens"] > 0
    assert await used(cg, charge(message["usage"])) == charge(message["usage"])
    if model == CLAUDE_MODEL:
        sent = cg.anthropic.requests[-1]
        assert sent.body == {**body, "model": "claude-3-5-sonnet-20241022"} | (
            {"stream": True} if streaming else {}
        )


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
async def test_native_passes_everything_through(cg: ClientGateway, streaming: bool) -> None:
    """cache_control, thinking and its signature, betas, context_management, output_config:
    a Claude deployment gets the client's body as sent, but `model` and `max_tokens`; cache
    reads and writes are charged as input."""
    cg.anthropic.scenario = Scenario(cache_read_input_tokens=100, cache_creation_input_tokens=50)
    body = {
        "model": "claude-opus-4-8",  # an alias of CLAUDE_MODEL
        "max_tokens": 4096,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Greet.", "signature": SIGNATURE},
                {"type": "text", "text": "Hello."},
            ]},
            {"role": "user", "content": "And now?"},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "user-1"},
        "top_k": 5,
    }  # fmt: skip
    betas = "interleaved-thinking-2025-05-14,context-management-2025-06-27"
    _, message = await answer(cg, body, streaming, headers={"anthropic-beta": betas})
    sent = cg.anthropic.requests[-1]
    expected = {**body, "model": "claude-3-5-sonnet-20241022"}
    assert sent.body == (expected | {"stream": True} if streaming else expected)
    assert sent.headers["anthropic-beta"] == betas
    assert sent.headers["x-api-key"] == "test-key"
    assert message["model"] == CLAUDE_MODEL  # the public name the alias stands for
    assert message["content"][0] == {
        "type": "thinking",
        "thinking": "Let me see.",
        "signature": SIGNATURE,
    }
    usage = message["usage"]
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (100, 50)
    assert await used(cg, 21 + 100 + 50 + 9) == 21 + 100 + 50 + 9


async def test_thinking_budget_follows_a_lowered_cap(cg: ClientGateway) -> None:
    """A cap lowered at admission (a month nearly spent) lowers the thinking budget with it,
    so that Anthropic still finds it below max_tokens."""
    accounts = cg.gateway.app[ACCOUNTS]
    await accounts.update_account(cg.gateway.account_id, {"monthly_token_limit": 3000})
    body = {
        "model": CLAUDE_MODEL,
        "max_tokens": 8000,
        "messages": HELLO,
        "thinking": {"type": "enabled", "budget_tokens": 4000},
    }
    _, message = await answer(cg, body, False)
    sent = cg.anthropic.requests[-1].body
    assert sent["max_tokens"] < 3000
    assert 1024 <= sent["thinking"]["budget_tokens"] < sent["max_tokens"]
    assert message["content"][0]["signature"] == SIGNATURE


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", [CLAUDE_MODEL, TOOLS_MODEL])
async def test_tool_round_trip(cg: ClientGateway, model: str, streaming: bool) -> None:
    """A tool_use answer, then its tool_result sent back: both served."""
    cg.anthropic.scenario = Scenario(tools=[ToolUse("toolu_01", "get_weather", {"city": "Paris"})])
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 256,
        "messages": HELLO,
        "tools": [WEATHER],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
    }
    _, message = await answer(cg, body, streaming)
    calls = [b for b in message["content"] if b["type"] == "tool_use"]
    cities = ["Paris"] if model == CLAUDE_MODEL else TOOL_CITIES
    assert [c["input"]["city"] for c in calls] == cities
    assert all(c["name"] == "get_weather" and c["id"] for c in calls)
    assert message["stop_reason"] == "tool_use"
    cg.anthropic.scenario = Scenario()
    results = [
        {"type": "tool_result", "tool_use_id": c["id"], "content": "Sunny, 21 C"} for c in calls
    ]
    body["messages"] = [
        *HELLO,
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": results},
    ]
    _, follow_up = await answer(cg, body, streaming)
    assert follow_up["content"]


async def test_translated_request(cg: ClientGateway, fake_openai: FakeUpstream) -> None:
    """What an OpenAI deployment gets for a Messages request (translate.py)."""
    body = {
        "model": OPENAI_MODEL,
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Call it.", "signature": "sig"},
                {"type": "tool_use", "id": "call_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1",
                 "content": [{"type": "text", "text": "Sunny"}]},
                {"type": "text", "text": "Thanks."},
            ]},
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_k": 3,
    }  # fmt: skip
    status, _, raw = await post(cg, body)
    assert status == 200, raw
    sent = fake_openai.record.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
    ]  # fmt: skip
    assert sent["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "parameters": WEATHER["input_schema"],
            "description": WEATHER["description"],
        }}
    ]  # fmt: skip
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    assert (sent["stop"], sent["temperature"]) == (["END"], 0.5)
    assert "top_k" not in sent


# -- errors ----------------------------------------------------------------------------------


def error_of(status: int, raw: bytes, kind: str) -> str:
    body = json.loads(raw)
    assert body["type"] == "error" and body["error"]["type"] == kind, (status, body)
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize("path", ["/messages", "/messages/count_tokens"])
@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
@pytest.mark.parametrize("profile", ["v1", "woozlit"])
async def test_bad_key(cg: ClientGateway, profile: str, auth: str, path: str) -> None:
    body = {"model": CLAUDE_MODEL, "max_tokens": 10, "messages": HELLO}
    status, _, raw = await post(cg, body, profile=profile, auth=auth, key=BAD_KEY, path=path)
    assert status == 401
    assert error_of(status, raw, "authentication_error") == await cg.sentence("401")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "x"}, {"type": "text"}]}]},
         "messages.0.content.1.text"),
        ({"temperature": 1.5}, "temperature"),
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("profile", ["v1", "woozlit"])
async def test_bad_request(
    cg: ClientGateway, profile: str, change: dict[str, Any], param: str
) -> None:
    body = {"model": CLAUDE_MODEL, "max_tokens": 1000, "messages": HELLO}
    body = {k: v for k, v in {**body, **change}.items() if v is not None}
    status, headers, raw = await post(cg, body, profile=profile)
    assert status == 400
    assert param in error_of(status, raw, "invalid_request_error")
    assert "x-ratelimit-remaining-requests" in headers


@pytest.mark.parametrize("model", [OPENAI_MODEL, GEMINI_MODEL, DEEPSEEK_MODEL])
async def test_server_tool_refused_when_translated(cg: ClientGateway, model: str) -> None:
    """A server tool has no translation: a 400 naming it, never dropped; Claude takes it."""
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    body = {"model": model, "max_tokens": 100, "messages": HELLO, "tools": [WEATHER, search]}
    status, _, raw = await post(cg, body)
    message = error_of(status, raw, "invalid_request_error")
    assert status == 400 and "tools.1" in message and "web_search" in message
    status, _, raw = await post(cg, {**body, "model": CLAUDE_MODEL})
    assert status == 200, raw
    assert cg.anthropic.requests[-1].body["tools"][1] == search


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", [CLAUDE_MODEL, OPENAI_MODEL])
async def test_quota(cg: ClientGateway, model: str, streaming: bool) -> None:
    body = {"model": model, "max_tokens": 10, "messages": HELLO, "stream": streaming}
    status, headers, raw = await post(cg, body, key=cg.quota_key)
    assert status == 429
    assert error_of(status, raw, "rate_limit_error") == QUOTA_SENTENCE
    assert headers["x-should-retry"] == "false"


async def test_upstream_refusal(cg: ClientGateway) -> None:
    cg.anthropic.scenario = Scenario(kind="invalid_request")
    status, _, raw = await post(cg, {"model": CLAUDE_MODEL, "max_tokens": 10, "messages": HELLO})
    assert status == 400
    assert "text content blocks must be non-empty" in error_of(status, raw, "invalid_request_error")


async def test_upstream_overloaded(cg: ClientGateway) -> None:
    cg.anthropic.scenario = Scenario(kind="overloaded")
    status, headers, raw = await post(
        cg, {"model": CLAUDE_MODEL, "max_tokens": 10, "messages": HELLO}
    )
    assert status == 503 and headers["Retry-After"] == "7"
    error_of(status, raw, "overloaded_error")


async def test_error_mid_stream_translated(cg: ClientGateway) -> None:
    sentence = await cg.sentence("midstream")
    body = {"model": CRASHING_MODEL, "max_tokens": 10, "messages": HELLO, "stream": True}
    status, _, raw = await post(cg, body)
    assert status == 200
    stream = events(raw)
    assert stream[0][0] == "message_start"
    deltas = [d["delta"]["text"] for n, d in stream if n == "content_block_delta"]
    assert "".join(deltas) == "Hello!"
    assert stream[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": sentence}},
    )


async def test_error_mid_stream_native(cg: ClientGateway) -> None:
    cg.anthropic.scenario = Scenario(kind="overloaded_midstream")
    body = {"model": CLAUDE_MODEL, "max_tokens": 10, "messages": HELLO, "stream": True}
    status, _, raw = await post(cg, body)
    assert status == 200
    stream = events(raw)
    assert [n for n, _ in stream][:2] == ["message_start", "ping"]
    name, error = stream[-1]
    assert name == "error" and error["error"]["type"] == "overloaded_error"
    assert "overloaded" in error["error"]["message"]
    # Charged the input and what was produced before the error (two deltas: "Hello from").
    assert await used(cg, 21 + 3) == 21 + 3


# -- the charge of a client that leaves, metrics, idempotency ---------------------------------


async def test_client_leaves_mid_stream(cg: ClientGateway) -> None:
    """A client gone after the first delta is charged the input and what was produced."""
    cg.anthropic.scenario = Scenario(delay=0.2, text=["Hello"] * 20, output_tokens=40)
    body = {"model": CLAUDE_MODEL, "max_tokens": 100, "messages": HELLO, "stream": True}
    headers = {"x-api-key": cg.key, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(cg.v1 + "/messages", json=body, headers=headers)
        seen = b""
        while b"text_delta" not in seen:
            seen += await resp.content.readany()
        resp.close()
    charged = await used(cg)
    for _ in range(100):
        if charged:
            break
        await asyncio.sleep(0.05)
        charged = await used(cg)
    assert 21 + 1 <= charged < 21 + 40  # the input, and a part of the answer


async def test_metrics_and_idempotency(cg: ClientGateway) -> None:
    body = {"model": CLAUDE_MODEL, "max_tokens": 10, "messages": HELLO}
    first = await post(cg, body, headers={"Idempotency-Key": "k-1"})
    again = await post(cg, body, headers={"Idempotency-Key": "k-1"})
    assert first[0] == again[0] == 200
    assert again[2] == first[2] and again[1]["Idempotent-Replayed"] == "true"
    assert len(cg.anthropic.requests) == 1
    assert await used(cg, 30) == 30  # charged once
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(cg.gateway.base_url + "/metrics")).text()
    series = (
        f'woozlit_requests_total{{model="{CLAUDE_MODEL}",protocol="messages",'
        'provider="anthropic",status="200"}'
    )
    assert series in text


# -- count_tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["v1", "woozlit"])
async def test_count_tokens(cg: ClientGateway, profile: str) -> None:
    """Claude: Anthropic's exact count (without the fields only creation takes); the others:
    the estimate. Rate-limited, never the quota (the spent account may count)."""
    body = {"model": CLAUDE_MODEL, "messages": HELLO, "system": "Be brief.", "tools": [WEATHER]}
    status, headers, raw = await post(cg, body, profile=profile, path="/messages/count_tokens")
    assert status == 200 and json.loads(raw) == {"input_tokens": 21}
    assert "x-ratelimit-remaining-requests" in headers
    assert cg.anthropic.counts[-1].body == {**body, "model": "claude-3-5-sonnet-20241022"}
    with_cap = {**body, "max_tokens": 10, "stream": True, "temperature": 0.2}
    status, _, raw = await post(cg, with_cap, key=cg.quota_key, path="/messages/count_tokens")
    assert status == 200 and json.loads(raw) == {"input_tokens": 21}
    assert cg.anthropic.counts[-1].body == {**body, "model": "claude-3-5-sonnet-20241022"}
    status, _, raw = await post(cg, {**body, "model": OPENAI_MODEL}, path="/messages/count_tokens")
    assert status == 200 and json.loads(raw)["input_tokens"] > 0
    assert await used(cg) == 0


async def test_count_tokens_errors(cg: ClientGateway) -> None:
    status, _, raw = await post(cg, {"model": CLAUDE_MODEL}, path="/messages/count_tokens")
    assert status == 400 and "messages" in error_of(status, raw, "invalid_request_error")
    cg.anthropic.scenario = Scenario(kind="overloaded")  # Anthropic down: the estimate
    body = {"model": CLAUDE_MODEL, "messages": HELLO}
    status, _, raw = await post(cg, body, path="/messages/count_tokens")
    assert status == 200 and json.loads(raw)["input_tokens"] > 0


# -- Claude Code ----------------------------------------------------------------------------


def captured() -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """Claude Code's captured POSTs (tests/corpus/clients/): (name, headers, body)."""
    out = []
    for path in sorted(CORPUS.glob("claude-code*.requests.json")):
        for i, request in enumerate(json.loads(path.read_text())):
            if request["method"] == "POST":
                out.append(
                    (f"{path.name.split('.requests')[0]}-{i}", request["headers"], request["body"])
                )
    return out


@pytest.mark.parametrize("family", [CLAUDE_MODEL, OPENAI_MODEL, GEMINI_MODEL, DEEPSEEK_MODEL])
@pytest.mark.parametrize(("name", "headers", "body"), captured(), ids=[c[0] for c in captured()])
async def test_claude_code_replayed(
    cg: ClientGateway, name: str, headers: dict[str, str], body: dict[str, Any], family: str
) -> None:
    """Claude Code's requests as captured (its headers, `?beta=true`, `Accept:
    application/json` with `stream: true`, its own model name through an alias) get a 200
    stream in Anthropic's shape, natively from Claude and translated from the others."""
    if family != CLAUDE_MODEL or body["model"].startswith("woozlit/"):
        body = {**body, "model": family}
    sent = {
        k: v
        for k, v in headers.items()
        if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
    }
    sent["x-api-key"] = cg.key
    async with (
        aiohttp.ClientSession() as session,
        session.post(cg.v1 + "/messages?beta=true", json=body, headers=sent) as resp,
    ):
        raw = await resp.read()
        assert resp.status == 200, raw
        assert resp.headers["Content-Type"].startswith("text/event-stream")
    message = assemble(events(raw))
    assert text_of(message) == ANSWERS[family]
    assert message["model"] == family  # an alias answers with the public name
    if family == CLAUDE_MODEL:
        upstream = cg.anthropic.requests[-1]
        assert upstream.headers["anthropic-beta"] == headers["anthropic-beta"]
        assert upstream.body == {**body, "model": "claude-3-5-sonnet-20241022"}


@pytest.mark.parametrize("profile", ["v1", "woozlit"])
async def test_models_take_the_key_as_x_api_key(cg: ClientGateway, profile: str) -> None:
    """The anthropic SDKs list models with `x-api-key`: the key is known there too."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(cg.url(profile) + "/models", headers={"x-api-key": cg.key}) as resp,
    ):
        assert resp.status == 200
        assert CLAUDE_MODEL in {m["id"] for m in (await resp.json())["data"]}
    async with (
        aiohttp.ClientSession() as session,
        session.get(cg.url(profile) + "/models", headers={"x-api-key": "woozlit_nope"}) as resp,
    ):
        assert resp.status == 401


async def test_a_refused_anthropic_header_is_the_clients_400(cg: ClientGateway) -> None:
    """The client's own `anthropic-version` (or `anthropic-beta`) goes to Claude as sent: its
    refusal is the client's 400 with Anthropic's sentence (Claude Code retries without a beta
    on it), never a 502 that would cool the deployment down for every other client."""
    body = {"model": CLAUDE_MODEL, "max_tokens": 10, "messages": HELLO}
    for _ in range(4):
        status, _, raw = await post(cg, body, headers={"anthropic-version": "bogus"})
        assert status == 400, raw
        assert "anthropic-version" in error_of(400, raw, "invalid_request_error")
    async with (
        aiohttp.ClientSession() as session,
        session.get(cg.gateway.base_url + "/metrics") as resp,
    ):
        metrics = await resp.text()
    cooldowns = [
        line for line in metrics.splitlines() if line.startswith("woozlit_deployment_cooldown{")
    ]
    assert cooldowns and all(line.endswith(" 0.0") for line in cooldowns), cooldowns
    assert "woozlit_upstream_retries_total{" not in metrics
    assert 'kind="http_400"' not in metrics  # not an upstream failure: no alert's numerator
    status, _, raw = await post(cg, body)
    assert status == 200, raw


@pytest.mark.parametrize(
    ("kind", "status", "error_type", "sentence"),
    [
        ("file_not_found", 404, "not_found_error", "File not found: file_011"),
        ("not_found", 503, "overloaded_error", "does not serve this model"),
    ],
)
async def test_a_native_404_is_the_clients_unless_it_is_the_model(
    cg: ClientGateway, kind: str, status: int, error_type: str, sentence: str
) -> None:
    """Natively, the client's body goes as it came: a 404 about a file it named is its own
    404, while a 404 about the model (which the config chose) is the deployment's."""
    cg.anthropic.scenario = Scenario(kind=kind)
    body = {"model": CLAUDE_MODEL, "max_tokens": 10, "messages": HELLO}
    got, _, raw = await post(cg, body)
    assert got == status, raw
    assert sentence in error_of(got, raw, error_type)


@pytest.mark.parametrize(("max_uses", "calls"), [(None, 1), (3, 3)])
async def test_server_tools_are_held_for(
    cg: ClientGateway, max_uses: int | None, calls: int
) -> None:
    """A server tool's results are billed as input by Anthropic, unseen by the prompt's
    estimate: each call it may make (`max_uses`, else one) holds BUILTIN_TOOL_RESERVE more."""
    accounts = cg.gateway.app[ACCOUNTS]
    limit = calls * BUILTIN_TOOL_RESERVE
    account = await accounts.create_account(
        {"tier": "free", "developer": True, "monthly_token_limit": limit}
    )
    key = (await accounts.create_key(account["id"], "small"))["key"]
    body: dict[str, Any] = {"model": CLAUDE_MODEL, "max_tokens": 100, "messages": HELLO}
    status, _, raw = await post(cg, body, key=key)
    assert status == 200, raw
    tool: dict[str, Any] = {"type": "web_search_20250305", "name": "web_search"}
    if max_uses is not None:
        tool["max_uses"] = max_uses
        body["tools"] = [dict(tool, max_uses=max_uses - 1)]
        status, _, raw = await post(cg, body, key=key)
        assert status == 200, raw  # one call fewer fits
    body["tools"] = [tool]
    status, _, raw = await post(cg, body, key=key)
    assert status == 429, raw
    assert error_of(status, raw, "rate_limit_error").startswith("Monthly token limit")


@pytest.mark.parametrize("model", [UNKNOWN_MODEL, "gpt-5"])
@pytest.mark.parametrize("profile", ["v1", "woozlit"])
async def test_an_unknown_model_is_a_404(cg: ClientGateway, profile: str, model: str) -> None:
    """As Anthropic answers it: a 404 `not_found_error`, for a woozlit/ name that is no model
    and for a name that is neither one nor an alias (Claude Code then names the model as the
    problem, where a 400 had it retry once without each of its betas first)."""
    body = {"model": model, "max_tokens": 10, "messages": HELLO}
    status, headers, raw = await post(cg, body, profile=profile)
    assert status == 404
    assert model in error_of(status, raw, "not_found_error")
    assert "x-ratelimit-remaining-requests" in headers
    status, _, raw = await post(cg, {**body, "model": 7}, profile=profile)
    assert status == 400  # not a name at all
    assert "model" in error_of(status, raw, "invalid_request_error")


async def test_an_empty_x_api_key_leaves_the_key_to_authorization(cg: ClientGateway) -> None:
    body = {"model": CLAUDE_MODEL, "max_tokens": 10, "messages": HELLO}
    headers = {"x-api-key": "", "Authorization": f"Bearer {cg.key}"}
    status, _, raw = await post(cg, body, auth="bearer", headers=headers)
    assert status == 200, raw
