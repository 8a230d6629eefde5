"""A fake upstream that bills like the real providers, for accounting tests.

One app speaks all three wire formats the gateway calls:

    POST /v1/chat/completions, /chat/completions              OpenAI chat completions
    POST /v1/messages                                         Anthropic Messages
    POST /v1beta/models/{model}:generateContent               Gemini (also under /v1/models)
    POST /v1beta/models/{model}:streamGenerateContent?alt=sse

Theory: what a request costs is decided up front from its model name, its output cap and
its number of choices, exactly as the provider's API reference says the real service bills:

- OpenAI (platform.openai.com/docs/api-reference/chat/create): `max_completion_tokens`, or
  the older `max_tokens`, caps each of the `n` choices (default 1); "you will be charged
  based on the number of generated tokens across all of the choices", so
  `usage.completion_tokens` is the sum over choices. Both caps at once are refused with
  the 400 the real service answers (`invalid_parameter_combination`, seen in
  langchain-ai/langgraph#5943). A choice cut by the cap finishes with "length", else "stop".
  In a stream every chunk carries one choice, by `index`; only with
  `stream_options.include_usage` does every chunk carry `"usage": null` and a last chunk
  `{"choices": [], "usage": {...}}` come before `data: [DONE]`.
- Anthropic (docs.anthropic.com/en/api/messages and the streaming guide,
  docs.anthropic.com/en/docs/build-with-claude/streaming): `max_tokens` is required (400
  "max_tokens: Field required"), one answer, `usage.input_tokens` and `output_tokens`;
  `stop_reason` "max_tokens" when the cap cut it, else "end_turn". The stream reports
  `output_tokens: 1` in `message_start` and the cumulative count in `message_delta`
  ("the token counts in the usage field of the message_delta event are cumulative").
- Gemini (ai.google.dev/api/generate-content): `generationConfig.maxOutputTokens` caps each
  of `candidateCount` candidates; `usageMetadata.candidatesTokenCount` is the "total number
  of tokens across all the generated response candidates", `totalTokenCount` adds
  `promptTokenCount`; `finishReason` MAX_TOKENS or STOP. Stream chunks carry the usage so
  far (cumulative), and the body just ends. Without `alt=sse` the stream is a JSON array.

The upstream model name picks the behaviour (anything else is a 404 in the provider's shape):

    answer-N   each choice wants N completion tokens and stops at the cap
    greedy-N   ignores every cap: N tokens per choice (a provider that bills past the cap)
    lying-N    honours the cap, answering `record.lying_tokens` (default 1,000) tokens per
               choice, but reports N more completion tokens in all than it produced

Every token is the text "tok " (4 characters), so the gateway's own estimate of produced text
(4 characters a token) equals the real count. Prompt tokens reported are
`record.prompt_tokens` if set, else ceil(characters of text content / 4): system and
developer, user, assistant, tool results; Anthropic `system` and text blocks; Gemini text
parts. The gateway's estimate counts at least this text and adds framing, so it is never
lower.

Streams send `record.chunk_tokens` tokens per event (per candidate, in Gemini's) as fast as
the client reads: events are made one at a time and written with `await resp.write(...)`,
which waits when the socket's buffers are full, so a 100,000-token stream is never held in
memory and a client that reads a little and leaves stops it early. Each connection's send
buffer is `record.send_buffer` bytes (and the event loop holds at most 16 KiB more), so little
is on the way when the client goes: with a client that reads a few KB of a 100,000-token
stream and closes, about 20,000 to 30,000 tokens are written (the buffers of both ends).
Each request is kept in `record.requests` (a `Billed`), in order: what it asked, what it was
billed, how many completion tokens were written before the end or the client going away.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

TOKEN = "tok "
CREATED = 1700000000
SCENARIO = re.compile(r"(answer|greedy|lying)-(\d+)")
WRITE_BUFFER_HIGH = 16384  # bytes the event loop holds for a connection before `write` waits
BOTH_CAPS = "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported."

Provider = Literal["openai", "anthropic", "gemini"]
Event = tuple[bytes, int]  # the bytes of one write, and the completion tokens in them


@dataclass
class Billed:
    """One request as the fake saw it, and what it billed."""

    provider: Provider
    body: dict[str, Any]  # the parsed request body
    stream: bool = False
    status: int = 200
    cap_sent: int | None = None  # the cap the request carried
    cap: int | None = None  # the cap the fake obeyed: None when none was sent, or greedy-N
    cut: bool = False  # the cap stopped the answer (finish "length", MAX_TOKENS...)
    n: int = 1  # choices (OpenAI `n`, Gemini `candidateCount`)
    produced: int = 0  # completion tokens each choice produces
    prompt_tokens: int = 0  # reported
    completion_tokens: int = 0  # reported (for a stream left early: what its end would say)
    tokens_sent: int = 0  # completion tokens written before the end or the client leaving
    finished: bool = False  # the whole answer was written
    left_early: bool = False  # the client went away first

    @property
    def total_tokens(self) -> int:
        """The total reported: prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens


