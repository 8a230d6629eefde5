"""OpenAI-compatible upstreams: OpenAI, DeepSeek, and any vLLM or Ollama server.

The request passes through as the client sent it, with the upstream's model name,
`stream_options.include_usage` always on so that every stream ends with the real usage,
and the output cap that was reserved (`ChatRequest.cap_for`) under the name the upstream
reads (`max_tokens_parameter`: `max_completion_tokens` for OpenAI, `max_tokens` elsewhere).
DeepSeek differs in small ways handled here: usage may ride on the finish chunk,
`: keep-alive` comments come between events, and deltas may carry `reasoning_content`.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.errors import UpstreamError
from proxy.providers.base import (
    ChatRequest,
    Provider,
    StreamTranslator,
    UpstreamRequest,
    Usage,
    load_json,
)
from proxy.sse import SSEEvent
from proxy.tokens import text_weight


def usage_from(payload: Any) -> Usage | None:
    if not isinstance(payload, dict):
        return None
    prompt = payload.get("prompt_tokens")
    completion = payload.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def _delta_chars(choices: Any) -> int:
    chars = 0
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        for name in ("content", "reasoning_content"):
            text = delta.get(name)
            if isinstance(text, str):
                chars += text_weight(text)
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                chars += text_weight(str(function.get("arguments") or "")) + text_weight(
                    str(function.get("name") or "")
                )
    return chars


class OpenAIStream(StreamTranslator):
    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if event.comment or not event.data:
            return []
        if event.data == b"[DONE]":
            self.done = True
            return []
        chunk = load_json(event.data, "stream event")
        if "error" in chunk and "choices" not in chunk:
            message = chunk["error"].get("message") if isinstance(chunk["error"], dict) else None
            raise UpstreamError(message or "The upstream provider failed mid-stream.")
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices:
            self.produced_chars += _delta_chars(choices)
        usage = chunk.get("usage")
        if usage is not None:
            self.usage = usage_from(usage) or self.usage
            if not self.chat.include_usage:
                # We asked for usage; the client did not. Keep it to ourselves.
                if not choices:
                    return []
                del chunk["usage"]
        return [chunk]


class OpenAIProvider(Provider):
    kind = "openai"

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.url = f"{config.base_url}/chat/completions"
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        body = dict(chat.body)
        body["model"] = deployment.model
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
        return OpenAIStream(chat)
