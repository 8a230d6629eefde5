"""The provider interface: pure translation between OpenAI's shapes and one upstream's.

A provider does no I/O. `proxy/upstream.py` sends what `build_request` returns, then hands
the answer back: a whole body to `parse_response`, or SSE events one by one to the
`StreamTranslator` from `stream_translator`. The gateway stamps `id`, `object`, `created` and
`model` on everything a provider returns, so providers only produce `choices` and `usage`.

Adding a provider is one module with a `Provider` subclass and one line in `providers/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.errors import (
    BadRequest,
    GatewayError,
    ServiceUnavailable,
    UpstreamError,
)
from proxy.sse import SSEEvent
from proxy.tokens import estimate_text_tokens


@dataclass(slots=True)
class ChatRequest:
    """A validated chat completions request, as the client sent it plus the gateway's defaults.

    What it may cost is bounded before it is sent: `prompt_tokens_estimate` +
    `choices` x (`cap` + `completion_extra`) tokens are held on the quota, and every
    provider sends the upstream `cap_for(deployment)` as its output cap, under its own name.
    """

    body: dict[str, Any]  # the OpenAI-shaped body; `model` still the public name
    public_model: str
    stream: bool
    include_usage: bool  # the client asked for the usage chunk (stream_options.include_usage)
    max_tokens: int | None  # the client's cap: max_completion_tokens or max_tokens (the smaller)
    prompt_tokens_estimate: int
    choices: int = 1  # n: every choice is billed its own output
    # The output cap of each choice: the client's, or the largest default of the model's
    # deployments; lowered at admission when only that much of the month's quota remains.
    cap: int = 4096
    completion_extra: int = 0  # output billed beyond the cap (OpenAI's Predicted Outputs)

    @property
    def base_tokens(self) -> int:
        """What the request may cost whatever the cap: the prompt, and output past the cap."""
        return self.prompt_tokens_estimate + self.choices * self.completion_extra

    def cap_for(self, deployment: Deployment) -> int:
        """The output cap to send this deployment: the admitted cap, or less when the client
        set none and the deployment's own default is smaller."""
        if self.max_tokens is None:
            return min(self.cap, deployment.default_max_tokens)
        return self.cap


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # True when the upstream reported nothing and we counted

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """An upstream's JSON object (an answer, a stream event), or a 502 saying it was not one."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"The upstream provider sent a malformed {what}.") from exc
    if not isinstance(payload, dict):
        raise UpstreamError(f"The upstream provider sent a malformed {what}.")
    return payload


class StreamTranslator(ABC):
    """Turns one upstream stream into OpenAI chunks, one `feed` per SSE event.

    `feed` returns the chunks to send now (each a dict with `choices` and maybe `usage`), in
    order, and may raise a GatewayError for an error event. `finish` is called at the end of
    the upstream body and returns any last chunks. `usage` is what the upstream reported, or
    None; `produced_chars` counts the text and tool arguments sent so far, in ASCII-character
    equivalents (`tokens.text_weight`: other scripts weigh more), for an estimate when the
    upstream reports nothing (or the stream is cut).
    """

    def __init__(self, chat: ChatRequest):
        self.chat = chat
        self.usage: Usage | None = None
        self.produced_chars = 0
        self.done = False  # the upstream said the stream is complete

    @abstractmethod
    def feed(self, event: SSEEvent) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]:
        return []

    def final_usage(self) -> Usage:
        """The usage to charge: the upstream's, else an estimate of what was produced."""
        if self.usage is not None:
            return self.usage
        return Usage(
            self.chat.prompt_tokens_estimate,
            estimate_text_tokens(self.produced_chars),
            estimated=True,
        )


class Provider(ABC):
    """One configured upstream (a `providers:` entry) of some kind."""

    kind: str = ""

    def __init__(self, config: ProviderConfig):
        self.config = config

    @abstractmethod
    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        """The upstream HTTP request for this chat request; may raise BadRequest."""

    @abstractmethod
    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage | None]:
        """A non-stream upstream answer as an OpenAI completion (`choices`, `usage`...)."""

    @abstractmethod
    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        """A fresh translator for one stream."""

    def error_message(self, payload: Any) -> str | None:
        """The human message inside an upstream error body, if any."""
        if isinstance(payload, dict):
            error = payload.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return error["message"]
            if isinstance(error, str):
                return error
            if isinstance(payload.get("message"), str):
                return payload["message"]
        return None

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        """Map an upstream error answer to ours.

        A 4xx is the client's request (400, with the upstream's message), except 401/403 which
        mean our provider key is wrong: that is our fault (502), and says nothing of the key.
        429 and overload become 503 with Retry-After; other 5xx a 502.
        """
        try:
            message = self.error_message(orjson.loads(body)) if body else None
        except orjson.JSONDecodeError:
            message = None
        name = self.config.name
        if status in (401, 403):
            return UpstreamError(f"The gateway's credentials for provider '{name}' were rejected.")
        if status in (429, 529) or status == 503:
            retry = headers.get("retry-after") or "1"
            what = "rate-limited" if status == 429 else "overloaded"
            return ServiceUnavailable(
                f"Provider '{name}' is {what}; retry later.", headers={"Retry-After": retry}
            )
        if 400 <= status < 500:
            return BadRequest(message or f"Provider '{name}' rejected the request ({status}).")
        return UpstreamError(f"Provider '{name}' failed ({status}).")

    def require_key(self) -> None:
        """Refuse early when the provider needs a key and none is configured."""
        if not self.config.api_key and self.config.needs_key:
            var = self.config.api_key_env or "the provider's api_key"
            raise ServiceUnavailable(
                f"Provider '{self.config.name}' has no API key configured; set {var}."
            )
