"""A fake Anthropic Messages API for tests, speaking the real wire format on loopback.

`POST /v1/messages` checks `x-api-key` and `anthropic-version` as the real service does (401
`authentication_error` otherwise) and a few request rules that catch translation mistakes
(`max_tokens` required, `temperature` within 0..1, tool results answering known tool calls).
What it answers is `fake.scenario`, set by the test before the request; every request is kept
in `fake.requests` and every stream event in `fake.sent`, stamped with the monotonic time just
before it was written, so a test can tell whether a delta reached its client before the
upstream sent the next event.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

API_VERSION = "2023-06-01"

# Scenarios answered with an HTTP error before any stream: status, error type, message.
HTTP_ERRORS = {
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "invalid_request": (
        400,
        "invalid_request_error",
        "messages.0.content.0.text: text content blocks must be non-empty",
    ),
    "rate_limited": (429, "rate_limit_error", "Number of request tokens has exceeded your limit."),
    "server_error": (500, "api_error", "Internal server error"),
    "not_found": (404, "not_found_error", "model: claude-unknown"),
}


@dataclass
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


@dataclass
class Scenario:
    """What the fake answers. `kind` is "ok", "overloaded_midstream" or a key of HTTP_ERRORS."""

    kind: str = "ok"
    text: list[str] = field(default_factory=lambda: ["Hello", " from", " Claude", "."])
    tools: list[ToolUse] = field(default_factory=list)
    thinking: bool = False  # a thinking block first, as with extended thinking on
    input_tokens: int = 21
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 9
    stop_reason: str | None = None  # default: tool_use when there are tools, else end_turn
    delay: float = 0.0  # seconds between two stream events
    unknown_event: bool = False  # an event type this gateway has never heard of
    retry_after: str = "7"


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Sent:
    at: float  # time.monotonic() just before the event was written
    event: str
    data: dict[str, Any]


class FakeAnthropic:
    def __init__(self, api_key: str):
        self.api_key = api_key
        self.scenario = Scenario()
        self.requests: list[Received] = []
        self.sent: list[Sent] = []
        self._ids = itertools.count(1)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Received(dict(request.headers), body))
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != API_VERSION:
            return _error(400, "invalid_request_error", "anthropic-version: invalid version")
        problem = _check(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        scenario = self.scenario
        if scenario.kind in HTTP_ERRORS:
            status, kind, message = HTTP_ERRORS[scenario.kind]
            headers = {"retry-after": scenario.retry_after} if status in (429, 529) else None
            return _error(status, kind, message, headers)
        message_id = f"msg_fake{next(self._ids):04d}"
        if body.get("stream"):
            return await self._stream(request, body, message_id)
        return web.json_response(self._message(body, message_id), headers=_ids(message_id))

    def _usage(self, output_tokens: int) -> dict[str, int]:
        s = self.scenario
        return {
            "input_tokens": s.input_tokens,
            "cache_creation_input_tokens": s.cache_creation_input_tokens,
            "cache_read_input_tokens": s.cache_read_input_tokens,
            "output_tokens": output_tokens,
        }

    def _stop_reason(self) -> str:
        s = self.scenario
        return s.stop_reason or ("tool_use" if s.tools else "end_turn")

    def _message(self, body: dict[str, Any], message_id: str) -> dict[str, Any]:
        s = self.scenario
        content: list[dict[str, Any]] = []
        if s.thinking:
            content.append({"type": "thinking", "thinking": "Let me see.", "signature": "sig"})
        if s.text:
            content.append({"type": "text", "text": "".join(s.text)})
        content += [
            {"type": "tool_use", "id": t.id, "name": t.name, "input": t.input} for t in s.tools
        ]
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": self._stop_reason(),
            "stop_sequence": None,
            "usage": self._usage(s.output_tokens),
        }

    def _events(self, body: dict[str, Any], message_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The stream as the real service sends it: blocks in order, pings in between."""
        s = self.scenario
        message = {
            **self._message(body, message_id),
            "content": [],
            "stop_reason": None,
            "usage": self._usage(1),
        }
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": message}),
            ("ping", {"type": "ping"}),
        ]
        index = 0

        def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
            nonlocal index
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                )
            )
            events.extend(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
                for delta in deltas
            )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
            index += 1

        if s.thinking:
            block(
                {"type": "thinking", "thinking": "", "signature": ""},
                [
                    {"type": "thinking_delta", "thinking": "Let me see."},
                    {"type": "signature_delta", "signature": "sig"},
                ],
            )
        if s.text:
            block(
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": piece} for piece in s.text],
            )
        if s.unknown_event:
            events.append(
                (
                    "content_block_annotation",
                    {"type": "content_block_annotation", "note": "from the future"},
                )
            )
        for tool in s.tools:
            arguments = orjson.dumps(tool.input).decode()
            third = max(1, len(arguments) // 3)
            # The real service opens with an empty fragment, then sends the JSON in pieces.
            pieces = [
                "",
                *filter(
                    None, (arguments[:third], arguments[third : 2 * third], arguments[2 * third :])
                ),
            ]
            block(
                {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}},
                [{"type": "input_json_delta", "partial_json": p} for p in pieces],
            )
        if s.kind == "overloaded_midstream":
            # Two deltas out, then the error event; the real service closes the stream after it.
            cut = 2 + next(i for i, (name, _) in enumerate(events) if name == "content_block_delta")
            error = {"type": "overloaded_error", "message": "Overloaded"}
            return [*events[:cut], ("error", {"type": "error", "error": error})]
        events.append(("ping", {"type": "ping"}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop_reason(), "stop_sequence": None},
                    "usage": {"output_tokens": s.output_tokens},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    async def _stream(
        self, request: web.Request, body: dict[str, Any], message_id: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **_ids(message_id),
            }
        )
        await response.prepare(request)
        for i, (name, data) in enumerate(self._events(body, message_id)):
            if i and self.scenario.delay:
                await asyncio.sleep(self.scenario.delay)
            self.sent.append(Sent(time.monotonic(), name, data))
            await response.write(
                b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
            )
        await response.write_eof()
        return response


def _ids(message_id: str) -> dict[str, str]:
    return {"request-id": "req_" + message_id.removeprefix("msg_")}


def _error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_fakeerror",
    }
    return web.json_response(body, status=status, headers=headers)


def _check(body: dict[str, Any]) -> str | None:
    """A few of the real service's request rules, enough to catch a wrong translation."""
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages: Field required"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: range: 0..1"
    tool_ids: set[str] = set()
    for i, message in enumerate(body["messages"]):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if block.get("type") == "text" and not block.get("text"):
                    return f"messages.{i}: text content blocks must be non-empty"
                if block.get("type") == "tool_use":
                    tool_ids.add(block.get("id"))
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in tool_ids:
                    return f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks"
    return None


FAKE = web.AppKey("fake_anthropic", FakeAnthropic)


def create_fake_anthropic(api_key: str = "test-key") -> web.Application:
    """The fake as an app; `app[FAKE]` is the control object (scenario, records)."""
    app = web.Application(client_max_size=16 << 20)  # real APIs take bodies of many MiB
    app[FAKE] = FakeAnthropic(api_key)
    app.router.add_post("/v1/messages", app[FAKE].messages)
    return app
