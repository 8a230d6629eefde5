"""The benchmarks' answers: encoded once, written straight to the transport.

The fake OpenAI upstream (openai_upstream.py) answers with these when it is given `chunks`
(`python -m tests.fakes`, which the benchmarks start), so that it costs as little CPU per
request as possible and is never what a benchmark measures.

A non-stream request gets a small fixed `chat.completion` with usage; a stream gets `chunks`
chunks (`tok0 `, `tok1 `...; the last one carries `finish_reason`), each written separately,
a usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`.

Pacing: chunks are sent `delay_ms` apart. A request whose `model` ends in `-paced<MS>`
(e.g. `gpt-4o-mini-paced20`) is paced MS apart whatever the setting, so one upstream serves
both the fast and the paced benchmarks, and a gateway selects the pacing only through its
ordinary model routing. Every chunk of a paced stream carries its send time,
`time.time_ns()` taken just before the write, twice: as a top-level field `"t_sent"` and in
its content as `[<ns>]`, in case a proxy drops unknown fields. A client then computes the
per-chunk delay as its receive time minus `t_sent` (one machine, one clock).

Long streams: a request whose `model` ends in `-long` (e.g. `gpt-4o-mini-long`) is answered
with chunks that go on until the client goes away (at most `LONG_MAX_SECONDS`, then the
usage chunk and `[DONE]`), as fast as the reader takes them: `LONG_BATCH` chunks per write,
and every write waits (drain) while the connection's write buffer is over its high-water
mark, so a reader that stops reading stops this stream too and nothing piles up here. A
model ending in `-long<N>` (e.g. `gpt-4o-mini-long1000`) sends N chunks a second, the ones
due every `LONG_TICK` seconds in one write (10 a write at 1,000/s), never faster: a stream
held back by its reader does not burst to catch up. Used by `bench.py --unread-streams`.

`POST /v1/messages` (`messages`, and `count_tokens` for `/v1/messages/count_tokens`) speaks
Anthropic's Messages API as the real service does
(see tests/fakes/anthropic_upstream.py): it wants an `x-api-key` header (401
`authentication_error` without) and an `anthropic-version` of `ANTHROPIC_VERSIONS` (400
otherwise), answers a
`message` with usage, or with `"stream": true` the events `message_start` (with
`usage.input_tokens`), `content_block_start`, `ping`, `chunks` `content_block_delta`
text deltas, each written separately, `content_block_stop`, `message_delta` (stop reason,
cumulative `usage.output_tokens`) and `message_stop`, each as `event: <type>` and `data:`
lines. Pacing works the same way through the model name (e.g.
`claude-3-5-haiku-20241022-paced20`): the first delta goes right after the opening events,
the others MS apart, and each delta's text is its send time, `[<ns>]`. The gateway
rebuilds every chunk from the delta's text, so the stamp reaches the client in the
OpenAI chunk's `content`, where the load generator reads it.

`POST /v1/responses` (`responses`) speaks OpenAI's Responses API (its API reference,
"Responses" and "Streaming events"; the shapes of openai-python's `types/responses`): a
`response` object with usage, or with `"stream": true` the events `response.created`,
`response.in_progress`, `response.output_item.added` (the message item),
`response.content_part.added` (its `output_text` part), `chunks`
`response.output_text.delta` events, each written separately, `response.output_text.done`,
`response.content_part.done`, `response.output_item.done` (each with the whole text) and
`response.completed` (the response with its output and `usage`), each as `event: <type>` and
`data:` lines, every one with its `sequence_number` (from 0). The opening four go in one
write, the closing four in one. Pacing as above through the model name (e.g.
`gpt-4o-mini-paced20`): each delta's text is its send time, `[<ns>]`, and the closing
events carry the stamps' concatenation as the text.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import openai_wire as wire

MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"
ANTHROPIC_VERSION = "2023-06-01"
# The versions it takes, as the full fake (anthropic_upstream.API_VERSIONS): the anthropic
# SDKs send the newer one.
ANTHROPIC_VERSIONS = (ANTHROPIC_VERSION, "2026-10-21")
PROMPT_TOKENS = 9
PACED = re.compile(r"-paced(\d+)$")
LONG = re.compile(r"-long(\d*)$")
LONG_MAX_SECONDS = 300.0  # a long stream ends after this, should its reader never leave
LONG_BATCH = 20  # chunks per write of a long stream at full speed (about 4 KB)
LONG_TICK = 0.01  # a paced long stream writes the chunks due every LONG_TICK seconds

NON_STREAM = orjson.dumps(
    wire.completion(
        MODEL,
        ["Hello from the fake upstream."],
        wire.usage(PROMPT_TOKENS, 7),
        id="chatcmpl-bench",
        fingerprint="fp_bench",
    )
)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
ANTHROPIC_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "request-id": "req_bench",
}
ANTHROPIC_NON_STREAM = orjson.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": "Hello from the fake upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 7},
    }
)


def is_fast(model: str) -> bool:
    """Whether the model name asks for a paced or a long stream."""
    return PACED.search(model) is not None or LONG.search(model) is not None


def _chunk(i: int, n: int) -> dict[str, Any]:
    delta = {"role": "assistant", "content": f"tok{i} "} if i == 0 else {"content": f"tok{i} "}
    finish = "stop" if i == n - 1 else None
    return wire.chunk(MODEL, delta, finish, id="chatcmpl-bench", fingerprint=None)


def _usage(n: int) -> bytes:
    return wire.event(wire.usage_chunk(MODEL, wire.usage(PROMPT_TOKENS, n), id="chatcmpl-bench"))


def long_rate(model: object) -> int | None:
    """Chunks a second of a long stream (0: as fast as the reader takes them); None: not long."""
    match = LONG.search(model) if isinstance(model, str) else None
    if match is None:
        return None
    return int(match.group(1) or 0)


class LongStream:
    """The pre-encoded events of a long stream: a first chunk, then the same chunk again."""

    def __init__(self) -> None:
        self.first = wire.event(_chunk(0, 2))
        self.chunk = wire.event(_chunk(1, 3))

    @staticmethod
    def end(chunks: int, include_usage: bool) -> bytes:
        last = wire.event(_chunk(chunks - 1, chunks))
        tail = _usage(chunks) if include_usage else b""
        return wire.frame(last + tail + wire.DONE)


class Stream:
    """The pre-encoded events of one stream shape (n chunks)."""

    def __init__(self, n: int):
        self.n = n
        self.chunks = [wire.event(_chunk(i, n)) for i in range(n)]
        self.framed = [wire.frame(chunk) for chunk in self.chunks]
        # Paced chunks carry their send time; split each around the two places it goes so
        # that stamping one is two concatenations, not a JSON encode.
        self.paced: list[tuple[bytes, bytes, bytes]] = []
        for i in range(n):
            chunk = _chunk(i, n)
            chunk["choices"][0]["delta"]["content"] = "[@T@]"
            chunk["t_sent"] = 0
            text = wire.event(chunk)
            head, tail = text.split(b'"t_sent":0')
            before, after = head.split(b"@T@")
            self.paced.append((before, after + b'"t_sent":', tail))
        self.usage = _usage(n)
        self.framed_usage = wire.frame(self.usage)
        self.framed_done = wire.frame(wire.DONE)


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One event of Anthropic's stream: its type on an `event:` line, then its data."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class AnthropicStream:
    """The pre-encoded events of one Anthropic stream of n text deltas."""

    def __init__(self, n: int):
        self.n = n
        message = {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
        }
        block = {"type": "text", "text": ""}
        # The opening events, in the real service's order, sent in one write.
        self.start = (
            sse("message_start", {"type": "message_start", "message": message})
            + sse("content_block_start",
                  {"type": "content_block_start", "index": 0, "content_block": block})
            + sse("ping", {"type": "ping"})
        )  # fmt: skip

        def delta(text: str) -> bytes:
            data = {"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}}  # fmt: skip
            return sse("content_block_delta", data)

        self.framed = [wire.frame(delta(f"tok{i} ")) for i in range(n)]
        # A paced delta is its text split around the stamp: stamping is two concatenations.
        self.paced_before, self.paced_after = delta("[@T@]").split(b"@T@")
        stop = {"stop_reason": "end_turn", "stop_sequence": None}
        self.end = (
            sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            + sse("message_delta",
                  {"type": "message_delta", "delta": stop, "usage": {"output_tokens": n}})
            + sse("message_stop", {"type": "message_stop"})
        )  # fmt: skip
        self.framed_end = wire.frame(self.end)


RESPONSE_ID = "resp_bench"
RESPONSE_ITEM_ID = "msg_bench"
TEXT_MARK = b"@TEXT@"  # where the whole text goes in the closing events of a Responses stream


def response_object(status: str, output: list[Any], usage: dict[str, Any] | None) -> dict:
    """A `response` object of OpenAI's Responses API (the API reference's "The response
    object"), for the model `MODEL`, with the defaults of a request that set nothing."""
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": wire.CREATED,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": MODEL,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def response_usage(output_tokens: int) -> dict[str, Any]:
    """The Responses API's `usage` (openai-python's `ResponseUsage`)."""
    return {
        "input_tokens": PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": PROMPT_TOKENS + output_tokens,
    }


