"""A fake OpenAI-compatible upstream that speaks the real wire format, with scenarios.

The scenario is chosen by the upstream model name the gateway sends (the part before any
`:`), so one fake serves many tests:

    gpt-4o-mini      a normal answer ("Hello! How can I help?", split into 5 chunks)
    deepseek-chat    DeepSeek's flavour: `: keep-alive` comments, usage on the finish chunk
    deepseek-reasoner  `reasoning_content` deltas (with `"content": null`) before the content
    tool-call-nulls  a streamed tool call whose later deltas carry `role`, `content`, `id`,
                     `type` and the function's `name` as null (vLLM, DeepSeek)
    no-usage         an answer with no usage at all (the gateway must estimate)
    slow             chunks `delay` seconds apart (default 0.02), with send times recorded
    endless          chunks forever, 0.01 s apart, until the client goes away
    truncated        the stream stops without [DONE]
    midstream-error  an error event after two chunks
    early-error-<code>  an error event with that `code` (and its type) before any chunk
    error-400 / error-401 / error-429 / error-500   that status with OpenAI's error body
    error-<status>[-<code>]  that status with OpenAI's error body and `code`, e.g.
                     error-404-model_not_found, error-429-insufficient_quota; error-402 is
                     DeepSeek's Insufficient Balance; 429, 503 and 529 come with Retry-After
    hang             never answers
    gated            answers once the test sets `record.gate`
    o3, o4-mini, gpt-5...  a reasoning model: refuses `max_tokens` and a temperature but 1

Like OpenAI's API it refuses, with its error body and status: a model it does not serve
(`record.models`; 404 `model_not_found`, or DeepSeek's 400 "Model Not Exist" on the
unversioned path that DeepSeek's base URL gives), empty `messages`, a `tool` message that
answers no `tool_calls` id of the assistant message before it, an assistant's tool call that
no tool message answers, a tool call id over 40 characters, an unknown role,
`stream_options` without `stream`, and the wrong key when `record.api_key` is set.
`GET /v1/models` lists `record.models` in OpenAI's shape;
`GET /models` (DeepSeek's base URL) in DeepSeek's.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

TEXT = ["Hello", "!", " How", " can I", " help?"]
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7
SCENARIOS = (
    "gpt-4o-mini",
    "gpt-4o",
    "deepseek-chat",
    "deepseek-reasoner",
    "no-usage",
    "slow",
    "endless",
    "truncated",
    "midstream-error",
    "hang",
    "gated",
    "o3",
    "o4-mini",
    "gpt-5",
    "tool-call-nulls",
)
# What the fake serves by default: every scenario; error-* and early-error-* always.
DEFAULT_MODELS = SCENARIOS
REASONING = re.compile(r"^(o\d|gpt-5)")
ERROR_SCENARIO = re.compile(r"^error-(\d{3})(?:-(\w+))?$")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The `type` OpenAI gives each error `code` (its "Error codes" guide).
CODE_TYPES = {
    "model_not_found": "invalid_request_error",
    "insufficient_quota": "insufficient_quota",
    "rate_limit_exceeded": "requests",
    "unsupported_country_region_territory": "request_forbidden",
    "invalid_api_key": "invalid_request_error",
    "unsupported_parameter": "invalid_request_error",
    "server_error": "server_error",
}


@dataclass
class Record:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # perf_counter of each stream chunk
    disconnects: int = 0  # streams whose client went away before the end
    delay: float = 0.02
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))  # served
    api_key: str | None = None  # when set, requests without `Bearer <api_key>` get 401


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _usage(prompt: int = PROMPT_TOKENS, completion: int = COMPLETION_TOKENS) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _invalid(message: str, param: str | None, code: str | None = None) -> web.Response:
    return _error(400, message, "invalid_request_error", param, code)


def _served(record: Record, scenario: str) -> bool:
    return scenario in record.models or scenario.startswith(("error-", "early-error-"))


def _status_error(status: int, code: str | None) -> web.Response:
    """`error-<status>[-<code>]`: OpenAI's body for that status and code (DeepSeek's 402)."""
    if status == 402:
        return _error(402, "Insufficient Balance", "unknown_error")
    messages = {
        404: "The model does not exist or you do not have access to it.",
        403: "Country, region, or territory not supported.",
        408: "Request timed out.",
        429: "You exceeded your current quota, please check your plan and billing details."
        if code == "insufficient_quota"
        else "Rate limit reached.",
        503: "The engine is currently overloaded, please try again later.",
        529: "Overloaded.",
    }
    message = messages.get(status, f"The server answered {status}.")
    kind = CODE_TYPES.get(code or "", "server_error" if status >= 500 else "invalid_request_error")
    resp = _error(status, message, kind, None, code)
    if status in (429, 503, 529):
        resp.headers["Retry-After"] = "3"
    return resp


def refusal(body: dict[str, Any], scenario: str) -> web.Response | None:
    """What OpenAI's chat completions API refuses in this body, as its answer; else None."""
    if REASONING.match(scenario):
        if "max_tokens" in body:
            return _invalid(
                "Unsupported parameter: 'max_tokens' is not supported with this model."
                " Use 'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        if body.get("temperature") not in (None, 1, 1.0):
            return _invalid(
                f"Unsupported value: 'temperature' does not support {body['temperature']}"
                " with this model. Only the default (1) value is supported.",
                "temperature",
                "unsupported_value",
            )
    if body.get("stream_options") is not None and not body.get("stream"):
        return _invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
            "empty_array",
        )
    pending: list[str] = []  # tool_call ids of the last assistant message not yet answered
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            return _invalid(f"Invalid value: '{role}'. Supported values are: {sorted(ROLES)}.",
                            f"messages[{i}].role", "invalid_value")  # fmt: skip
        if role == "tool":
            answered = message.get("tool_call_id")
            if answered not in pending:
                return _invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a"
                    " preceding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(answered)
            continue
        if pending:
            return _unanswered(i - 1, pending)
        if role == "assistant":
            calls = message.get("tool_calls") or ()
            pending = [c.get("id") for c in calls if isinstance(c, dict)]
            for j, call_id in enumerate(pending):
                if isinstance(call_id, str) and len(call_id) > 40:
                    return _invalid(
                        f"Invalid 'messages[{i}].tool_calls[{j}].id': string too long. Expected"
                        f" a string with maximum length 40, but got a string with length"
                        f" {len(call_id)} instead.",
                        f"messages[{i}].tool_calls[{j}].id",
                        "string_above_max_length",
                    )
    if pending:
        return _unanswered(len(messages) - 1, pending)
    return None


