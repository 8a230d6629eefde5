"""The native speaker of OpenAI's Responses API, for OpenAI deployments (`responses_api`).

A Responses client's body goes to `{base_url}/responses` as it came (a copy: another
deployment may need it whole), with three fields set by the gateway: `model` (the
deployment's), `max_output_tokens` (the admitted cap, `ChatRequest.cap_for`) and `store`
false (the gateway keeps the answer's items itself, and replaces each `item_reference` by
its item before the body comes here: protocols/openai_responses/items.py). The gateway's
default temperature is not added: the reasoning models that Codex runs refuse one. A
deployment's `params` are chat completions fields, and are not sent here.

The answer comes back untranslated (`native`): the client protocol stamps the gateway's id
and the public model name on it. Usage is the response's `usage.input_tokens` and
`output_tokens` (OpenAI's API reference, "The response object": input tokens include the
cached ones, output tokens the reasoning ones).

Streams (`ResponsesStream`) pass through event by event, re-framed but not re-encoded: the
SSE `event:` line names each event's type, so only the lifecycle events that carry the
response object (`response.created`, `.in_progress`, `.queued`, `.completed`, `.incomplete`,
`.failed`) and `error` are parsed, plus the `delta` of `*.delta` events, counted for the
estimate of a cut stream. `response.completed` and `response.incomplete` are the end, with
the usage; `response.failed` and `error` raise the GatewayError of their error (OpenAI's
"Streaming events" reference: `ResponseErrorEvent`, `ResponseFailedEvent`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.core import ChatRequest, Usage
from proxy.errors import GatewayError, NotFound, UpstreamError
from proxy.estimates import estimate_text_tokens, text_weight
from proxy.providers.base import Provider, StreamTranslator, UpstreamRequest, load_json
from proxy.sse import SSEEvent

LIFECYCLE = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)
DONE = frozenset({"response.completed", "response.incomplete"})


def responses_usage(usage: Any) -> Usage | None:
    """A Responses `usage` object as the gateway's Usage; None when it is not one."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def _output_chars(output: Any) -> int:
    """What an answer's output items carry, in ASCII-character equivalents."""
    chars = 0
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        chars += text_weight(str(item.get("arguments") or ""))
        for part in item.get("content") or ():
            if isinstance(part, dict):
                chars += text_weight(str(part.get("text") or part.get("refusal") or ""))
    return chars


class ResponsesStream(StreamTranslator):
    """One Responses stream, passed through: `feed` returns each event's bytes (a lifecycle
    event as its parsed dict, with the public model name: the encoder stamps the id)."""

    def __init__(self, chat: ChatRequest, provider: Provider):
        super().__init__(chat)
        self.provider = provider
        self.model = chat.public_model

    def feed(self, event: SSEEvent) -> list[Any]:
        if event.comment or not event.data:
            return []
        kind = event.event
        if kind is None:  # an upstream that does not name its events: the data does
            kind = str(load_json(event.data, "stream event").get("type"))
        data = event.data
        if kind.endswith(".delta"):
            delta = load_json(data, "stream event").get("delta")
            if isinstance(delta, str):
                self.produced_chars += text_weight(delta)
        elif kind in LIFECYCLE:
            return [self.lifecycle(kind, load_json(data, "stream event"))]
        elif kind == "error":
            error = load_json(data, "stream event")
            raise self.failed(error)
        if b"\n" in data:  # data on several lines: one line of JSON, as clients expect
            data = orjson.dumps(load_json(data, "stream event"))
        return [b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"]

    def lifecycle(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = payload.get("response")
        if not isinstance(response, dict):
            raise UpstreamError("The upstream provider sent a malformed stream event.")
        response["model"] = self.model
        payload["type"] = kind
        if kind in DONE or kind == "response.failed":
            self.usage = responses_usage(response.get("usage")) or self.usage
        if kind in DONE:
            self.done = True
        elif kind == "response.failed":
            raise self.failed(response.get("error") or {})
        return payload

    def failed(self, error: Any) -> GatewayError:
        """The error of an `error` event or of a failed response (`{code, message, param}`)."""
        error = error if isinstance(error, dict) else {}
        fields = {k: error.get(k) for k in ("message", "code", "param")}
        return self.provider.error_from_object(fields, {})


class OpenAIResponsesNative(Provider):
    """The Responses API of an OpenAI-kind upstream: the client's request as it came."""

    kind = "openai"
    native = True

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.url = f"{config.base_url}/responses"
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        assert chat.native is not None
        body = dict(chat.native.body)
        body["model"] = deployment.model
        body["max_output_tokens"] = chat.cap_for(deployment)
        body["store"] = False
        body["stream"] = chat.stream
        if not chat.stream:
            body.pop("stream_options", None)
        return UpstreamRequest(self.url, self.headers, orjson.dumps(body))

    def parse_response(self, body: bytes, chat: ChatRequest) -> tuple[dict[str, Any], Usage]:
        payload = load_json(body, "answer")
        if payload.get("object") != "response" or not isinstance(payload.get("output"), list):
            raise UpstreamError("The upstream provider sent a malformed answer.")
        if payload.get("status") == "failed":
            raise ResponsesStream(chat, self).failed(payload.get("error"))
        usage = responses_usage(payload.get("usage"))
        if usage is None:
            chars = _output_chars(payload["output"])
            usage = Usage(chat.prompt_tokens_estimate, estimate_text_tokens(chars), estimated=True)
        return payload, usage

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return ResponsesStream(chat, self)

    def error_from_object(
        self, error: dict[str, Any], headers: Mapping[str, str], status: int | None = None
    ) -> GatewayError:
        """As for chat completions (`Provider.error_from_object`), but a 404 about something
        the client named (a file, an item), not the model, is the client's: the client's body
        went as it came, and its ids mean nothing to another deployment, so the deployment
        is not at fault (no retry, nothing for the breaker)."""
        message, param = error.get("message"), error.get("param")
        if status == 404 and error.get("code") != "model_not_found" and param != "model":
            return NotFound(
                message if isinstance(message, str) else "Not found.",
                param=param if isinstance(param, str) else None,
            )
        return super().error_from_object(error, headers, status)
