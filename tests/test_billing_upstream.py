"""The billing fake itself, driven directly over loopback (no gateway in between).

What accounting tests lean on: caps honoured per choice in every wire format, `n` and
`candidateCount` multiplying the bill, no cap meaning the scenario's length, greedy and lying
providers, stream framing exact to the byte, usage only where the real API sends it, and a
long stream whose client leaves early stopping early without being built in memory.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import eventually
from tests.fakes.billing_upstream import (
    BOTH_CAPS,
    TOKEN,
    BillingRecord,
    BillingUpstream,
    billing_upstream_fixture,  # noqa: F401 (the fixture `billing_upstream`)
    start_billing_upstream,
)

PROVIDERS = ("openai", "anthropic", "gemini")
USER_TEXT = "How many tokens is this?"  # 24 characters: 6 tokens


@dataclass
class Answer:
    """One answer, whichever the format: each choice's text and finish, the usage reported."""

    status: int
    texts: dict[int, str]
    finish: dict[int, str]
    prompt: int | None = None
    completion: int | None = None
    total: int | None = None
    events: list[dict[str, Any]] | None = None  # a stream's payloads, in order


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def request_for(
    upstream: BillingUpstream,
    provider: str,
    model: str,
    *,
    cap: int | None = None,
    n: int = 1,
    stream: bool = False,
    include_usage: bool = True,
) -> tuple[str, dict[str, Any]]:
    """The URL and body the gateway would send for one user message."""
    if provider == "openai":
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": USER_TEXT}],
            "n": n,
        }
        if cap is not None:
            body["max_completion_tokens"] = cap
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": include_usage}
        return upstream.openai_base_url + "/chat/completions", body
    if provider == "anthropic":
        assert n == 1, "Anthropic answers once"
        body = {"model": model, "messages": [{"role": "user", "content": USER_TEXT}]}
        if cap is not None:
            body["max_tokens"] = cap
        if stream:
            body["stream"] = True
        return upstream.anthropic_base_url + "/v1/messages", body
    config: dict[str, Any] = {"candidateCount": n}
    if cap is not None:
        config["maxOutputTokens"] = cap
    body = {"contents": [{"role": "user", "parts": [{"text": USER_TEXT}]}]}
    body["generationConfig"] = config
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"{upstream.gemini_base_url}/v1beta/models/{model}:{method}", body