@dataclass
class BillingRecord:
    """The fake's settings, and every request it has seen, in order."""

    requests: list[Billed] = field(default_factory=list)
    prompt_tokens: int | None = None  # report this many prompt tokens instead of counting
    chunk_tokens: int = 50  # completion tokens per stream event
    lying_tokens: int = 1_000  # tokens per choice a lying-N answer wants
    send_buffer: int | None = 65536  # SO_SNDBUF of each connection; None: the defaults

    @property
    def last(self) -> Billed:
        return self.requests[-1]


@dataclass
class BillingUpstream:
    """A running fake: its server, its record, and the base_url for each provider kind."""

    server: TestServer
    record: BillingRecord

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def gemini_base_url(self) -> str:
        return self.url

    async def close(self) -> None:
        await self.server.close()


async def start_billing_upstream(record: BillingRecord | None = None) -> BillingUpstream:
    """Start the fake on a free loopback port; the caller closes it."""
    record = record if record is not None else BillingRecord()
    server = TestServer(create_billing_upstream(record))
    await server.start_server()
    return BillingUpstream(server, record)


@pytest.fixture(name="billing_upstream")
async def billing_upstream_fixture() -> AsyncIterator[BillingUpstream]:
    """The fixture `billing_upstream`: a running fake for one test.

    Import it into a test module (`from tests.fakes.billing_upstream import
    billing_upstream_fixture  # noqa: F401`); the name differs so that ruff sees no
    redefinition in the tests that take `billing_upstream`.
    """
    upstream = await start_billing_upstream()
    yield upstream
    await upstream.close()


