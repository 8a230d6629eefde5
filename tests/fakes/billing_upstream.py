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

The upstream model name picks the behaviour (anything else is a 404 in the provider's
shape): `answer-N`, `greedy-N` and `lying-N`, as tests/fakes/billing.py says. The OpenAI
routes are the one fake OpenAI upstream (tests/fakes/openai_upstream.py), serving only
those; this module adds Anthropic's and Gemini's wire formats on the same port, and all
three bill into one `BillingRecord`.

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

import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fakes.billing import (
    TOKEN,
    Billed,
    BillingRecord,
    Event,
    bill,
    dicts,
    pieces,
    read_body,
    refused,
    scenario,
    send,
    start,
    text_chars,
)
from tests.fakes.openai_upstream import BOTH_CAPS, FakeOpenAI, Record

__all__ = ["BOTH_CAPS", "TOKEN", "Billed", "BillingRecord", "BillingUpstream"]


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
    openai = FakeOpenAI(Record(models=[], billing=record))  # the billing scenarios only

    async def anthropic(request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        billed = start(record, "anthropic", body)
        cap = body.get("max_tokens")
        if not isinstance(cap, int) or isinstance(cap, bool):
            message = "max_tokens: Field required"
            return _anthropic_error(billed, 400, "invalid_request_error", message)
        if cap < 1:
            message = "max_tokens: Input should be greater than or equal to 1"
            return _anthropic_error(billed, 400, "invalid_request_error", message)
        kind = scenario(body.get("model"))
        if kind is None:
            return _anthropic_error(billed, 404, "not_found_error", f"model: {body.get('model')}")
        chars = text_chars(body.get("system"))
        chars += sum(text_chars(m.get("content")) for m in dicts(body.get("messages")))
        bill(record, billed, kind, cap, 1, chars)
        message_id = f"msg_billing{len(record.requests):04d}"
        if not billed.stream:
            answer = _anthropic_answer(billed, message_id)
            return await send(request, record, billed, [answer], "application/json")
        events = _anthropic_events(billed, message_id, record.chunk_tokens)
        return await send(request, record, billed, events, "text/event-stream; charset=utf-8")

    async def gemini(request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        body = await read_body(request)
        billed = start(record, "gemini", body)
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
        kind = scenario(model)
        if kind is None:
            message = f"models/{model} is not found for API version v1beta."
            return _gemini_error(billed, 404, "NOT_FOUND", message)
        chars = text_chars((body.get("systemInstruction") or {}).get("parts"))
        chars += sum(text_chars(c.get("parts")) for c in dicts(body.get("contents")))
        bill(record, billed, kind, cap, n, chars)
        if not billed.stream:
            answer = _gemini_answer(billed, model)
            return await send(request, record, billed, [answer], "application/json")
        chunks = _gemini_chunks(billed, model, record.chunk_tokens)
        if request.query.get("alt") == "sse":
            sse = ((b"data: " + data + b"\r\n\r\n", tokens) for data, tokens in chunks)
            return await send(request, record, billed, sse, "text/event-stream")
        return await send(request, record, billed, _json_array(chunks), "application/json")

    app.router.add_post("/v1/chat/completions", openai.handle)
    app.router.add_post("/chat/completions", openai.handle)
    app.router.add_post("/v1/messages", anthropic)
    app.router.add_post("/v1beta/models/{target}", gemini)
    app.router.add_post("/v1/models/{target}", gemini)
    return app


# -- Anthropic ---------------------------------------------------------------------------------


def _anthropic_error(billed: Billed, status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return refused(billed, status, {**body, "request_id": "req_billingerror"})


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
    for tokens in pieces(billed.produced, size):
        delta = {"type": "text_delta", "text": TOKEN * tokens}
        yield event({"type": "content_block_delta", "index": 0, "delta": delta}), tokens
    yield event({"type": "content_block_stop", "index": 0}), 0
    stop = {"stop_reason": "max_tokens" if billed.cut else "end_turn", "stop_sequence": None}
    usage = {"output_tokens": billed.completion_tokens}
    yield event({"type": "message_delta", "delta": stop, "usage": usage}), 0
    yield event({"type": "message_stop"}), 0


# -- Gemini ------------------------------------------------------------------------------------


def _gemini_error(billed: Billed, status: int, google: str, message: str) -> web.Response:
    error = {"code": status, "message": message, "status": google}
    return refused(billed, status, {"error": error})


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
