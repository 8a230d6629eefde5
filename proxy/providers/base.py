"""The provider interface: pure translation between OpenAI's shapes and one upstream's.

A provider does no I/O. `proxy/upstream.py` sends what `build_request` returns, then hands
the answer back: a whole body to `parse_response`, or SSE events one by one to the
`StreamTranslator` from `stream_translator`. The gateway stamps `id`, `object`, `created` and
`model` on everything a provider returns, so providers only produce `choices` and `usage`.

Adding a provider is one module (or a package of them, as `anthropic/` and `gemini/` are) with
a `Provider` subclass, and one line in `providers/__init__.py`.

A provider whose upstream also speaks a client protocol other than chat completions (Claude
speaks Anthropic Messages, OpenAI the Responses API) has a native speaker of it in `natives`:
a `Provider` on the same config that sends the client's request as it came (`core.Native`)
and gives its answer back untranslated (`native` is True). `speaking` picks it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.core import ChatRequest, Usage
from proxy.errors import (
    BadRequest,
    GatewayError,
    ModelUnavailable,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.estimates import estimate_text_tokens
from proxy.sse import SSEEvent


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


# What an OpenAI-compatible request carries because the gateway puts it there, not the client.
GATEWAY_PARAMETERS = frozenset({"max_tokens", "max_completion_tokens", "stream_options"})


def openai_error_object(payload: Any) -> dict[str, Any]:
    """The `{"message", "type", "param", "code"}` of an OpenAI-compatible error body: OpenAI's
    and DeepSeek's `{"error": {...}}`, vLLM's older top-level object, Ollama's
    `{"error": "<message>"}`; empty when the body is none of these."""
    if not isinstance(payload, dict):
        return {}
    error = payload.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    return payload if isinstance(payload.get("message"), str) else {}


class StreamTranslator(ABC):
    """Turns one upstream stream into OpenAI chunks, one `feed` per SSE event (a native
    speaker's translator returns its events' bytes instead, to pass through).

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
    def feed(self, event: SSEEvent) -> list[Any]: ...

    def finish(self) -> list[Any]:
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
    # True for a native speaker: its answers are in the client's protocol, not OpenAI's
    # chat completions (exchange.ClientProtocol.body and .encoder are told so).
    native: bool = False

    def __init__(self, config: ProviderConfig):
        self.config = config
        # Native speakers of client protocols, by `core.Native.dialect`.
        self.natives: dict[str, Provider] = {}

    def speaking(self, chat: ChatRequest) -> Provider:
        """The provider to send `chat` by: the native speaker of the client's protocol when
        this upstream speaks it (nothing lost in translation), else this one (translated);
        BadRequest when the request cannot be translated (`Native.untranslatable`)."""
        native = chat.native
        if native is None:
            return self
        speaker = self.natives.get(native.dialect)
        if speaker is not None:
            return speaker
        if native.untranslatable is not None:
            message, param = native.untranslatable
            raise BadRequest(message, param=param)
        return self

    @abstractmethod
    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        """The upstream HTTP request for this chat request; may raise BadRequest."""

    @abstractmethod
    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage | None]:
        """A non-stream upstream answer as an OpenAI completion (`choices`, `usage`...)."""

    @abstractmethod
    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        """A fresh translator for one stream."""

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        """Map an upstream error answer to ours (`error_from_object`)."""
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        return self.error_from_object(openai_error_object(payload), headers, status)

    def error_from_object(
        self, error: dict[str, Any], headers: Mapping[str, str], status: int | None = None
    ) -> GatewayError:
        """An OpenAI-shaped error (an answer's, or a stream's error event when `status` is
        None) as ours: the client's fault, or the deployment's (retryable).

        The client's: a 400, 413 or 422 about what it sent, with the upstream's message and
        `param`. Everything else is ours, and another deployment may serve the request:
        the model retired or unknown (404, DeepSeek's "Model Not Exist"), our provider
        account without access, region or credit (`ModelUnavailable`); our key rejected
        (502, never a 401 that would say the client's key is bad); 408 a timeout; 429, 503
        and 529 an overload (503 with Retry-After); other 5xx a 502.
        """
        fields = _ErrorFields.read(error, status)
        name = self.config.name
        deployment_fault = _deployment_fault(fields, name, headers)
        if deployment_fault is not None:
            return deployment_fault
        if fields.status in (400, 413, 422) or (
            fields.status is None and fields.kind == "invalid_request_error"
        ):
            return BadRequest(
                fields.message or f"Provider '{name}' rejected the request ({fields.status}).",
                param=fields.param,
            )
        if fields.status is None:
            return UpstreamError(fields.message or f"Provider '{name}' failed mid-stream.")
        return UpstreamError(f"Provider '{name}' failed ({fields.status}).")

    def require_key(self) -> None:
        """Refuse early when the provider needs a key and none is configured."""
        if not self.config.api_key and self.config.needs_key:
            var = self.config.api_key_env or "the provider's api_key"
            raise ServiceUnavailable(
                f"Provider '{self.config.name}' has no API key configured; set {var}."
            )


