"""A fake OpenAI-compatible upstream that speaks the real wire format, with scenarios.

The scenario is chosen by the upstream model name the gateway sends (the part before any
`:`), so one fake serves many tests:

    gpt-4o-mini      a normal answer ("Hello! How can I help?", split into 5 chunks)
    deepseek-chat    DeepSeek's flavour: `: keep-alive` comments, usage on the finish chunk
    deepseek-reasoner  `reasoning_content` deltas before the content
    no-usage         an answer with no usage at all (the gateway must estimate)
    slow             chunks `delay` seconds apart (default 0.02), with send times recorded
    endless          chunks forever, 0.01 s apart, until the client goes away
    truncated        the stream stops without [DONE]
    midstream-error  an error event after two chunks
    error-400 / error-401 / error-429 / error-500   that status with OpenAI's error body
    hang             never answers
    gated            answers once the test sets `record.gate`
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

TEXT = ["Hello", "!", " How", " can I", " help?"]
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7


@dataclass
class Record:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # perf_counter of each stream chunk
    disconnects: int = 0  # streams whose client went away before the end
    delay: float = 0.02
    gate: asyncio.Event = field(default_factory=asyncio.Event)


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


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def create_fake_openai(record: Record | None = None) -> web.Application:
    record = record or Record()
    app = web.Application(client_max_size=16 << 20)  # real APIs take bodies of many MiB

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record.requests.append(body)
        record.headers.append(dict(request.headers))
        model = body.get("model", "")
        scenario = model.split(":")[0]
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

    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/chat/completions", completions)
    return app


async def _stream(
    resp: web.StreamResponse, scenario: str, model: str, include_usage: bool, record: Record
) -> None:
    async def send(data: bytes) -> None:
        record.sent_at.append(time.perf_counter())
        await resp.write(data)

    deepseek = scenario.startswith("deepseek")
    await send(_chunk(model, {"role": "assistant", "content": ""}))
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