def _unanswered(i: int, ids: list[str]) -> web.Response:
    return _invalid(
        "An assistant message with 'tool_calls' must be followed by tool messages responding"
        " to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(ids),
        f"messages.[{i}].role",
    )


def create_fake_openai(record: Record | None = None) -> web.Application:
    record = record or Record()
    app = web.Application(client_max_size=16 << 20)  # real APIs take bodies of many MiB

    def key_refused(request: web.Request) -> web.Response | None:
        if record.api_key is None or request.headers.get("Authorization") == (
            f"Bearer {record.api_key}"
        ):
            return None
        return _error(401, "Incorrect API key provided.", "invalid_request_error", None,
                      "invalid_api_key")  # fmt: skip

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record.requests.append(body)
        record.headers.append(dict(request.headers))
        if (refused := key_refused(request)) is not None:
            return refused
        model = body.get("model", "")
        scenario = model.split(":")[0]
        deepseek = not request.path.startswith("/v1/")
        if not _served(record, scenario):
            if deepseek:
                return _invalid("Model Not Exist", None)
            return _error(404, f"The model `{model}` does not exist or you do not have access"
                          " to it.", "invalid_request_error", None, "model_not_found")  # fmt: skip
        if (refused := refusal(body, scenario)) is not None:
            return refused
        if scenario == "hang":
            await asyncio.sleep(3600)
        if scenario == "gated":
            await record.gate.wait()
        if scenario == "error-400":
            return _error(400, "Invalid 'messages': too long.", "invalid_request_error")
        if scenario == "error-401":
            return _error(401, "Incorrect API key provided: sk-secret***", "invalid_request_error")
        if scenario == "error-429":
            resp = _error(429, "Rate limit reached.", "rate_limit_error")
            resp.headers["Retry-After"] = "7"
            return resp
        if scenario == "error-500":
            return _error(500, "The server had an error.", "server_error")
        if match := ERROR_SCENARIO.match(scenario):
            return _status_error(int(match[1]), match[2])
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(TEXT),
                "refusal": None,
            }
            answer: dict[str, Any] = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
                ],
            }
            if scenario != "no-usage":
                answer["usage"] = _usage()
            return web.Response(body=orjson.dumps(answer), content_type="application/json")

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        try:
            await _stream(resp, scenario, model, include_usage, record)
        except (ConnectionResetError, asyncio.CancelledError):
            record.disconnects += 1
            raise
        return resp

    async def models(request: web.Request) -> web.Response:
        if (refused := key_refused(request)) is not None:
            return refused
        owner = "openai" if request.path.startswith("/v1/") else "deepseek"
        data: list[dict[str, Any]] = []
        for name in record.models:
            entry: dict[str, Any] = {"id": name, "object": "model", "owned_by": owner}
            if owner == "openai":
                entry["created"] = 1700000000
            data.append(entry)
        return web.json_response({"object": "list", "data": data})

    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    return app


