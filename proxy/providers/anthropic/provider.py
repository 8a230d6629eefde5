"""The Anthropic provider: a `providers:` entry of kind `anthropic`, at `{base}/v1/messages`.

It translates chat completions requests; a Messages API client's request goes through its
native speaker instead (`natives["anthropic-messages"]`, native.py), untranslated, and a
count_tokens request through `counter`.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.core import ChatRequest, Usage
from proxy.errors import BadRequest, GatewayError, UpstreamError
from proxy.providers.anthropic.errors import error_from_body, error_from_type
from proxy.providers.anthropic.native import DIALECT, AnthropicCounter, AnthropicNative
from proxy.providers.anthropic.request import answer_tool_name, build_body
from proxy.providers.anthropic.response import completion_from
from proxy.providers.anthropic.stream import AnthropicStream
from proxy.providers.base import Provider, StreamTranslator, UpstreamRequest, load_json

# The `anthropic-version` header (platform.claude.com/docs/en/api/versioning).
API_VERSION = "2023-06-01"


class AnthropicProvider(Provider):
    kind = "anthropic"

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        base = config.base_url.rstrip("/")
        self.url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self.headers = {
            "Content-Type": "application/json",
            "anthropic-version": API_VERSION,
            **config.headers,
        }
        if config.api_key:
            self.headers["x-api-key"] = config.api_key
        self.natives[DIALECT] = AnthropicNative(self)
        self.counter = AnthropicCounter(self)  # POST /v1/messages/count_tokens

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        body = build_body(chat, deployment.model, chat.cap_for(deployment))
        try:
            data = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            # Tool call arguments arrive as JSON text, parsed here, and may nest past orjson's 254.
            raise BadRequest("The request is nested too deeply for this model.") from exc
        return UpstreamRequest(self.url, self.headers, data)

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage | None]:
        payload = load_json(body, "answer")
        if not isinstance(payload.get("content"), list):
            if payload.get("type") == "error":
                raise self.error_from_type(payload.get("error"), {})
            raise UpstreamError("The upstream provider sent a malformed answer.")
        return completion_from(payload, answer_tool_name(chat))

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return AnthropicStream(chat, self)

    def error_from_type(
        self, error: Any, headers: dict[str, str], status: int | None = None
    ) -> GatewayError:
        """Anthropic's error `type` (and the HTTP status, when there is one) as ours
        (`errors.error_from_type`)."""
        return error_from_type(self.config.name, error, headers, status)

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        return error_from_body(self.config.name, status, body, headers)
