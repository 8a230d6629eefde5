"""Provider registry: config `kind` -> the class that speaks that upstream's API.

The kinds are `proxy.config.Kind`, listed once there: config validates `kind` against them,
and cannot import this package, whose modules import it. Adding a provider is adding its
module, its `Kind` and its case below; mypy fails on a `Kind` without a case.
"""

from __future__ import annotations

from typing import assert_never

from proxy.config import Kind, ProviderConfig
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import Provider
from proxy.providers.gemini import GeminiProvider
from proxy.providers.openai import OpenAIProvider


def provider_class(kind: Kind) -> type[Provider]:
    """The class that speaks `kind`'s API."""
    match kind:
        case Kind.OPENAI:
            return OpenAIProvider
        case Kind.ANTHROPIC:
            return AnthropicProvider
        case Kind.GEMINI:
            return GeminiProvider
        case _:
            assert_never(kind)


def build_provider(config: ProviderConfig) -> Provider:
    """The provider of `config`, ready to build requests and read answers."""
    return provider_class(config.kind)(config)