def frames(raw: bytes, separator: bytes) -> list[list[bytes]]:
    """The lines of each SSE event, insisting on exact framing: every event ends `separator`."""
    assert raw.endswith(separator), raw[-80:]
    events = raw[: -len(separator)].split(separator)
    line_end = separator[: len(separator) // 2]
    return [event.split(line_end) for event in events]


def parse_stream(provider: str, raw: bytes) -> Answer:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    answer = Answer(200, texts, finish, events=[])
    assert answer.events is not None
    if provider == "openai":
        events = frames(raw, b"\n\n")
        assert events[-1] == [b"data: [DONE]"]
        for lines in events[:-1]:
            assert len(lines) == 1 and lines[0].startswith(b"data: ")
            chunk = orjson.loads(lines[0][6:])
            answer.events.append(chunk)
            assert chunk["object"] == "chat.completion.chunk"
            if not chunk["choices"]:
                usage = chunk["usage"]
                answer.prompt, answer.completion = (
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                )
                answer.total = usage["total_tokens"]
            for choice in chunk["choices"]:
                assert len(chunk["choices"]) == 1  # one choice a chunk, as OpenAI streams n > 1
                index = choice["index"]
                texts[index] = texts.get(index, "") + (choice["delta"].get("content") or "")
                if choice["finish_reason"]:
                    finish[index] = choice["finish_reason"]
        return answer
    if provider == "anthropic":
        for lines in frames(raw, b"\n\n"):
            assert len(lines) == 2 and lines[0].startswith(b"event: ")
            assert lines[1].startswith(b"data: ")
            event = orjson.loads(lines[1][6:])
            assert lines[0][7:].decode() == event["type"]
            answer.events.append(event)
            if event["type"] == "message_start":
                answer.prompt = event["message"]["usage"]["input_tokens"]
            if event["type"] == "content_block_delta":
                texts[0] = texts.get(0, "") + event["delta"]["text"]
            if event["type"] == "message_delta":
                answer.completion = event["usage"]["output_tokens"]
                finish[0] = event["delta"]["stop_reason"]
        return answer
    for lines in frames(raw, b"\r\n\r\n"):
        assert len(lines) == 1 and lines[0].startswith(b"data: ")
        chunk = orjson.loads(lines[0][6:])
        answer.events.append(chunk)
        _gemini_into(answer, chunk)
    return answer


def _gemini_into(answer: Answer, chunk: dict[str, Any]) -> None:
    for candidate in chunk["candidates"]:
        index = candidate.get("index", 0)
        text = "".join(part["text"] for part in candidate["content"]["parts"])
        answer.texts[index] = answer.texts.get(index, "") + text
        if "finishReason" in candidate:
            answer.finish[index] = candidate["finishReason"]
    usage = chunk["usageMetadata"]
    answer.prompt = usage["promptTokenCount"]
    answer.completion = usage["candidatesTokenCount"]
    answer.total = usage["totalTokenCount"]


def parse_answer(provider: str, body: dict[str, Any]) -> Answer:
    if provider == "openai":
        assert body["object"] == "chat.completion"
        usage = body["usage"]
        return Answer(
            200,
            {c["index"]: c["message"]["content"] for c in body["choices"]},
            {c["index"]: c["finish_reason"] for c in body["choices"]},
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["total_tokens"],
        )
    if provider == "anthropic":
        assert body["type"] == "message"
        usage = body["usage"]
        text = "".join(block["text"] for block in body["content"])
        return Answer(
            200, {0: text}, {0: body["stop_reason"]}, usage["input_tokens"], usage["output_tokens"]
        )
    answer = Answer(200, {}, {})
    _gemini_into(answer, body)
    return answer


async def ask(
    session: aiohttp.ClientSession,
    upstream: BillingUpstream,
    provider: str,
    model: str,
    **options: Any,
) -> Answer:
    url, body = request_for(upstream, provider, model, **options)
    async with session.post(url, json=body) as resp:
        raw = await resp.read()
        if resp.status != 200:
            return Answer(resp.status, {}, {}, events=[orjson.loads(raw)])
        if options.get("stream"):
            return parse_stream(provider, raw)
        return parse_answer(provider, orjson.loads(raw))


CUT = {"openai": "length", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}
DONE = {"openai": "stop", "anthropic": "end_turn", "gemini": "STOP"}
CHOICES = {"openai": 3, "anthropic": 1, "gemini": 3}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_cap_holds_per_choice_and_choices_multiply_the_bill(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession, provider: str, stream: bool
) -> None:
    n = CHOICES[provider]
    answer = await ask(
        session, billing_upstream, provider, "answer-20000", cap=120, n=n, stream=stream
    )

    assert answer.texts == {i: TOKEN * 120 for i in range(n)}
    assert answer.finish == {i: CUT[provider] for i in range(n)}
    assert answer.completion == 120 * n
    billed = billing_upstream.record.last
    assert (billed.provider, billed.stream, billed.status) == (provider, stream, 200)
    assert (billed.cap_sent, billed.cap, billed.cut, billed.n) == (120, 120, True, n)
    assert (billed.produced, billed.completion_tokens, billed.tokens_sent) == (
        120,
        120 * n,
        120 * n,
    )
    assert (billed.finished, billed.left_early) == (True, False)
    assert answer.prompt == billed.prompt_tokens == math.ceil(len(USER_TEXT) / 4)
    assert billed.total_tokens == billed.prompt_tokens + 120 * n
    if answer.total is not None:
        assert answer.total == billed.total_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_without_a_cap_each_choice_runs_to_the_scenario_length(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession, provider: str, stream: bool
) -> None:
    answer = await ask(session, billing_upstream, provider, "answer-20000", n=2, stream=stream)

    assert answer.texts == {0: TOKEN * 20000, 1: TOKEN * 20000}
    assert answer.finish == {0: DONE[provider], 1: DONE[provider]}
    assert answer.completion == 40000
    assert billing_upstream.record.last.cap is None


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_answer_shorter_than_the_cap_stops_by_itself(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession, provider: str
) -> None:
    answer = await ask(session, billing_upstream, provider, "answer-30", cap=100, stream=True)

    assert answer.texts == {0: TOKEN * 30}
    assert (answer.finish, answer.completion) == ({0: DONE[provider]}, 30)
    assert billing_upstream.record.last.cut is False


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_greedy_bills_past_the_cap(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession, provider: str
) -> None:
    n = CHOICES[provider]
    answer = await ask(session, billing_upstream, provider, "greedy-500", cap=100, n=n, stream=True)

    assert answer.texts == {i: TOKEN * 500 for i in range(n)}
    assert answer.finish == {i: DONE[provider] for i in range(n)}
    assert answer.completion == 500 * n
    billed = billing_upstream.record.last
    assert (billed.cap_sent, billed.cap, billed.tokens_sent) == (100, None, 500 * n)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_lying_honours_the_cap_and_reports_more_than_it_produced(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession, provider: str, stream: bool
) -> None:
    n = CHOICES[provider]
    capped = await ask(session, billing_upstream, provider, "lying-77", cap=40, n=n, stream=stream)
    roomy = 5000 if provider == "anthropic" else None  # Anthropic requires a cap
    uncapped = await ask(session, billing_upstream, provider, "lying-77", cap=roomy, stream=stream)

    assert capped.texts == {i: TOKEN * 40 for i in range(n)}
    assert capped.finish == {i: CUT[provider] for i in range(n)}
    assert capped.completion == 40 * n + 77
    wants = billing_upstream.record.lying_tokens
    assert uncapped.texts == {0: TOKEN * wants}
    assert uncapped.completion == wants + 77
    first, second = billing_upstream.record.requests
    assert (first.cap, first.tokens_sent, first.completion_tokens) == (40, 40 * n, 40 * n + 77)
    assert (second.cap, second.cut, second.tokens_sent) == (roomy, False, wants)


async def test_openai_refuses_both_caps_at_once_as_openai_does(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession
) -> None:
    url, body = request_for(billing_upstream, "openai", "answer-100", cap=10)
    async with session.post(url, json={**body, "max_tokens": 20}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error == {
        "message": BOTH_CAPS,
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid_parameter_combination",
    }
    billed = billing_upstream.record.last
    assert (billed.status, billed.completion_tokens, billed.tokens_sent) == (400, 0, 0)

    # One of them alone is the cap, the older `max_tokens` included.
    del body["max_completion_tokens"]
    async with session.post(url, json={**body, "max_tokens": 20}) as resp:
        answer = parse_answer("openai", await resp.json())
    assert (answer.texts, answer.finish, answer.completion) == ({0: TOKEN * 20}, {0: "length"}, 20)


async def test_anthropic_requires_max_tokens(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession
) -> None:
    answer = await ask(session, billing_upstream, "anthropic", "answer-100")

    assert answer.status == 400
    assert answer.events == [
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
            "request_id": "req_billingerror",
        }
    ]
    assert billing_upstream.record.last.status == 400


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_unknown_model_is_refused_in_the_provider_s_shape(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession, provider: str
) -> None:
    answer = await ask(session, billing_upstream, provider, "gpt-4o", cap=10)

    assert answer.status == 404
    assert answer.events is not None and "error" in answer.events[0]


@pytest.mark.parametrize("include_usage", [True, False])
async def test_openai_usage_chunk_only_with_include_usage(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession, include_usage: bool
) -> None:
    answer = await ask(
        session,
        billing_upstream,
        "openai",
        "answer-120",
        n=2,
        stream=True,
        include_usage=include_usage,
    )

    assert answer.events is not None
    *chunks, last = answer.events
    assert all(chunk["choices"] for chunk in chunks)
    if include_usage:
        assert all(chunk["usage"] is None for chunk in chunks)
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 240
        assert answer.completion == 240
    else:
        assert all("usage" not in chunk for chunk in answer.events)
        assert answer.completion is None
    # Each choice opens with its role and ends with its finish reason, by index.
    firsts = [c["choices"][0] for c in chunks[:2]]
    assert [(c["index"], c["delta"]["role"]) for c in firsts] == [
        (0, "assistant"),
        (1, "assistant"),
    ]
    assert answer.texts == {0: TOKEN * 120, 1: TOKEN * 120}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streams_carry_chunk_tokens_per_event(
    session: aiohttp.ClientSession, provider: str
) -> None:
    upstream = await start_billing_upstream(BillingRecord(chunk_tokens=7))
    try:
        answer = await ask(session, upstream, provider, "answer-30", cap=1000, stream=True)
    finally:
        await upstream.close()

    assert answer.events is not None
    if provider == "openai":
        pieces = [c["choices"][0]["delta"].get("content") for c in answer.events if c["choices"]]
    elif provider == "anthropic":
        pieces = [e["delta"]["text"] for e in answer.events if e["type"] == "content_block_delta"]
    else:
        pieces = [c["candidates"][0]["content"]["parts"][0]["text"] for c in answer.events]
    assert [p.count(TOKEN) for p in pieces if p] == [7, 7, 7, 7, 2]


async def test_anthropic_stream_reports_as_anthropic_does(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession
) -> None:
    answer = await ask(session, billing_upstream, "anthropic", "answer-900", cap=120, stream=True)

    assert answer.events is not None
    kinds = [event["type"] for event in answer.events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    usage = answer.events[0]["message"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (6, 1)
    assert answer.events[-2]["usage"] == {"output_tokens": 120}
    assert answer.events[-2]["delta"]["stop_reason"] == "max_tokens"


async def test_gemini_stream_usage_is_cumulative_and_the_body_just_ends(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession
) -> None:
    answer = await ask(session, billing_upstream, "gemini", "lying-5", cap=120, n=2, stream=True)

    assert answer.events is not None
    counts = [c["usageMetadata"]["candidatesTokenCount"] for c in answer.events]
    assert counts == [100, 200, 240 + 5]  # 50 tokens per candidate per event; the lie at the end
    totals = [c["usageMetadata"]["totalTokenCount"] for c in answer.events]
    assert totals == [6 + count for count in counts]
    assert all("finishReason" not in c for e in answer.events[:-1] for c in e["candidates"])
    assert [c.get("index", 0) for c in answer.events[0]["candidates"]] == [0, 1]
    assert "index" not in answer.events[0]["candidates"][0]  # proto3 JSON leaves out zero


async def test_gemini_stream_without_alt_sse_is_a_json_array(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession
) -> None:
    url, body = request_for(billing_upstream, "gemini", "answer-120", stream=True)
    async with session.post(url.removesuffix("?alt=sse"), json=body) as resp:
        chunks = orjson.loads(await resp.read())

    assert isinstance(chunks, list) and len(chunks) == 3
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 120
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_prompt_tokens_are_the_text_of_the_messages_over_four(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession
) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Call the tool."}]},
        {
            "role": "assistant",
            "content": "Calling.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny and warm"},
    ]
    chars = len("You are terse.Call the tool.Calling.sunny and warm")
    url = billing_upstream.openai_base_url + "/chat/completions"
    await session.post(url, json={"model": "answer-1", "messages": messages})
    anthropic = {
        "model": "answer-1",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {"role": "user", "content": "Call the tool."},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Calling."},
                    {"type": "tool_use", "id": "c1", "name": "f", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "c1", "content": "sunny and warm"}
                ],
            },
        ],
    }
    await session.post(billing_upstream.anthropic_base_url + "/v1/messages", json=anthropic)
    gemini = {
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Call the tool."}]},
            {"role": "model", "parts": [{"text": "Calling."}, {"text": "sunny and warm"}]},
        ],
    }
    url = billing_upstream.gemini_base_url + "/v1beta/models/answer-1:generateContent"
    await session.post(url, json=gemini)

    # Only text, so never above the gateway's estimate, which counts text and more.
    reported = [billed.prompt_tokens for billed in billing_upstream.record.requests]
    assert reported == [math.ceil(chars / 4)] * 3

    billing_upstream.record.prompt_tokens = 12345
    answer = await ask(session, billing_upstream, "gemini", "answer-1")
    assert answer.prompt == 12345


