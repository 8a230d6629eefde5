"""Provider registry: config `kind` -> the class that speaks that upstream's API."""

from __future__ import annotations

from proxy.config import ProviderConfig
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import Provider
from proxy.providers.gemini import GeminiProvider
from proxy.providers.openai import OpenAIProvider

KINDS: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}


def build_provider(config: ProviderConfig) -> Provider:
    return KINDS[config.kind](config)
