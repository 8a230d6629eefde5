"""Anthropic's Messages API spoken natively: a Messages client's request to a Claude
deployment as the client sent it, and the answer back untranslated.

Request (`AnthropicNative.build_request`): a copy of the client's body (`core.Native`; the
original stays as it came, for another deployment), with `model` the deployment's, `max_tokens`
the admitted cap (`ChatRequest.cap_for`: the client's, or less when only that much of the
month's quota remains), `stream` as the request is served. Everything else goes as sent:
`cache_control`, thinking blocks and their signatures, `context_management`,
`output_config`, server tools, fields of betas. Headers: our `x-api-key` (never the
client's: its key is a Woozlit key), the client's `anthropic-version` (ours, 2023-06-01, if
it sent none) and its `anthropic-beta` (with any the operator configured).

Thinking budget: Anthropic wants `thinking.budget_tokens` below `max_tokens` (without the
interleaved-thinking beta). The client's request was checked for that; when admission lowered
the cap, the budget is lowered in the same proportion (at least 1,024, Anthropic's minimum,
and below the cap), and a cap of 1,024 or less leaves no room for thinking: a 400 that says so.

Answer (`parse_response`): Anthropic's message, with `model` the public name (the protocol
sets `id`), and the usage charged: input + cache writes + cache reads as the prompt
(`response.input_tokens`), `output_tokens` as the completion; estimated if it has none.

Stream (`AnthropicNativeStream`): every event goes on as it came, re-framed `event: X\\ndata:
Y` (a ping too); `message_start` is parsed to read the input counts and to put the public
model name in (the protocol's encoder sets the id); `message_delta`'s usage is cumulative
(output, and the input counts newer API versions repeat); `message_stop` ends the stream;
an `error` event raises our error for it (errors.py), which the client gets as an `error`
event (or, before anything went out, another deployment is tried). Text, thinking and tool
input deltas are counted, for the estimate of a stream cut before its usage came.

Token counting (`AnthropicCounter`): `POST {base}/v1/messages/count_tokens` with the body
less the fields only message creation takes.

Sources (platform.claude.com/docs/en/...): the Messages API reference (`api/messages`),
token counting (`api/messages-count-tokens`), streaming (`build-with-claude/streaming`),
extended thinking (`build-with-claude/extended-thinking`: the budget's minimum and bound),
versioning and betas (`api/versioning`, `api/beta-headers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from proxy.config import Deployment
from proxy.core import ChatRequest, Native, Usage
from proxy.errors import BadRequest, GatewayError, UpstreamError
from proxy.estimates import estimate_text_tokens, text_weight
from proxy.providers.anthropic.errors import error_from_body, error_from_type
from proxy.providers.anthropic.response import input_tokens, usage_from
from proxy.providers.anthropic.stream import AnthropicUsage
from proxy.providers.base import Provider, StreamTranslator, UpstreamRequest, load_json
from proxy.sse import SSEEvent

if TYPE_CHECKING:
    from proxy.providers.anthropic.provider import AnthropicProvider

DIALECT = "anthropic-messages"
INTERLEAVED_THINKING = "interleaved-thinking-2025-05-14"
MIN_THINKING_BUDGET = 1024
# Message creation's fields that token counting refuses ("Extra inputs are not permitted").
CREATE_ONLY = frozenset(
    {
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "service_tier",
        "container",
        "inference_geo",
    }
)


class AnthropicNative(Provider):
    """The Messages API as clients speak it, to a Claude deployment (see the module)."""

    kind = "anthropic"
    native = True

    def __init__(self, parent: AnthropicProvider):
        super().__init__(parent.config)
        self.parent = parent
        self.url = parent.url

    def headers(self, native: Native) -> dict[str, str]:
        """Ours, with the client's `anthropic-version` and `anthropic-beta` (added to any
        beta the operator configured)."""
        headers = dict(self.parent.headers)
        version = native.headers.get("anthropic-version")
        if version:
            headers["anthropic-version"] = version
        beta = native.headers.get("anthropic-beta")
        if beta:
            ours = headers.get("anthropic-beta")
            headers["anthropic-beta"] = f"{ours},{beta}" if ours else beta
        return headers

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        native = _native(chat)
        body = dict(native.body)
        body["model"] = deployment.model
        cap = body["max_tokens"] = chat.cap_for(deployment)
        if chat.stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int):
            betas = native.headers.get("anthropic-beta", "")
            if thinking["budget_tokens"] >= cap and INTERLEAVED_THINKING not in betas:
                body["thinking"] = {**thinking, "budget_tokens": _budget(thinking, chat, cap)}
        return UpstreamRequest(self.url, self.headers(native), _dumps(body))

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage]:
        payload = load_json(body, "answer")
        if not isinstance(payload.get("content"), list):
            if payload.get("type") == "error":
                raise self.error_from_type(payload.get("error"), {})
            raise UpstreamError("The upstream provider sent a malformed answer.")
        payload["model"] = chat.public_model
        usage = usage_from(payload.get("usage"))
        if usage is None:
            chars = sum(_weight(block) for block in payload["content"])
            usage = Usage(chat.prompt_tokens_estimate, estimate_text_tokens(chars), estimated=True)
        return payload, usage

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return AnthropicNativeStream(chat, self)

    def error_from_type(
        self, error: Any, headers: dict[str, str], status: int | None = None
    ) -> GatewayError:
        """As the provider's, but a refused `anthropic-` header is the client's (its own
        `anthropic-version` and `anthropic-beta` went as it sent them): errors.py."""
        return error_from_type(self.config.name, error, headers, status, native=True)

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        return error_from_body(self.config.name, status, body, headers, native=True)


class AnthropicCounter(AnthropicNative):
    """`POST {base}/v1/messages/count_tokens`, for a Messages client's count_tokens: its
    answer is `{"input_tokens": N}` (and no usage: counting costs no tokens)."""

    def __init__(self, parent: AnthropicProvider):
        super().__init__(parent)
        self.url = parent.url + "/count_tokens"

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        native = _native(chat)
        body = {k: v for k, v in native.body.items() if k not in CREATE_ONLY}
        body["model"] = deployment.model
        return UpstreamRequest(self.url, self.headers(native), _dumps(body))

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage]:
        payload = load_json(body, "answer")
        count = payload.get("input_tokens")
        if not isinstance(count, int) or isinstance(count, bool):
            raise UpstreamError("The upstream provider sent a malformed token count.")
        return {"input_tokens": count}, Usage(0, 0)


def _native(chat: ChatRequest) -> Native:
    native = chat.native
    if native is None or native.dialect != DIALECT:
        raise AssertionError("a native Messages request without its Messages body")
    return native


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:  # read_json_object wrote it once: not expected
        raise BadRequest("The request is nested too deeply for this model.") from exc


def _budget(thinking: dict[str, Any], chat: ChatRequest, cap: int) -> int:
    """The thinking budget for a cap lowered at admission (see the module docstring)."""
    if cap <= MIN_THINKING_BUDGET:
        raise BadRequest(
            f"thinking.budget_tokens: only {cap} output tokens remain in this month's quota,"
            f" too few for thinking (at least {MIN_THINKING_BUDGET} tokens).",
            param="thinking.budget_tokens",
        )
    asked = chat.max_tokens or cap
    budget: int = max(MIN_THINKING_BUDGET, thinking["budget_tokens"] * cap // asked)
    return min(budget, cap - 1)


def _weight(block: Any) -> int:
    if not isinstance(block, dict):
        return 0
    text = block.get("text") or block.get("thinking") or ""
    weight = text_weight(text) if isinstance(text, str) else 0
    if block.get("type") == "tool_use":
        weight += len(orjson.dumps(block.get("input") or {}))
    return weight


# Event names as bytes, for the re-framing of events (one dict look-up per event).
_NAMES: dict[str, bytes] = {}


def _frame(name: str, data: bytes) -> bytes:
    head = _NAMES.get(name)
    if head is None:
        head = _NAMES[name] = b"event: " + name.encode() + b"\ndata: "
    if b"\n" in data:  # data on several lines: one line of JSON, as clients expect
        data = orjson.dumps(load_json(data, "stream event"))
    return head + data + b"\n\n"


class AnthropicNativeStream(AnthropicUsage):
    """One Claude stream passed through (see the module docstring): `feed` returns the
    event's bytes, or `message_start` parsed, for the protocol's encoder to stamp its id."""

    def __init__(self, chat: ChatRequest, provider: AnthropicNative):
        super().__init__(chat)
        self.provider = provider

    def feed(self, event: SSEEvent) -> list[Any]:
        data = event.data
        if event.comment or not data:
            return []
        name = event.event
        if name == "content_block_delta":  # nearly every event: parsed only to be counted
            self.produced_chars += _delta_weight(data)
            return [_frame(name, data)]
        payload = load_json(data, "stream event")
        if name is None:
            name = str(payload.get("type") or "")
        if name == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict):
                raise UpstreamError("The upstream provider sent a malformed stream event.")
            self._count(message.get("usage"))
            self.started = True
            message["model"] = self.chat.public_model
            return [payload]
        if name == "message_delta":
            self._count(payload.get("usage"))
            self.usage = Usage(input_tokens(self.input_counts), self.output_tokens)
        elif name == "message_stop":
            self.done = True
            if self.usage is None:
                self.usage = Usage(input_tokens(self.input_counts), self.output_tokens)
        elif name == "error":
            raise self.provider.error_from_type(payload.get("error"), {})
        return [_frame(name, data)]


# The keys of the delta fields that carry output, as they appear in an event's JSON: a JSON
# string cannot hold them unescaped, so the first match is the key.
_DELTA_KEYS = (b'"text":"', b'"thinking":"', b'"partial_json":"')


def _delta_weight(data: bytes) -> int:
    """The characters a content_block_delta adds (its text, thinking or tool input JSON), in
    `text_weight`'s units, read from the bytes without parsing them (this is nearly every
    event of a stream): the bytes of the value, JSON escapes counted as written."""
    for key in _DELTA_KEYS:
        start = data.find(key)
        if start >= 0:
            start += len(key)
            end = data.rfind(b'"')
            if end <= start:
                return 0
            value = data[start:end]
            if value.isascii():
                return end - start
            return 2 * len(value) - len(value.decode("utf-8", "replace"))
    return 0
