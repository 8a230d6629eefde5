"""OpenAI's chat completions, as clients speak it: `POST /chat/completions` on both API
profiles (profiles.py), its request read and validated into a `ChatRequest`, its answer
written as a `chat.completion` (or, streamed, as `chat.completion.chunk`s).

Every failure of a request is a BadRequest naming the field, so a client sees at once what
to fix. Fields we do not check here (tools, stop, seed, response_format, ...) pass through
to upstreams that understand them; providers that translate check what they translate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from proxy.app_state import CONFIG, ROUTER
from proxy.config import PUBLIC_PREFIX, resolve_alias
from proxy.core import ChatRequest, Usage
from proxy.errors import BadRequest
from proxy.estimates import estimate_prediction_tokens, estimate_prompt_tokens
from proxy.exchange import ClientProtocol
from proxy.profiles import openai_profile
from proxy.protocols.body import read_json_object
from proxy.protocols.openai_chat_stream import OpenAIChatStream

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


class OpenAIChat(ClientProtocol):
    """OpenAI's chat completions: the request's body, the answer's shape. No provider
    answers natively (`native` is always False): every one translates to this protocol."""

    name = "chat_completions"
    path = "/chat/completions"

    async def read(self, request: web.Request) -> ChatRequest:
        app = request.app
        server = app[CONFIG].server
        body = await read_json_object(request, server.max_body_bytes, server.body_timeout_seconds)
        return validate_chat(
            body,
            models=app[ROUTER].routes,
            aliases=app[CONFIG].aliases,
            accept=request.headers.get("Accept", ""),
            default_temperature=server.default_temperature,
            openai=openai_profile(request),
        )

    def body(
        self, payload: dict[str, Any], usage: Usage, chat: ChatRequest, rid: str, native: bool
    ) -> bytes:
        return completion_body(payload, usage, chat, rid)

    def encoder(self, chat: ChatRequest, rid: str, native: bool) -> OpenAIChatStream:
        return OpenAIChatStream(rid, chat)


# POST /chat/completions, on both profiles.
OPENAI_CHAT = OpenAIChat()


def completion_body(payload: dict[str, Any], usage: Usage, chat: ChatRequest, rid: str) -> bytes:
    """A provider's answer, translated to OpenAI's shape, as the client gets it."""
    payload["id"] = rid
    payload["object"] = "chat.completion"
    if not isinstance(payload.get("created"), int):
        payload["created"] = int(time.time())
    payload["model"] = chat.public_model
    payload["usage"] = {**(payload.get("usage") or {}), **usage.as_dict()}
    return orjson.dumps(payload)


def validate_chat(
    body: dict[str, Any],
    *,
    models: Mapping[str, Any],
    accept: str,
    default_temperature: float,
    openai: bool = False,
    aliases: Mapping[str, str] | None = None,
) -> ChatRequest:
    """Check a chat completions body and apply the gateway's defaults.

    `openai`: the request came by the OpenAI-compatible profile (`/v1`), where `stream`
    absent means false, as in OpenAI's API; on the Woozlit API it means streaming, unless
    `accept` asks for JSON only. A `model` that is one of `aliases` (config.resolve_alias)
    becomes its public name. Raises BadRequest naming the field (`param`).
    """
    model = _check_model(body.get("model"), models, aliases or {})
    body["model"] = model
    long_tool_ids = _check_messages(body.get("messages"))
    _check_numbers(body)
    body["stream"] = stream = _stream(body.get("stream"), accept, openai)
    include_usage = _include_usage(body.get("stream_options"))

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
        # that may serve it, each of which then gets its own (core.ChatRequest.cap_for).
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


def _check_model(given: Any, models: Mapping[str, Any], aliases: Mapping[str, str]) -> str:
    if given is None:
        raise BadRequest("'model' is required.", param="model")
    if not isinstance(given, str):
        raise BadRequest("'model' must be a string.", param="model")
    model: str = given
    if model not in models and aliases:
        model = resolve_alias(aliases, model) or model
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
    return model


def _check_messages(messages: Any) -> bool:
    """Check `messages`; whether a tool call id in them is longer than OpenAI's 40 characters."""
    if messages is None:
        raise BadRequest("'messages' is required.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", param="messages")
    long_tool_ids = False
    for i, message in enumerate(messages):
        _check_message(i, message)
        if message["role"] in ("assistant", "tool"):
            long_tool_ids = long_tool_ids or _long_ids(message)
    return long_tool_ids


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


def _long_ids(message: dict[str, Any]) -> bool:
    """Whether a tool call id of the message is over OpenAI's 40 characters (ids of other
    providers, e.g. Gemini's with their signatures: providers/openai.py shortens them)."""
    ids = [message.get("tool_call_id")]
    ids += [c.get("id") for c in message.get("tool_calls") or ()]
    return any(isinstance(v, str) and len(v) > 40 for v in ids)


def _check_numbers(body: dict[str, Any]) -> None:
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stream(stream: Any, accept: str, openai: bool) -> bool:
    """Whether to answer with a stream (`validate_chat` says when)."""
    if stream is None and openai:
        return False
    if stream is None:
        # The seed says streaming by default; the OpenAI SDKs, which expect JSON when they do
        # not ask for a stream, announce it with Accept: application/json (interface.md).
        accept = accept.lower()
        return not ("application/json" in accept and "text/event-stream" not in accept)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean.", param="stream")
    return stream


def _include_usage(options: Any) -> bool:
    """`stream_options.include_usage`: the client asks for a last chunk with the usage."""
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object.", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise BadRequest(
            "'stream_options.include_usage' must be a boolean.",
            param="stream_options.include_usage",
        )
    return include_usage
