"""Placeholder until the native gemini translation lands: every request answers 501."""

from __future__ import annotations

from typing import Any

from proxy.config import Deployment
from proxy.errors import NotImplementedByGateway
from proxy.providers.base import ChatRequest, Provider, StreamTranslator, UpstreamRequest, Usage


class GeminiProvider(Provider):
    kind = "gemini"

    def _refuse(self) -> NotImplementedByGateway:
        return NotImplementedByGateway(
            f"Provider kind 'gemini' is not implemented yet; model not available."
        )

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        raise self._refuse()

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage | None]:
        raise self._refuse()

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        raise self._refuse()