@dataclass(frozen=True, slots=True)
class _ErrorFields:
    """The fields of an OpenAI-shaped error that say whose fault it is, each of the type the
    rules read (anything else is left out as None)."""

    status: int | None
    code: str | None
    kind: Any  # `type`
    param: str | None
    message: str | None

    @classmethod
    def read(cls, error: dict[str, Any], status: int | None) -> _ErrorFields:
        message, param, code = error.get("message"), error.get("param"), error.get("code")
        if status is None and isinstance(code, int) and 400 <= code < 600:
            status = code  # vLLM puts the status in `code`, also in a stream's error event
        return cls(
            status,
            code if isinstance(code, str) else None,
            error.get("type"),
            param if isinstance(param, str) else None,
            message if isinstance(message, str) else None,
        )


def _deployment_fault(
    fields: _ErrorFields, name: str, headers: Mapping[str, str]
) -> GatewayError | None:
    """The error when the fault is the deployment's (another may serve the request), or None
    when it may be the client's."""
    status, code, kind, param = fields.status, fields.code, fields.kind, fields.param
    text = (fields.message or "").lower()
    if (
        status in (404, 410)
        or code == "model_not_found"
        or param == "model"  # the upstream model name comes from our config
        or "model not exist" in text  # DeepSeek: 400 "Model Not Exist"
    ):
        return ModelUnavailable(
            f"The model is unavailable: provider '{name}' does not serve the model"
            " it is routed to (retired or unknown)."
        )
    if status == 402 or "insufficient_quota" in (code, kind) or "insufficient balance" in text:
        return ModelUnavailable(
            f"The model is unavailable: the gateway's account at provider '{name}' is"
            " out of credit."
        )
    if code == "unsupported_country_region_territory":
        return ModelUnavailable(
            f"The model is unavailable: provider '{name}' does not serve the gateway's region."
        )
    if status in (401, 403) or code == "invalid_api_key" or kind == "authentication_error":
        return UpstreamError(f"The gateway's credentials for provider '{name}' were rejected.")
    if status == 408:
        return UpstreamTimeout(f"Provider '{name}' timed out.")
    if status in (429, 503, 529) or code == "rate_limit_exceeded":
        what = "rate-limited" if status == 429 or code == "rate_limit_exceeded" else "overloaded"
        retry = {"Retry-After": headers.get("retry-after") or "1"}
        return ServiceUnavailable(f"Provider '{name}' is {what}; retry later.", headers=retry)
    if code == "unsupported_parameter" and param in GATEWAY_PARAMETERS:
        # The gateway sets these (the output cap under the name the config says): the
        # deployment is misconfigured, and another one may take the request.
        return UpstreamError(
            f"Provider '{name}' refused the parameter '{param}' the gateway sends it."
        )
    return None
