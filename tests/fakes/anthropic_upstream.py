"""A fake Anthropic Messages API for tests, speaking the real wire format on loopback.

`POST /v1/messages` checks `x-api-key` and `anthropic-version` as the real service does (401
`authentication_error` otherwise), refuses with Anthropic's error body and status what the
real service refuses (`_check`: fields it does not know, empty or blank text, whitespace-only
stop sequences, media types, tool ids and names of the wrong shape or repeated, tool results
that answer no call of the assistant turn before them or do not come first, a first turn that
is not the user's, a prefill ending in whitespace, temperature outside 0..1 or beside top_p),
and answers 404 `not_found_error` for a model not in `fake.models`. `GET /v1/models` lists
`fake.models` in Anthropic's shape, paged with `limit` and `after_id`. What it answers is
`fake.scenario`, set by the test before the request. Thinking (`thinking` of type "enabled"
or "adaptive", or `scenario.thinking`) opens the answer with a signed thinking block; a
`system` turn inside `messages` is taken with the `mid-conversation-system-2026-04-07` beta
only; `thinking.budget_tokens` must be at least 1,024 and, without the interleaved-thinking
beta, below `max_tokens`. `POST /v1/messages/count_tokens` answers `{"input_tokens":
scenario.input_tokens}` after the same checks, refusing the fields only message creation
takes. Every request is kept in `fake.requests` (counts in `fake.counts`)
and every stream event in `fake.sent`, stamped with the monotonic time just before it was
written, so a test can tell whether a delta reached its client before the upstream sent the
next event.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

API_VERSION = "2023-06-01"
# The versions the service takes (platform.claude.com/docs/en/api/versioning); 2026-10-21,
# the anthropic SDK's since 2.x, removed `temperature`, `top_p` and `top_k`.
API_VERSIONS = (API_VERSION, "2026-10-21")

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
    "file_not_found": (404, "not_found_error", "File not found: file_011CNha8iCJcU1wXNR6q4V8w"),
    "credit_low": (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
    ),
    "billing": (402, "billing_error", "Your organization has no valid payment method."),
    "unauthorized": (401, "authentication_error", "invalid x-api-key"),
    "forbidden": (403, "permission_error", "Your API key does not have permission."),
    "request_timeout": (408, "timeout_error", "Request timed out"),
    "too_large": (413, "request_too_large", "Request exceeds the maximum allowed size."),
    "unavailable": (503, "overloaded_error", "Service unavailable"),
    "gateway_timeout": (504, "timeout_error", "Request timed out"),
}

# The models the fake serves unless told otherwise: (id, display name, created_at).
MODELS = [
    ("claude-3-5-sonnet-20241022", "Claude Sonnet 3.5 (New)", "2024-10-22T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-01T00:00:00Z"),
]
FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
        "stop_sequences", "stream", "metadata", "tools", "tool_choice", "thinking",
        "service_tier", "container", "mcp_servers", "output_config", "context_management",
        "cache_control",
    }
)  # fmt: skip
# What POST /v1/messages/count_tokens takes (its reference): no max_tokens, sampling, stream.
COUNT_FIELDS = FIELDS - {
    "max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "stream", "metadata",
    "service_tier", "container",
}  # fmt: skip
MID_CONVERSATION_SYSTEM = "mid-conversation-system-2026-04-07"
INTERLEAVED_THINKING = "interleaved-thinking-2025-05-14"
SIGNATURE = "EqQBCkgIARABGAIiQL0fakeSignatureOfTheThinkingBlock=="
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_ID = re.compile(r"[a-zA-Z0-9_-]+")
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")


@dataclass
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


@dataclass
class Scenario:
    """What the fake answers. `kind` is "ok", "overloaded_midstream" or a key of HTTP_ERRORS."""

    kind: str = "ok"
    midstream_error: str = "overloaded_error"  # the error type of "error_midstream"
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
    gate: asyncio.Event | None = None  # when set: every answer waits for it (quota races)


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
    def __init__(self, api_key: str, models: list[tuple[str, str, str]] | None = None):
        self.api_key = api_key
        self.models = list(MODELS if models is None else models)
        self.scenario = Scenario()
        self.requests: list[Received] = []
        self.counts: list[Received] = []  # count_tokens requests
        self.sent: list[Sent] = []
        self._ids = itertools.count(1)

    async def list_models(self, request: web.Request) -> web.Response:
        """`GET /v1/models`: newest first, `limit` (1..1000, default 20) after `after_id`."""
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") not in API_VERSIONS:
            return _error(400, "invalid_request_error", "anthropic-version: invalid version")
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _error(400, "invalid_request_error", "limit: Input should be 1..1000")
        models = sorted(self.models, key=lambda model: model[2], reverse=True)
        ids = [model[0] for model in models]
        after = request.query.get("after_id")
        start = 0
        if after is not None:
            if after not in ids:
                return _error(400, "invalid_request_error", f"after_id: unknown id {after}")
            start = ids.index(after) + 1
        page = models[start : start + limit]
        data = [
            {"type": "model", "id": i, "display_name": name, "created_at": created}
            for i, name, created in page
        ]
        return web.json_response(
            {
                "data": data,
                "has_more": start + limit < len(models),
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.counts.append(Received(dict(request.headers), body))
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") not in API_VERSIONS:
            return _error(400, "invalid_request_error", "anthropic-version: invalid version")
        extra = [name for name in body if name not in COUNT_FIELDS]
        if extra:
            message = f"{extra[0]}: Extra inputs are not permitted"
            return _error(400, "invalid_request_error", message)
        problem = _check({**body, "max_tokens": 1 << 20}, request.headers.get("anthropic-beta", ""))
        if problem:
            return _error(400, "invalid_request_error", problem)
        if body["model"] not in {model[0] for model in self.models}:
            return _error(404, "not_found_error", f"model: {body['model']}")
        if self.scenario.kind in HTTP_ERRORS:
            status, kind, message = HTTP_ERRORS[self.scenario.kind]
            return _error(status, kind, message)
        return web.json_response({"input_tokens": self.scenario.input_tokens})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Received(dict(request.headers), body))
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") not in API_VERSIONS:
            return _error(400, "invalid_request_error", "anthropic-version: invalid version")
        problem = _check(body, request.headers.get("anthropic-beta", ""))
        if request.headers["anthropic-version"] != API_VERSION:
            removed = [name for name in ("temperature", "top_p", "top_k") if name in body]
            if removed and not problem:
                problem = f"{removed[0]}: Extra inputs are not permitted"
        if problem:
            return _error(400, "invalid_request_error", problem)
        if body["model"] not in {model[0] for model in self.models}:
            return _error(404, "not_found_error", f"model: {body['model']}")
        scenario = self.scenario
        if scenario.kind in HTTP_ERRORS:
            status, kind, message = HTTP_ERRORS[scenario.kind]
            headers = {"retry-after": scenario.retry_after} if status in (429, 529) else None
            return _error(status, kind, message, headers)
        if scenario.gate is not None:
            await scenario.gate.wait()
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
        if _thinks(s, body):
            content.append({"type": "thinking", "thinking": "Let me see.", "signature": SIGNATURE})
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

        if _thinks(s, body):
            block(
                {"type": "thinking", "thinking": "", "signature": ""},
                [
                    {"type": "thinking_delta", "thinking": "Let me see."},
                    {"type": "signature_delta", "signature": SIGNATURE},
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
            arguments = orjson.dumps(tool.input).decode() if tool.input else ""
            third = max(1, len(arguments) // 3)
            # The real service opens with an empty fragment, then sends the JSON in pieces; for
            # a tool without parameters, the empty fragment is all it sends.
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
        if s.kind in ("overloaded_midstream", "error_midstream"):
            # Two deltas out, then the error event; the real service closes the stream after it.
            cut = 2 + next(i for i, (name, _) in enumerate(events) if name == "content_block_delta")
            kind = "overloaded_error" if s.kind == "overloaded_midstream" else s.midstream_error
            error = {"type": kind, "message": "Overloaded" if "overloaded" in kind else kind}
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


def _thinks(scenario: Scenario, body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    on = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    return scenario.thinking or on


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


def _check(body: dict[str, Any], betas: str = "") -> str | None:
    """The real service's request rules, as its error messages word them; `betas` is the
    request's anthropic-beta header."""
    for name in body:
        if name not in FIELDS:
            return f"{name}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if not isinstance(body.get("messages"), list):
        return "messages: Field required"
    if not body["messages"]:
        return "messages: at least one message is required"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: range: 0..1"
    if temperature is not None and body.get("top_p") is not None:
        # As every Claude model since Sonnet 4.5 does.
        return "`temperature` and `top_p` cannot both be specified for this model."
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            return "stop_sequences: Input should be a valid list of strings"
        if any(not s for s in stops):
            return "stop_sequences: each stop sequence must be non-empty"
        if any(not s.strip() for s in stops):
            return "stop_sequences: each stop sequence must contain non-whitespace"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string"
    return (
        _check_thinking(body, betas)
        or _check_tools(body)
        or _check_messages(body["messages"], MID_CONVERSATION_SYSTEM in betas)
    )