async def _stream(
    resp: web.StreamResponse, scenario: str, model: str, include_usage: bool, record: Record
) -> None:
    async def send(data: bytes) -> None:
        record.sent_at.append(time.perf_counter())
        await resp.write(data)

    deepseek = scenario.startswith("deepseek")
    if scenario.startswith("early-error-"):
        code = scenario.removeprefix("early-error-")
        error = {"message": f"Stream failed: {code}.", "type": CODE_TYPES.get(code, "server_error"),
                 "param": None, "code": code}  # fmt: skip
        await resp.write(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
        return
    await send(_chunk(model, {"role": "assistant", "content": ""}))
    if scenario == "tool-call-nulls":
        first = {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "weather", "arguments": ""}}  # fmt: skip
        await send(_chunk(model, {"role": None, "content": None, "tool_calls": [first]}))
        for piece in ('{"city": ', '"Paris"}'):
            call = {"index": 0, "id": None, "type": None,
                    "function": {"name": None, "arguments": piece}}  # fmt: skip
            await send(_chunk(model, {"role": None, "content": None, "tool_calls": [call]}))
        await send(_chunk(model, {"content": None}, "tool_calls", usage=_usage()))
        await resp.write(b"data: [DONE]\n\n")
        return
    if scenario == "deepseek-reasoner":
        for piece in ("Let me", " think."):
            await send(_chunk(model, {"content": None, "reasoning_content": piece}))
    if scenario == "endless":
        while True:
            await asyncio.sleep(0.01)
            await send(_chunk(model, {"content": "la "}))
    for i, piece in enumerate(TEXT):
        if scenario == "slow":
            await asyncio.sleep(record.delay)
        if deepseek and i == 2:
            await resp.write(b": keep-alive\n\n")
        await send(_chunk(model, {"content": piece}))
        if scenario == "midstream-error" and i == 1:
            await resp.write(
                b'data: {"error": {"message": "The model crashed.", "type": "server_error"}}\n\n'
            )
            return
        if scenario == "truncated" and i == 2:
            return
    if deepseek:
        await send(_chunk(model, {"content": ""}, "stop", usage=_usage()))
    else:
        await send(_chunk(model, {}, "stop"))
        if include_usage and scenario != "no-usage":
            usage_chunk = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": _usage(),
            }
            await send(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