def create_billing_upstream(record: BillingRecord) -> web.Application:
    """The fake as an app, recording into `record`."""
    app = web.Application(client_max_size=16 << 20)  # real APIs take bodies of many MiB

    async def openai(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        billed = _start(record, "openai", body)
        refusal = _openai_refusal(body)
        if refusal is not None:
            return _openai_error(billed, 400, *refusal)
        cap = body.get("max_completion_tokens")
        cap = body.get("max_tokens") if cap is None else cap
        n = body.get("n") or 1
        scenario = _scenario(body.get("model"))
        if scenario is None:
            message = (
                f"The model `{body.get('model')}` does not exist or you do not have access to it."
            )
            return _openai_error(billed, 404, message, None, "model_not_found")
        chars = sum(_text_chars(m.get("content")) for m in _dicts(body.get("messages")))
        _bill(record, billed, scenario, cap, n, chars)
        if not billed.stream:
            return await _send(request, billed, [_openai_answer(billed)], "application/json")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = _openai_events(billed, record.chunk_tokens, include_usage)
        return await _send(request, billed, events, "text/event-stream")

    async def anthropic(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        billed = _start(record, "anthropic", body)
        cap = body.get("max_tokens")
        if not isinstance(cap, int) or isinstance(cap, bool):
            message = "max_tokens: Field required"
            return _anthropic_error(billed, 400, "invalid_request_error", message)
        if cap < 1:
            message = "max_tokens: Input should be greater than or equal to 1"
            return _anthropic_error(billed, 400, "invalid_request_error", message)
        scenario = _scenario(body.get("model"))
        if scenario is None:
            return _anthropic_error(billed, 404, "not_found_error", f"model: {body.get('model')}")
        chars = _text_chars(body.get("system"))
        chars += sum(_text_chars(m.get("content")) for m in _dicts(body.get("messages")))
        _bill(record, billed, scenario, cap, 1, chars)
        message_id = f"msg_billing{len(record.requests):04d}"
        if not billed.stream:
            answer = _anthropic_answer(billed, message_id)
            return await _send(request, billed, [answer], "application/json")
        events = _anthropic_events(billed, message_id, record.chunk_tokens)
        return await _send(request, billed, events, "text/event-stream; charset=utf-8")

    async def gemini(request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        body = await _body(request)
        billed = _start(record, "gemini", body)
        billed.stream = method == "streamGenerateContent"
        if method not in ("generateContent", "streamGenerateContent"):
            return _gemini_error(billed, 404, "NOT_FOUND", f"Method {method!r} not found.")
        config = body.get("generationConfig") or {}
        cap, n = config.get("maxOutputTokens"), config.get("candidateCount", 1)
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            message = "* GenerateContentRequest.generation_config.max_output_tokens: must be > 0"
            return _gemini_error(billed, 400, "INVALID_ARGUMENT", message)
        if not isinstance(n, int) or not 1 <= n <= 8:
            message = "* GenerateContentRequest.generation_config.candidate_count: must be 1..8"
            return _gemini_error(billed, 400, "INVALID_ARGUMENT", message)
        scenario = _scenario(model)
        if scenario is None:
            message = f"models/{model} is not found for API version v1beta."
            return _gemini_error(billed, 404, "NOT_FOUND", message)
        chars = _text_chars((body.get("systemInstruction") or {}).get("parts"))
        chars += sum(_text_chars(c.get("parts")) for c in _dicts(body.get("contents")))
        _bill(record, billed, scenario, cap, n, chars)
        if not billed.stream:
            answer = _gemini_answer(billed, model)
            return await _send(request, billed, [answer], "application/json")
        chunks = _gemini_chunks(billed, model, record.chunk_tokens)
        if request.query.get("alt") == "sse":
            sse = ((b"data: " + data + b"\r\n\r\n", tokens) for data, tokens in chunks)
            return await _send(request, billed, sse, "text/event-stream")
        return await _send(request, billed, _json_array(chunks), "application/json")

    async def small_buffers(request: web.Request, response: web.StreamResponse) -> None:
        # Loopback autotunes its buffers to MiBs, which would swallow a whole long stream
        # before a client that reads little has gone; a real provider's far end holds less.
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if record.send_buffer is None or transport is None or sock is None:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, record.send_buffer)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    app.on_response_prepare.append(small_buffers)
    app.router.add_post("/v1/chat/completions", openai)
    app.router.add_post("/chat/completions", openai)
    app.router.add_post("/v1/messages", anthropic)
    app.router.add_post("/v1beta/models/{target}", gemini)
    app.router.add_post("/v1/models/{target}", gemini)
    return app


# -- billing ----------------------------------------------------------------------------------


def _scenario(model: Any) -> tuple[str, int] | None:
    match = SCENARIO.fullmatch(model) if isinstance(model, str) else None
    return (match[1], int(match[2])) if match else None


def _start(record: BillingRecord, provider: Provider, body: dict[str, Any]) -> Billed:
    billed = Billed(provider, body, stream=body.get("stream") is True)
    record.requests.append(billed)
    return billed


def _bill(
    record: BillingRecord,
    billed: Billed,
    scenario: tuple[str, int],
    cap: int | None,
    n: int,
    prompt_chars: int,
) -> None:
    kind, number = scenario
    wants = record.lying_tokens if kind == "lying" else number
    billed.cap_sent, billed.n = cap, n
    billed.cap = None if kind == "greedy" else cap
    billed.cut = billed.cap is not None and wants > billed.cap
    billed.produced = wants if billed.cap is None else min(wants, billed.cap)
    billed.prompt_tokens = (
        record.prompt_tokens if record.prompt_tokens is not None else math.ceil(prompt_chars / 4)
    )
    billed.completion_tokens = billed.produced * n + (number if kind == "lying" else 0)


def _text_chars(content: Any) -> int:
    """Characters of text in a content: a string, or parts and blocks that carry `text`."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_text_chars(part) for part in content)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return len(content["text"])
        if content.get("type") == "tool_result":
            return _text_chars(content.get("content"))
    return 0


def _dicts(items: Any) -> list[dict[str, Any]]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _pieces(tokens: int, size: int) -> Iterator[int]:
    """Token counts of the stream events for one choice of `tokens` tokens."""
    for start in range(0, tokens, size):
        yield min(size, tokens - start)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="The body is not a JSON object.")
    return body


async def _send(
    request: web.Request, billed: Billed, events: Iterator[Event] | list[Event], content_type: str
) -> web.StreamResponse:
    """Write the events one by one, counting tokens out, until the end or the client leaves."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    if isinstance(events, list) and len(events) == 1:
        response.content_length = len(events[0][0])
    try:
        await response.prepare(request)
        for data, tokens in events:
            await response.write(data)
            billed.tokens_sent += tokens
        await response.write_eof()
    except ConnectionError:
        billed.left_early = True
        return response
    except asyncio.CancelledError:
        billed.left_early = True
        raise
    billed.finished = True
    return response


def _error(billed: Billed, status: int, body: dict[str, Any]) -> web.Response:
    billed.status = status
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


# -- OpenAI ------------------------------------------------------------------------------------


def _openai_error(
    billed: Billed, status: int, message: str, param: str | None, code: str | None
) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return _error(billed, status, {"error": error})


def _openai_refusal(body: dict[str, Any]) -> tuple[str, str, str] | None:
    """The 400 the real service answers to these caps and `n`: message, param, code."""
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is not None:
        return BOTH_CAPS, "max_tokens", "invalid_parameter_combination"
    for param, high in (("max_completion_tokens", None), ("max_tokens", None), ("n", 128)):
        value = body.get(param)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            message = f"Invalid '{param}': expected an integer >= 1, but got {value!r} instead."
            return message, param, "invalid_value"
        if high is not None and value > high:
            message = f"Invalid '{param}': expected a value <= {high}, but got {value} instead."
            return message, param, "integer_above_max_value"
    return None


def _openai_usage(billed: Billed) -> dict[str, Any]:
    return {
        "prompt_tokens": billed.prompt_tokens,
        "completion_tokens": billed.completion_tokens,
        "total_tokens": billed.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _openai_base(billed: Billed, kind: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-billing",
        "object": kind,
        "created": CREATED,
        "model": billed.body.get("model"),
        "system_fingerprint": "fp_billing",
    }


def _openai_answer(billed: Billed) -> Event:
    reason = "length" if billed.cut else "stop"
    message = {"role": "assistant", "content": TOKEN * billed.produced, "refusal": None}
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": reason}
        for i in range(billed.n)
    ]
    answer = {
        **_openai_base(billed, "chat.completion"),
        "choices": choices,
        "usage": _openai_usage(billed),
    }
    return orjson.dumps(answer), billed.produced * billed.n


def _openai_events(billed: Billed, size: int, include_usage: bool) -> Iterator[Event]:
    base = _openai_base(billed, "chat.completion.chunk")
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    for i in range(billed.n):
        yield chunk(i, {"role": "assistant", "content": "", "refusal": None}), 0
    for tokens in _pieces(billed.produced, size):
        text = TOKEN * tokens
        for i in range(billed.n):
            yield chunk(i, {"content": text}), tokens
    for i in range(billed.n):
        yield chunk(i, {}, "length" if billed.cut else "stop"), 0
    if include_usage:
        usage_chunk = {**base, "choices": [], "usage": _openai_usage(billed)}
        yield b"data: " + orjson.dumps(usage_chunk) + b"\n\n", 0
    yield b"data: [DONE]\n\n", 0


# -- Anthropic ---------------------------------------------------------------------------------


def _anthropic_error(billed: Billed, status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return _error(billed, status, {**body, "request_id": "req_billingerror"})


def _anthropic_message(billed: Billed, message_id: str, output_tokens: int) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": billed.body.get("model"),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": billed.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        },
    }


def _anthropic_answer(billed: Billed, message_id: str) -> Event:
    answer = _anthropic_message(billed, message_id, billed.completion_tokens)
    answer["content"] = [{"type": "text", "text": TOKEN * billed.produced}]
    answer["stop_reason"] = "max_tokens" if billed.cut else "end_turn"
    return orjson.dumps(answer), billed.produced


def _anthropic_events(billed: Billed, message_id: str, size: int) -> Iterator[Event]:
    def event(data: dict[str, Any]) -> bytes:
        return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    message = _anthropic_message(billed, message_id, 1)
    yield event({"type": "message_start", "message": message}), 0
    block = {"type": "text", "text": ""}
    yield event({"type": "content_block_start", "index": 0, "content_block": block}), 0
    yield event({"type": "ping"}), 0
    for tokens in _pieces(billed.produced, size):
        delta = {"type": "text_delta", "text": TOKEN * tokens}
        yield event({"type": "content_block_delta", "index": 0, "delta": delta}), tokens
    yield event({"type": "content_block_stop", "index": 0}), 0
    stop = {"stop_reason": "max_tokens" if billed.cut else "end_turn", "stop_sequence": None}
    usage = {"output_tokens": billed.completion_tokens}
    yield event({"type": "message_delta", "delta": stop, "usage": usage}), 0
    yield event({"type": "message_stop"}), 0


# -- Gemini ------------------------------------------------------------------------------------


def _gemini_error(billed: Billed, status: int, google: str, message: str) -> web.Response:
    return _error(billed, status, {"error": {"code": status, "message": message, "status": google}})


def _gemini_response(
    billed: Billed, model: str, text: str, last: bool, candidates_tokens: int
) -> dict[str, Any]:
    candidates = []
    for i in range(billed.n):
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
        if last:
            candidate["finishReason"] = "MAX_TOKENS" if billed.cut else "STOP"
        if i:
            candidate["index"] = i  # proto3 JSON leaves out a zero index, as Google does
        candidates.append(candidate)
    return {
        "candidates": candidates,
        "usageMetadata": {
            "promptTokenCount": billed.prompt_tokens,
            "candidatesTokenCount": candidates_tokens,
            "totalTokenCount": billed.prompt_tokens + candidates_tokens,
        },
        "modelVersion": model,
        "responseId": "billing-response",
    }


def _gemini_answer(billed: Billed, model: str) -> Event:
    text = TOKEN * billed.produced
    answer = _gemini_response(billed, model, text, True, billed.completion_tokens)
    return orjson.dumps(answer), billed.produced * billed.n


def _gemini_chunks(billed: Billed, model: str, size: int) -> Iterator[Event]:
    """One GenerateContentResponse per step, every candidate's next piece in it."""
    steps = max(1, math.ceil(billed.produced / size))
    sent = 0
    for step in range(steps):
        tokens = min(size, billed.produced - step * size)
        last = step == steps - 1
        sent += tokens * billed.n
        reported = billed.completion_tokens if last else sent
        chunk = _gemini_response(billed, model, TOKEN * tokens, last, reported)
        yield orjson.dumps(chunk), tokens * billed.n


def _json_array(chunks: Iterator[Event]) -> Iterator[Event]:
    """streamGenerateContent without alt=sse: the same responses as one JSON array."""
    separator = b"["
    for data, tokens in chunks:
        yield separator + data, tokens
        separator = b",\r\n"
    yield (b"]" if separator != b"[" else b"[]"), 0
