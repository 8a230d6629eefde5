"""OpenAI-compatible upstreams: OpenAI, DeepSeek, and any vLLM or Ollama server.

The request passes through as the client sent it, with the upstream's model name,
`stream_options.include_usage` always on so that every stream ends with the real usage,
and the output cap that was reserved (`ChatRequest.cap_for`) under the name the upstream
reads (`max_tokens_parameter`: `max_completion_tokens` for OpenAI, `max_tokens` elsewhere).
DeepSeek differs in small ways handled here: usage may ride on the finish chunk,
`: keep-alive` comments come between events, and deltas may carry `reasoning_content`.
A deployment's `params` are added where the client set none. Tool call ids longer than
OpenAI's limit (40 characters: "Invalid 'messages[2].tool_calls[0].id': string too long",
`string_above_max_length`) come from other providers (a Gemini id carries its thought
signature) in a conversation that changed model: each is sent as a short digest of itself,
the same in the assistant's call and in the tool message that answers it. A provider with
`responses_api` (OpenAI) also answers Responses clients natively (openai_responses.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.core import ChatRequest, Usage
from proxy.errors import UpstreamError
from proxy.estimates import text_weight
from proxy.providers.base import (
    Provider,
    StreamTranslator,
    UpstreamRequest,
    load_json,
    openai_error_object,
)
from proxy.providers.openai_responses import OpenAIResponsesNative
from proxy.sse import SSEEvent

MAX_TOOL_ID = 40


def _short_id(value: Any) -> Any:
    if not isinstance(value, str) or len(value) <= MAX_TOOL_ID:
        return value
    return "call_" + hashlib.blake2b(value.encode(), digest_size=16).hexdigest()


def _short_tool_ids(messages: list[Any]) -> list[Any]:
    """`messages` with every tool call id over MAX_TOOL_ID characters shortened (copies of the
    messages that change; the client's body is left as it is, for another deployment)."""
    out = []
    for message in messages:
        if isinstance(message, dict):
            if "tool_call_id" in message:
                message = {**message, "tool_call_id": _short_id(message["tool_call_id"])}
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                calls = [
                    {**c, "id": _short_id(c.get("id"))} if isinstance(c, dict) else c for c in calls
                ]
                message = {**message, "tool_calls": calls}
        out.append(message)
    return out


def usage_from(payload: Any) -> Usage | None:
    if not isinstance(payload, dict):
        return None
    prompt = payload.get("prompt_tokens")
    completion = payload.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def _drop_nulls(item: dict[str, Any]) -> None:
    # A null is an absent key to OpenAI's own streams, and clients print it ("None").
    if None in item.values():
        for key in [key for key, value in item.items() if value is None]:
            del item[key]


def _tidy_deltas(choices: list[Any]) -> int:
    """Drop the null-valued keys of each delta (DeepSeek's `"content": null` beside
    `reasoning_content`, a `role: null`, nulls in tool calls) in place, and count what the
    deltas carry in ASCII-character equivalents: one pass over the few keys of each."""
    chars = 0
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        _drop_nulls(delta)
        for name in ("content", "reasoning_content"):
            text = delta.get(name)
            if isinstance(text, str):
                chars += text_weight(text)
        calls = delta.get("tool_calls")
        if not isinstance(calls, list):
            continue
        for call in calls:
            if not isinstance(call, dict):
                continue
            _drop_nulls(call)
            function = call.get("function")
            if isinstance(function, dict):
                _drop_nulls(function)
                chars += text_weight(str(function.get("arguments") or "")) + text_weight(
                    str(function.get("name") or "")
                )
    return chars


class OpenAIStream(StreamTranslator):
    def __init__(self, chat: ChatRequest, provider: Provider | None = None):
        super().__init__(chat)
        self.provider = provider  # maps error events; without one, each is a 502

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if event.comment or not event.data:
            return []
        if event.data == b"[DONE]":
            self.done = True
            return []
        chunk = load_json(event.data, "stream event")
        if "error" in chunk and "choices" not in chunk:
            # Classified like an error answer: a stream that fails before its first chunk
            # goes on to the next deployment when the fault is the deployment's.
            error = openai_error_object(chunk)
            if self.provider is None:
                raise UpstreamError(error.get("message") or "The upstream provider failed.")
            raise self.provider.error_from_object(error, {})
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices:
            self.produced_chars += _tidy_deltas(choices)
        usage = chunk.get("usage")
        if usage is not None:
            self.usage = usage_from(usage) or self.usage
            if not self.chat.include_usage:
                # We asked for usage; the client did not. Keep it to ourselves.
                if not choices:
                    return []
                del chunk["usage"]
        if not isinstance(choices, list):
            # Not a chunk (no `choices`): nothing a client could read; its usage, if any,
            # goes out alone, as OpenAI sends it.
            return [{"choices": [], "usage": chunk["usage"]}] if usage is not None else []
        return [chunk]


class OpenAIProvider(Provider):
    kind = "openai"

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.url = f"{config.base_url}/chat/completions"
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"
        if config.responses_api:  # Responses clients are answered natively
            self.natives["openai-responses"] = OpenAIResponsesNative(config)

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        body = dict(chat.body)
        for name, value in deployment.params.items():
            if body.get(name) is None:  # a client's null is no value of its own
                body[name] = value
        body["model"] = deployment.model
        if chat.long_tool_ids:
            body["messages"] = _short_tool_ids(body["messages"])
        # The cap the upstream obeys is the one reserved, under the name it reads.
        body.pop("max_tokens", None)
        body.pop("max_completion_tokens", None)
        body[self.config.max_tokens_parameter] = chat.cap_for(deployment)
        body["stream"] = chat.stream
        if chat.stream:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        else:
            body.pop("stream_options", None)
        return UpstreamRequest(self.url, self.headers, orjson.dumps(body))

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage | None]:
        payload = load_json(body, "answer")
        if not isinstance(payload.get("choices"), list):
            raise UpstreamError("The upstream provider sent a malformed answer.")
        return payload, usage_from(payload.get("usage"))

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return OpenAIStream(chat, self)
