"""Request bodies in: read, decode and validate a chat completions request.

Every failure is a BadRequest naming the field, so a client sees at once what to fix. Fields
we do not check here (tools, stop, seed, response_format, ...) pass through to upstreams that
understand them; providers that translate check what they translate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from proxy.config import PUBLIC_PREFIX
from proxy.core import ChatRequest
from proxy.errors import BadRequest, PayloadTooLarge, RequestTimeout
from proxy.estimates import estimate_prediction_tokens, estimate_prompt_tokens

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# name -> (low, high): numeric fields and their ranges, as in OpenAI's API reference.
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}
# name -> largest value. `n` as OpenAI limits it (translators build `n` of everything); no
# model has 2**31 tokens, and a larger count would overflow the quota holds (64-bit in Redis).
POSITIVE_INTS = {"max_tokens": 2**31 - 1, "max_completion_tokens": 2**31 - 1, "n": 128}


async def read_json_object(request: web.Request, limit: int, seconds: float) -> dict[str, Any]:
    """The request body as a JSON object, whatever its Content-Type (curl's `-d` sends a form
    type; OpenAI's API reads the body as JSON all the same); 413 past `limit` bytes, 408 when
    it takes longer than `seconds` to arrive, 400 for anything else."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body too large: the limit is {limit} bytes.")
    raw = bytearray()
    content = request.content
    try:
        if content.is_eof():  # the whole body came with the headers: no timer needed
            raw += content.read_nowait()
            if len(raw) > limit:
                raise PayloadTooLarge(f"Request body too large: the limit is {limit} bytes.")
        else:
            async with asyncio.timeout(seconds):
                async for piece in content.iter_any():
                    raw += piece
                    if len(raw) > limit:
                        raise PayloadTooLarge(
                            f"Request body too large: the limit is {limit} bytes."
                        )
    except TimeoutError as exc:
        raise RequestTimeout(f"The request body did not arrive within {seconds:g} s.") from exc
    except web.RequestPayloadError as exc:
        # aiohttp decodes Content-Encoding and chunked framing as the body comes in.
        raise BadRequest("Request body could not be read: bad encoding or framing.") from exc
    if not raw:
        raise BadRequest("Request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("Request body is not valid UTF-8.") from exc
        raise BadRequest(f"Request body is not valid JSON: {exc.msg}.") from exc
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.")
    # orjson reads 1024 levels of nesting but writes only 254, and repr() of a value nested
    # ~1000 deep overflows the stack: a body that cannot be written back cannot be forwarded.
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise BadRequest("Request body is nested too deeply.") from exc
    return body


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _long_ids(message: dict[str, Any]) -> bool:
    """Whether a tool call id of the message is over OpenAI's 40 characters (ids of other
    providers, e.g. Gemini's with their signatures: providers/openai.py shortens them)."""
    ids = [message.get("tool_call_id")]
    ids += [c.get("id") for c in message.get("tool_calls") or ()]
    return any(isinstance(v, str) and len(v) > 40 for v in ids)


def _check_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise BadRequest(f"'{where}' must be an object.", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise BadRequest(
            f"'{where}.role' must be one of {', '.join(sorted(ROLES))}.", param=f"{where}.role"
        )
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and (
        not isinstance(tool_calls, list) or not all(isinstance(c, dict) for c in tool_calls)
    ):
        raise BadRequest(
            f"'{where}.tool_calls' must be an array of objects.", param=f"{where}.tool_calls"
        )
    content = message.get("content")
    if content is None:
        if role == "assistant" and (tool_calls or message.get("function_call")):
            return
        raise BadRequest(f"'{where}.content' is required.", param=f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequest(
            f"'{where}.content' must be a string or an array of content parts.",
            param=f"{where}.content",
        )
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(
                f"'{where}.content[{j}]' must be an object with a 'type'.",
                param=f"{where}.content[{j}]",
            )
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise BadRequest(
                f"'{where}.content[{j}].text' must be a string.", param=f"{where}.content[{j}].text"
            )


def validate_chat(
    body: dict[str, Any],
    *,
    models: Mapping[str, Any],
    accept: str,
    default_temperature: float,
    openai: bool = False,
) -> ChatRequest:
    """Check a chat completions body and apply the gateway's defaults.

    `openai`: the request came by the OpenAI-compatible profile (`/v1`), where `stream`
    absent means false, as in OpenAI's API; on the Woozlit API it means streaming, unless
    `accept` asks for JSON only. Raises BadRequest naming the field (`param`).
    """
    model = body.get("model")
    if model is None:
        raise BadRequest("'model' is required.", param="model")
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string.", param="model")
    if not model.startswith(PUBLIC_PREFIX):
        raise BadRequest(
            f"'model' must start with '{PUBLIC_PREFIX}', e.g. 'woozlit/gpt-4o-mini'.", param="model"
        )
    if model not in models:
        raise BadRequest(
            f"Unknown model '{model}'; GET /v1/models lists the models.",
            param="model",
            code="model_not_found",
        )

    messages = body.get("messages")
    if messages is None:
        raise BadRequest("'messages' is required.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", param="messages")
    long_tool_ids = False
    for i, message in enumerate(messages):
        _check_message(i, message)
        if message["role"] in ("assistant", "tool"):
            long_tool_ids = long_tool_ids or _long_ids(message)

    for name, (low, high) in RANGES.items():
        value = body.get(name)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise BadRequest(f"'{name}' must be a number from {low:g} to {high:g}.", param=name)
    for name, high in POSITIVE_INTS.items():
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high
        ):
            raise BadRequest(f"'{name}' must be an integer from 1 to {high}.", param=name)

    stream = body.get("stream")
    if stream is None and openai:
        stream = False
    elif stream is None:
        # The seed says streaming by default; the OpenAI SDKs, which expect JSON when they do
        # not ask for a stream, announce it with Accept: application/json (interface.md).
        accept = accept.lower()
        stream = not ("application/json" in accept and "text/event-stream" not in accept)
    elif not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean.", param="stream")
    body["stream"] = stream

    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("'stream_options' must be an object.", param="stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise BadRequest(
                "'stream_options.include_usage' must be a boolean.",
                param="stream_options.include_usage",
            )

    # The seed's default temperature, sent upstream explicitly; but not beside a `top_p` the
    # client set, which it would otherwise override where a provider takes only one of the
    # two (Claude since Sonnet 4.5).
    if body.get("temperature") is None and body.get("top_p") is None:
        body["temperature"] = default_temperature

    # Both names mean the same cap (max_tokens is its older name); given both, the smaller.
    caps = [body[n] for n in ("max_completion_tokens", "max_tokens") if body.get(n) is not None]
    max_tokens = min(caps) if caps else None
    if max_tokens is None:
        # The cap the gateway sends when the client sets none: the largest of the deployments
        # that may serve it, each of which then gets its own (chat.ChatRequest.cap_for).
        cap = max(deployment.default_max_tokens for deployment, _ in models[model])
    else:
        cap = max_tokens
    return ChatRequest(
        body=body,
        public_model=model,
        stream=stream,
        include_usage=include_usage and stream,
        max_tokens=max_tokens,
        prompt_tokens_estimate=estimate_prompt_tokens(body),
        choices=body.get("n") or 1,
        cap=cap,
        completion_extra=estimate_prediction_tokens(body),
        long_tool_ids=long_tool_ids,
    )
