"""The Gemini provider: a `providers:` entry of kind `gemini`, at `{base}/v1beta/models/...`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.core import ChatRequest, Usage
from proxy.errors import BadRequest, GatewayError
from proxy.providers.base import Provider, StreamTranslator, UpstreamRequest, load_json
from proxy.providers.gemini.errors import error_from_body, error_object, map_error
from proxy.providers.gemini.request import build_body
from proxy.providers.gemini.response import completion_from
from proxy.providers.gemini.stream import GeminiStream


class GeminiProvider(Provider):
    kind = "gemini"

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        base = config.base_url.rstrip("/")
        # The documented base has no version; accept one given with it all the same.
        self.base = base if base.endswith(("/v1beta", "/v1")) else f"{base}/v1beta"
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            self.headers["x-goog-api-key"] = config.api_key  # never `?key=`: URLs get logged

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        model = deployment.model if "/" in deployment.model else f"models/{deployment.model}"
        method = "streamGenerateContent?alt=sse" if chat.stream else "generateContent"
        url = f"{self.base}/{quote(model, safe='/')}:{method}"
        try:
            data = orjson.dumps(build_body(chat, chat.cap_for(deployment)))
        except orjson.JSONEncodeError as exc:
            # Tool arguments and results arrive as JSON text, parsed here, and may nest past
            # the 254 levels orjson writes.
            raise BadRequest("The request is nested too deeply for this model.") from exc
        return UpstreamRequest(url, self.headers, data)

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage | None]:
        payload = load_json(body, "answer")
        error = error_object(payload)
        if error is not None:
            code = error.get("code")
            raise self.map_error(code if isinstance(code, int) else 500, error, {})
        return completion_from(payload, chat)

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return GeminiStream(chat, self)

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        return error_from_body(self.config.name, status, body, headers)

    def map_error(
        self, status: int, error: dict[str, Any], headers: Mapping[str, str]
    ) -> GatewayError:
        """A Google error as ours (`errors.map_error`)."""
        return map_error(self.config.name, status, error, headers)
