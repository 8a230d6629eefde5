"""Answers and errors in the Messages API's shapes.

An answer translated from a chat completion (OpenAI, DeepSeek, Gemini deployments) becomes
a `message`: `reasoning_content` (DeepSeek's) a `thinking` block with an empty signature
(no provider signs it; the translation drops thinking blocks when the client sends them
back), the content a `text` block, each tool call a `tool_use` block with its arguments
parsed (arguments that are not a JSON object give `input: {}`); `finish_reason` stop ->
`end_turn`, length -> `max_tokens`, tool_calls (and function_call) -> `tool_use`,
content_filter -> `refusal`. The usage is the charged one: `input_tokens` is the prompt
less the cached tokens the provider reports, which are `cache_read_input_tokens`, so that
input + cache reads + output is exactly the charge, as for Claude.

Both paths answer with the gateway's request id as the message `id` (the request's
`x-request-id` too, and the chat completions `id`), and the public model name as `model`.

Errors: `{"type": "error", "error": {"type", "message"}}`, the type from the status as
Anthropic's errors page lists them (`ERROR_TYPES`), the sentence ours, headers kept
(rate limits, Retry-After, x-should-retry). Mid-stream, the same object is an `error` event.

Sources (platform.claude.com/docs/en/...): the Messages API reference (`api/messages`: the
message object, `stop_reason`, `usage`), errors (`api/errors`: statuses, types, the error
shape, errors in streams), prompt caching (`build-with-claude/prompt-caching`: the usage's
cache fields).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.core import Usage
from proxy.errors import GatewayError

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_object(exc: GatewayError) -> dict[str, Any]:
    """Anthropic's error body for `exc`: other 4xx are invalid_request_error, other 5xx
    api_error (the errors page)."""
    status = exc.status
    default = "invalid_request_error" if status < 500 else "api_error"
    kind = ERROR_TYPES.get(status, default)
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_response(exc: GatewayError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=orjson.dumps(error_object(exc)),
        content_type="application/json",
        headers=exc.headers,
    )


def error_event(exc: GatewayError) -> bytes:
    return b"event: error\ndata: " + orjson.dumps(error_object(exc)) + b"\n\n"


def stop_reason(finish: Any) -> str:
    return STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


def usage_fields(usage: Usage, cached: Any = 0) -> dict[str, int]:
    """The Messages usage of a charge; `cached`: the cached prompt tokens OpenAI reports."""
    cached = cached if isinstance(cached, int) and 0 <= cached <= usage.prompt_tokens else 0
    return {
        "input_tokens": usage.prompt_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.completion_tokens,
    }


def cached_tokens(usage: Any) -> Any:
    """OpenAI's `usage.prompt_tokens_details.cached_tokens`, if any."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    return details.get("cached_tokens") if isinstance(details, dict) else 0


def tool_input(arguments: Any) -> dict[str, Any]:
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def message_from(completion: dict[str, Any], usage: Usage, rid: str, model: str) -> dict[str, Any]:
    """A chat completion as a Messages `message`."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or ""),
                "name": str(function.get("name") or ""),
                "input": tool_input(function.get("arguments")),
            }
            content.append(block)
    return {
        "id": rid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": usage_fields(usage, cached_tokens(completion.get("usage"))),
    }