def response_message(status: str, text: str | None) -> dict[str, Any]:
    """The output item of a text answer: an assistant `message` with one `output_text` part
    (no part while `text` is None, as in `response.output_item.added`)."""
    content = [] if text is None else [output_text(text)]
    return {"id": RESPONSE_ITEM_ID, "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


RESPONSES_NON_STREAM = orjson.dumps(
    response_object(
        "completed",
        [response_message("completed", "Hello from the fake upstream.")],
        response_usage(7),
    )
)


class ResponsesStream:
    """The pre-encoded events of one Responses stream of n text deltas: the opening events,
    each delta (split around its text, which a paced stream stamps), and the closing events
    split around the whole text (`TEXT_MARK`), which they carry four times."""

    def __init__(self, n: int):
        self.n = n
        place = {"item_id": RESPONSE_ITEM_ID, "output_index": 0, "content_index": 0}
        opening = [
            {"type": "response.created",
             "response": response_object("in_progress", [], None)},
            {"type": "response.in_progress",
             "response": response_object("in_progress", [], None)},
            {"type": "response.output_item.added", "output_index": 0,
             "item": response_message("in_progress", None)},
            {"type": "response.content_part.added", **place, "part": output_text("")},
        ]  # fmt: skip
        self.start = b"".join(self.event(data, i) for i, data in enumerate(opening))
        first = len(opening)
        deltas = [
            self.event(
                {"type": "response.output_text.delta", **place, "delta": "@T@", "logprobs": []},
                first + i,
            ).split(b"@T@")
            for i in range(n)
        ]
        self.deltas: list[tuple[bytes, bytes]] = [(before, after) for before, after in deltas]
        self.framed = [
            wire.frame(before + f"tok{i} ".encode() + after)
            for i, (before, after) in enumerate(self.deltas)
        ]
        mark = TEXT_MARK.decode()
        closing = [
            {"type": "response.output_text.done", **place, "text": mark, "logprobs": []},
            {"type": "response.content_part.done", **place, "part": output_text(mark)},
            {"type": "response.output_item.done", "output_index": 0,
             "item": response_message("completed", mark)},
            {"type": "response.completed",
             "response": response_object("completed", [response_message("completed", mark)],
                                         response_usage(n))},
        ]  # fmt: skip
        end = b"".join(self.event(data, first + n + i) for i, data in enumerate(closing))
        self.end_parts = end.split(TEXT_MARK)
        text = "".join(f"tok{i} " for i in range(n))
        self.framed_end = wire.frame(self.end(text.encode()))

    @staticmethod
    def event(data: dict[str, Any], sequence_number: int) -> bytes:
        """One event: `event: <type>`, then its data with `sequence_number` after `type`."""
        kind = data["type"]
        ordered = {"type": kind, "sequence_number": sequence_number, **data}
        return sse(kind, ordered)

    def end(self, text: bytes) -> bytes:
        """The closing events for the whole text (JSON-safe bytes: tokens and stamps)."""
        return text.join(self.end_parts)


class FastAnswers:
    """The answers above for `chunks` chunks, paced `delay_ms` apart unless the model says."""

    def __init__(self, chunks: int, delay_ms: float = 0.0):
        self.delay_ms = delay_ms
        self.stream = Stream(chunks)
        self.anthropic = AnthropicStream(chunks)
        self.responses_stream = ResponsesStream(chunks)
        self.long = LongStream()
        self.pacing_by_model: dict[str, float] = {}

    def pacing(self, model: object) -> float:
        if not isinstance(model, str):
            return self.delay_ms
        found = self.pacing_by_model.get(model)
        if found is None:
            match = PACED.search(model)
            found = float(match.group(1)) if match else self.delay_ms
            if len(self.pacing_by_model) < 1000:
                self.pacing_by_model[model] = found
        return found

    async def answer(self, request: web.BaseRequest, body: dict[str, Any]) -> web.StreamResponse:
        """A chat completion: the fixed answer, or a stream (paced, long) by the model name."""
        if body.get("stream") is not True:
            return web.Response(body=NON_STREAM, content_type="application/json")

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        delay = self.pacing(body.get("model")) / 1000.0
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        rate = long_rate(body.get("model"))
        if rate is not None:
            return await self.stream_long(request, response, rate, include_usage)
        # The first event goes through aiohttp, which sends the headers with it; the others
        # are written to the transport already framed (chunked coding), one write each. The
        # upstream shares its core with the load generator, and this takes its user CPU per
        # 20-chunk stream from about 120 us to 70 us (streams/s alone on a core: 3,900 to
        # 4,500). The system call per event (about 7 us) remains: each is sent on its own.
        write = request.transport.write  # type: ignore[union-attr]
        stream = self.stream
        if delay > 0:
            # Sleep to absolute deadlines, so that the pacing does not drift with the
            # time the writes take.
            start = time.monotonic()
            for i, (before, middle, after) in enumerate(stream.paced):
                if i:
                    wait = start + i * delay - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                stamp = str(time.time_ns()).encode()
                chunk = before + stamp + middle + stamp + after
                if i:
                    write(wire.frame(chunk))
                else:
                    await response.write(chunk)
        else:
            await response.write(stream.chunks[0])
            for framed in stream.framed[1:]:
                write(framed)
        if include_usage:
            write(stream.framed_usage)
        write(stream.framed_done)
        await response.write_eof()
        return response

    async def stream_long(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        rate: int,
        include_usage: bool,
    ) -> web.StreamResponse:
        """Chunks until the reader leaves (see "Long streams" above), `rate` a second or
        (0) as fast as it reads them."""
        await response.write(self.long.first)
        transport = request.transport
        drain = request.writer.drain  # waits while the transport is over its high-water mark
        per_write = max(1, round(rate * LONG_TICK)) if rate else LONG_BATCH
        block = wire.frame(self.long.chunk * per_write)
        interval = per_write / rate if rate else 0.0
        sent = 1
        now = time.monotonic()
        end = now + LONG_MAX_SECONDS
        due = now
        try:
            while now < end:
                if interval:
                    due += interval
                    if due > now:
                        await asyncio.sleep(due - now)
                    elif due < now - interval:
                        due = now  # held back by the reader: go on from here, no burst
                if transport is None or transport.is_closing():
                    return response  # the reader left
                transport.write(block)
                sent += per_write
                await drain()
                if not interval:
                    await asyncio.sleep(0)  # drain() returns at once when not paused: yield
                now = time.monotonic()
        except ConnectionError:
            return response
        transport.write(self.long.end(sent + 1, include_usage))
        await response.write_eof()
        return response

    async def count_tokens(self, request: web.BaseRequest) -> web.Response:
        """Anthropic's `POST /v1/messages/count_tokens`: `{"input_tokens": PROMPT_TOKENS}`,
        the input every answer of this fake reports."""
        if not request.headers.get("x-api-key"):
            return anthropic_error(401, "authentication_error", "x-api-key header is required")
        if request.headers.get("anthropic-version") not in ANTHROPIC_VERSIONS:
            return anthropic_error(400, "invalid_request_error", "anthropic-version: invalid")
        return web.json_response({"input_tokens": PROMPT_TOKENS})

    async def messages(self, request: web.BaseRequest) -> web.StreamResponse:
        """Anthropic's `POST /v1/messages`: the same shapes and pacing in its wire format."""
        if not request.headers.get("x-api-key"):
            return anthropic_error(401, "authentication_error", "x-api-key header is required")
        if request.headers.get("anthropic-version") not in ANTHROPIC_VERSIONS:
            return anthropic_error(400, "invalid_request_error", "anthropic-version: invalid")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
            return anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
        if body.get("stream") is not True:
            return web.Response(body=ANTHROPIC_NON_STREAM, content_type="application/json")

        delay = self.pacing(body.get("model")) / 1000.0
        response = web.StreamResponse(headers=ANTHROPIC_SSE_HEADERS)
        await response.prepare(request)
        # As above: the opening events go through aiohttp with the headers, the deltas
        # straight to the transport, framed, one write each.
        anthropic = self.anthropic
        await response.write(anthropic.start)
        write = request.transport.write  # type: ignore[union-attr]
        if delay > 0:
            before, after = anthropic.paced_before, anthropic.paced_after
            start = time.monotonic()
            for i in range(anthropic.n):
                if i:
                    wait = start + i * delay - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                write(wire.frame(before + str(time.time_ns()).encode() + after))
        else:
            for framed in anthropic.framed:
                write(framed)
        write(anthropic.framed_end)
        await response.write_eof()
        return response

    async def responses(self, request: web.BaseRequest) -> web.StreamResponse:
        """OpenAI's `POST /v1/responses`: the same shapes and pacing in its wire format."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return wire.invalid("We could not parse the JSON body of your request.", None)
        if not isinstance(body.get("model"), str):
            return wire.invalid("Missing required parameter: 'model'.", "model")
        if body.get("stream") is not True:
            return web.Response(body=RESPONSES_NON_STREAM, content_type="application/json")

        delay = self.pacing(body.get("model")) / 1000.0
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        # As above: the opening events go through aiohttp with the headers, the deltas
        # straight to the transport, framed, one write each, then the closing events.
        stream = self.responses_stream
        await response.write(stream.start)
        write = request.transport.write  # type: ignore[union-attr]
        if delay > 0:
            stamps: list[bytes] = []
            start = time.monotonic()
            for i, (before, after) in enumerate(stream.deltas):
                if i:
                    wait = start + i * delay - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                stamp = b"[" + str(time.time_ns()).encode() + b"]"
                stamps.append(stamp)
                write(wire.frame(before + stamp + after))
            write(wire.frame(stream.end(b"".join(stamps))))
        else:
            for framed in stream.framed:
                write(framed)
            write(stream.framed_end)
        await response.write_eof()
        return response


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def serve(handle: Handler, host: str, port: int) -> None:
    """Serve `handle` on the low-level server until cancelled: no router, no middlewares, no
    access log. This is a test double, and every microsecond it spends is one the measured
    proxy cannot use."""
    in_flight = 0

    async def counted(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal in_flight
        in_flight += 1
        try:
            return await handle(request)
        finally:
            in_flight -= 1

    async def collect_when_idle() -> None:
        # The collector runs only between measurements. With 9,744 streams open, its pauses
        # (up to 0.5 s) held paced chunks back, which then left in one burst to catch up with
        # their deadlines: the proxy measured had 3,600 chunks to forward in 100 ms, and a
        # p99 of 66 ms that was the upstream's doing (measured by hand: 36 slow 100-ms
        # windows in a churning-streams run with the collector on, 3 with it off).
        while True:
            await asyncio.sleep(1)
            if in_flight == 0:
                gc.collect()

    gc.disable()
    collector = asyncio.create_task(collect_when_idle())
    server = web.Server(counted, access_log=None)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, host, port, backlog=4096, reuse_address=True)
    print(f"fake upstream: listening on http://{host}:{port}", flush=True)
    async with listener:
        await listener.serve_forever()
    collector.cancel()
