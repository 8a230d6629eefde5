"""OpenAI's chat completions wire format, as the fake upstream writes it: chunks, answers,
usage, error bodies, SSE events and HTTP/1.1 chunked framing.

Every behaviour of the fake (tests/fakes/openai_upstream.py: scripted, billing, the
benchmarks' pre-encoded answers, the chaos run's faults) builds its bytes here, so that
they differ only where the behaviour means them to.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

CREATED = 1700000000
DONE = b"data: [DONE]\n\n"
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


def _head(kind: str, model: Any, id: str, created: int, fingerprint: str | None) -> dict[str, Any]:
    head = {"id": id, "object": kind, "created": created, "model": model}
    if fingerprint is not None:
        head["system_fingerprint"] = fingerprint
    return head


def chunk(
    model: Any,
    delta: dict[str, Any],
    finish: str | None = None,
    *,
    index: int = 0,
    id: str = "chatcmpl-upstream",
    created: int = CREATED,
    fingerprint: str | None = "fp_fake",
    logprobs: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """One `chat.completion.chunk` with one choice (`extra`: more top-level fields)."""
    choice: dict[str, Any] = {"index": index, "delta": delta}
    if logprobs:
        choice["logprobs"] = None
    choice["finish_reason"] = finish
    return {
        **_head("chat.completion.chunk", model, id, created, fingerprint),
        "choices": [choice],
        **extra,
    }


def usage_chunk(
    model: Any,
    usage: dict[str, Any],
    *,
    id: str = "chatcmpl-upstream",
    created: int = CREATED,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """The last chunk of a stream with `stream_options.include_usage`: no choices, the usage."""
    return {**_head("chat.completion.chunk", model, id, created, fingerprint), "choices": [],
            "usage": usage}  # fmt: skip


def completion(
    model: Any,
    contents: list[str],
    usage: dict[str, Any] | None,
    *,
    finish: str = "stop",
    id: str = "chatcmpl-upstream",
    created: int = CREATED,
    fingerprint: str | None = "fp_fake",
) -> dict[str, Any]:
    """A `chat.completion` with one choice per content (`n`), and its usage if not None."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
        }
        for i, content in enumerate(contents)
    ]
    answer = {**_head("chat.completion", model, id, created, fingerprint), "choices": choices}
    if usage is not None:
        answer["usage"] = usage
    return answer


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def event(data: dict[str, Any]) -> bytes:
    """One SSE event: `data: <json>` and a blank line."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def frame(data: bytes) -> bytes:
    """One chunk of HTTP/1.1 chunked transfer coding."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def error(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """OpenAI's error answer: `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def invalid(message: str, param: str | None, code: str | None = None) -> web.Response:
    """A 400 `invalid_request_error`."""
    return error(400, message, "invalid_request_error", param, code)
