"""What a request costs at a provider that bills as the real ones do: the model the fakes
share for their billing scenarios (the OpenAI fake's in tests/fakes/openai_upstream.py, the
Anthropic and Gemini ones in tests/fakes/billing_upstream.py, whose docstring is the theory).

The upstream model name picks the behaviour:

    answer-N   each choice wants N completion tokens and stops at the cap
    greedy-N   ignores every cap: N tokens per choice (a provider that bills past the cap)
    lying-N    honours the cap, answering `record.lying_tokens` (default 1,000) tokens per
               choice, but reports N more completion tokens in all than it produced

Every token is the text "tok " (4 characters). Answers are written event by event by
`send`, as fast as the client reads, through small socket buffers (`record.send_buffer`),
so that a client that reads a little and leaves stops the stream early.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

TOKEN = "tok "
SCENARIO = re.compile(r"(answer|greedy|lying)-(\d+)")
WRITE_BUFFER_HIGH = 16384  # bytes the event loop holds for a connection before `write` waits

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
    """The billing settings, and every billed request, in order."""

    requests: list[Billed] = field(default_factory=list)
    prompt_tokens: int | None = None  # report this many prompt tokens instead of counting
    chunk_tokens: int = 50  # completion tokens per stream event
    lying_tokens: int = 1_000  # tokens per choice a lying-N answer wants
    send_buffer: int | None = 65536  # SO_SNDBUF of each connection; None: the defaults

    @property
    def last(self) -> Billed:
        return self.requests[-1]


def scenario(model: Any) -> tuple[str, int] | None:
    """("answer" | "greedy" | "lying", N) for a billing model name, else None."""
    match = SCENARIO.fullmatch(model) if isinstance(model, str) else None
    return (match[1], int(match[2])) if match else None


def start(record: BillingRecord, provider: Provider, body: dict[str, Any]) -> Billed:
    billed = Billed(provider, body, stream=body.get("stream") is True)
    record.requests.append(billed)
    return billed


def bill(
    record: BillingRecord,
    billed: Billed,
    scenario: tuple[str, int],
    cap: int | None,
    n: int,
    prompt_chars: int,
) -> None:
    """Decide up front what the answer produces and reports (the theory: billing_upstream)."""
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


def text_chars(content: Any) -> int:
    """Characters of text in a content: a string, or parts and blocks that carry `text`."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(text_chars(part) for part in content)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return len(content["text"])
        if content.get("type") == "tool_result":
            return text_chars(content.get("content"))
    return 0


def dicts(items: Any) -> list[dict[str, Any]]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def pieces(tokens: int, size: int) -> Iterator[int]:
    """Token counts of the stream events for one choice of `tokens` tokens."""
    for begin in range(0, tokens, size):
        yield min(size, tokens - begin)


async def read_body(request: web.BaseRequest) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="The body is not a JSON object.")
    return body


def _small_buffers(request: web.BaseRequest, record: BillingRecord) -> None:
    # Loopback autotunes its buffers to MiBs, which would swallow a whole long stream
    # before a client that reads little has gone; a real provider's far end holds less.
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if record.send_buffer is None or transport is None or sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, record.send_buffer)
    transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)


async def send(
    request: web.BaseRequest,
    record: BillingRecord,
    billed: Billed,
    events: Iterator[Event] | list[Event],
    content_type: str,
) -> web.StreamResponse:
    """Write the events one by one, counting tokens out, until the end or the client leaves."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    if isinstance(events, list) and len(events) == 1:
        response.content_length = len(events[0][0])
    _small_buffers(request, record)
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


def refused(billed: Billed, status: int, body: Any) -> web.Response:
    """An error answer (in the provider's shape), its status kept on `billed`."""
    billed.status = status
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