def _check_thinking(body: dict[str, Any], betas: str) -> str | None:
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in (
        "enabled",
        "disabled",
        "adaptive",
    ):
        return "thinking: Input tag does not match any of the expected tags"
    if thinking["type"] != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= body["max_tokens"] and INTERLEAVED_THINKING not in betas:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    return None


def _check_tools(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if tools is None:
        return None
    names: set[str] = set()
    for i, tool in enumerate(tools):
        name = tool.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        if name in names:
            return "tools: Tool names must be unique."
        names.add(name)
        if tool.get("type") not in (None, "custom"):
            continue  # a server tool (web_search_20250305...): its versioned type says it all
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
    choice = body.get("tool_choice")
    if (
        isinstance(choice, dict)
        and choice.get("type") == "tool"
        and choice.get("name") not in names
    ):
        return f"tool_choice: Tool '{choice.get('name')}' not found in tools"
    return None


def _check_messages(messages: list[Any], system_turns: bool = False) -> str | None:
    tool_ids: set[str] = set()
    previous_calls: set[str] = set()  # the tool_use ids of the assistant turn just before
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "system" and system_turns and i:
            continue  # a system turn between the others (the beta's)
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            return f"messages.{i}: all messages must have non-empty content"
        calls: set[str] = set()
        answered: set[str] = set()
        for j, block in enumerate(content):
            at = f"messages.{i}.content.{j}"
            kind = block.get("type")
            if kind == "text":
                if not block.get("text"):
                    return f"{at}.text: text content blocks must be non-empty"
                if not block["text"].strip():
                    return f"{at}.text: text content blocks must contain non-whitespace text"
            elif kind == "image":
                problem = _check_image(block.get("source"), f"{at}.image.source")
                if problem:
                    return problem
            elif kind == "tool_use":
                if role != "assistant":
                    return f"{at}: tool_use blocks may only appear in assistant messages"
                if not isinstance(block.get("id"), str) or not _ID.fullmatch(block["id"]):
                    return f"{at}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
                if block["id"] in tool_ids:
                    return f"messages.{i}.content.{j}: `tool_use` ids must be unique"
                if not isinstance(block.get("name"), str) or not _NAME.fullmatch(block["name"]):
                    return f"{at}.tool_use.name: String should match pattern"
                tool_ids.add(block["id"])
                calls.add(block["id"])
            elif kind == "tool_result":
                if role != "user":
                    return f"{at}: tool_result blocks may only appear in user messages"
                if any(b.get("type") != "tool_result" for b in content[:j]):
                    return (
                        f"messages.{i}: `tool_result` blocks must come first in the content "
                        "of a user message"
                    )
                if block.get("tool_use_id") not in previous_calls:
                    return (
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        "`tool_result` blocks: each `tool_result` block must have a "
                        "corresponding `tool_use` block in the previous message."
                    )
                answered.add(block["tool_use_id"])
        if role == "user" and previous_calls - answered:
            missing = ", ".join(sorted(previous_calls - answered))
            return (
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {missing}"
            )
        previous_calls = calls
        last = content[-1]
        if (
            i == len(messages) - 1
            and role == "assistant"
            and last.get("type") == "text"
            and last["text"] != last["text"].rstrip()
        ):
            return "messages: final assistant content cannot end with trailing whitespace"
    return None


def _check_image(source: Any, at: str) -> str | None:
    if not isinstance(source, dict):
        return f"{at}: Field required"
    if source.get("type") == "url":
        return None
    media_type = source.get("media_type")
    if media_type not in IMAGE_TYPES:
        return f"{at}.base64.media_type: Input should be " + ", ".join(
            f"'{t}'" for t in IMAGE_TYPES
        )
    head = base64.b64decode(str(source.get("data", ""))[:24] + "==")
    magic = {
        "image/jpeg": head.startswith(b"\xff\xd8\xff"),
        "image/png": head.startswith(b"\x89PNG"),
        "image/gif": head.startswith(b"GIF8"),
        "image/webp": head[:4] == b"RIFF" and head[8:12] == b"WEBP",
    }
    if not magic[media_type]:
        return f"{at}: Image does not match the provided media type {media_type}"
    return None


FAKE = web.AppKey("fake_anthropic", FakeAnthropic)


def create_fake_anthropic(
    api_key: str = "test-key", models: list[tuple[str, str, str]] | None = None
) -> web.Application:
    """The fake as an app; `app[FAKE]` is the control object (scenario, records, models)."""
    app = web.Application(client_max_size=16 << 20)  # real APIs take bodies of many MiB
    app[FAKE] = FakeAnthropic(api_key, models)
    app.router.add_post("/v1/messages", app[FAKE].messages)
    app.router.add_post("/v1/messages/count_tokens", app[FAKE].count_tokens)
    app.router.add_get("/v1/models", app[FAKE].list_models)
    return app