async def read_and_leave(
    session: aiohttp.ClientSession, upstream: BillingUpstream, url: str, body: dict[str, Any]
) -> bytes:
    """Read the first 4 KB of a stream, close, and wait until the fake has seen it go."""
    async with session.post(url, json=body) as resp:
        head = await resp.content.read(4096)
        resp.close()
    billed = upstream.record.last
    await eventually(lambda: billed.left_early, seconds=5)
    return head


async def test_a_client_that_leaves_early_stops_a_long_stream_early(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession
) -> None:
    url, body = request_for(billing_upstream, "openai", "answer-100000", stream=True)
    tracemalloc.start()
    try:
        head = await read_and_leave(session, billing_upstream, url, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert head.startswith(b"data: {")
    billed = billing_upstream.record.last
    assert billed.finished is False
    assert 0 < billed.tokens_sent < 50_000  # what the buffers of both ends hold, of 100,000
    assert billed.completion_tokens == 100_000  # what the end would have reported
    # The whole stream is 400 kB of text and some 860 kB on the wire: built at once, it would
    # pass 1.2 MB here. Made event by event, what is held is the buffers of both ends.
    assert peak < 800_000


async def test_the_same_stream_read_to_the_end_finishes(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession
) -> None:
    answer = await ask(session, billing_upstream, "openai", "answer-100000", stream=True)

    assert answer.completion == 100_000
    billed = billing_upstream.record.last
    assert (billed.finished, billed.left_early, billed.tokens_sent) == (True, False, 100_000)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_stream_left_mid_way_is_recorded_in_every_format(
    billing_upstream: BillingUpstream, session: aiohttp.ClientSession, provider: str
) -> None:
    url, body = request_for(billing_upstream, provider, "answer-100000", cap=100_000, stream=True)
    await read_and_leave(session, billing_upstream, url, body)

    billed = billing_upstream.record.last
    assert (billed.finished, billed.left_early) == (False, True)
    assert 0 < billed.tokens_sent < 50_000
