"""Anthropic's Messages API (`POST {base}/v1/messages`), translated natively.

Request: `system` and `developer` messages are hoisted into `system`; `tool` messages become
`tool_result` blocks in a user turn and assistant `tool_calls` become `tool_use` blocks; then
consecutive turns of the same role are merged, because Anthropic wants user and assistant to
alternate and wants every result of one parallel tool call in one user turn. `max_tokens` is
required there; it is always the cap that was reserved (`ChatRequest.cap_for`). `temperature` is
clamped to Anthropic's 0..1 (OpenAI allows up to 2). `top_p` is passed through as given (some
newer Claude models refuse `temperature` and `top_p` together; temperature is always sent).

No equivalent, so dropped: `frequency_penalty`, `presence_penalty`, `logit_bias`, `logprobs`,
`top_logprobs`, `seed`, `response_format`, `service_tier`, `store`, `metadata`, `modalities`,
`audio`, `prediction`, `reasoning_effort`, `web_search_options`, `prompt_cache_key`,
`safety_identifier`, the legacy `functions`/`function_call`, and `strict` on tools. `n` above
1 is refused with a 400, since Anthropic returns one answer per request.

Stream: each upstream event is translated on its own, so every text or tool-argument delta
goes out as soon as it comes in. OpenAI numbers tool calls 0, 1, 2... while Anthropic numbers
all content blocks, text and thinking included, so tool blocks are renumbered. Usage comes
from `message_start` (input, plus cache reads and writes, which Anthropic counts apart) and the
last `message_delta` (cumulative output; newer API versions repeat the input counts there).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.errors import BadRequest, GatewayError, ServiceUnavailable, UpstreamError
from proxy.providers.base import (
    ChatRequest,
    Provider,
    StreamTranslator,
    UpstreamRequest,
    Usage,
    load_json,
)
from proxy.sse import SSEEvent
from proxy.tokens import estimate_text_tokens, text_weight

API_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_INPUT_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)", re.S)
_TOOL_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def input_tokens(usage: dict[str, Any]) -> int:
    """Anthropic's input count leaves out cached tokens; OpenAI's prompt count includes them."""
    return sum(v for name in _INPUT_FIELDS if isinstance(v := usage.get(name), int))


def usage_from(payload: Any) -> Usage | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("output_tokens"), int):
        return None
    return Usage(input_tokens(payload), payload["output_tokens"])


# -- request ---------------------------------------------------------------------------------


def _tool_id(value: Any) -> str:
    """Anthropic wants ids matching [a-zA-Z0-9_-]+; ids made by other providers may not."""
    return _TOOL_ID_BAD_CHARS.sub("_", str(value or "")) or "call"


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts.")
    texts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str):
                texts.append(text)
                continue
        raise BadRequest(f"{where} may only contain text parts for this model.")
    return "".join(texts)


def _media_block(kind: str, url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where} has no URL.")
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if not match:
            raise BadRequest(f"{where} must be a base64 data: URL or an http(s) URL.")
        source = {"type": "base64", "media_type": match["type"], "data": match["data"]}
        return {"type": kind, "source": source}
    if url.startswith(("http://", "https://")):
        return {"type": kind, "source": {"type": "url", "url": url}}
    raise BadRequest(f"{where} must be a base64 data: URL or an http(s) URL.")


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts.")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append(_media_block("image", url, f"{where}.content[{i}]"))
        elif kind == "file" and isinstance(doc := part.get("file"), dict) and doc.get("file_data"):
            blocks.append(_media_block("document", doc["file_data"], f"{where}.content[{i}]"))
        else:
            raise BadRequest(
                f"{where}.content[{i}]: content part type {kind!r} is not supported for this model."
            )
    return blocks


def _tool_use_blocks(calls: Any, where: str) -> list[dict[str, Any]]:
    blocks = []
    for i, call in enumerate(calls or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"{where}.tool_calls[{i}] must be a function call with a name.")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"{where}.tool_calls[{i}].function.arguments is not JSON.") from exc
        if not isinstance(parsed, dict):
            raise BadRequest(f"{where}.tool_calls[{i}].function.arguments must be a JSON object.")
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.get("id")),
                "name": function["name"],
                "input": parsed,
            }
        )
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message.get("tool_call_id")),
    }
    content = message.get("content")
    if isinstance(content, list):
        block["content"] = _user_blocks(content, where)
    elif content:
        block["content"] = str(content)
    return block


def translate_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI messages -> (Anthropic `system`, alternating Anthropic `messages`)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            text = _text_of(message.get("content"), where)
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), where)
        elif role == "assistant":
            text = _text_of(message.get("content"), where)
            blocks = [{"type": "text", "text": text}] if text else []
            blocks += _tool_use_blocks(message.get("tool_calls"), where)
        elif role == "tool":
            role = "user"
            blocks = [_tool_result_block(message, where)]
        else:
            raise BadRequest(f"{where}.role {role!r} is not supported for this model.")
        if not blocks:
            continue  # Anthropic refuses empty turns; the neighbours merge instead
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            # Anthropic wants tool results before any text in a user turn; keep each group's order.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if turns and turns[-1]["role"] == "assistant":
        # A final assistant turn is a prefill, and Anthropic refuses one ending in whitespace.
        last = turns[-1]["content"]
        if last and last[-1]["type"] == "text":
            last[-1]["text"] = last[-1]["text"].rstrip()
            if not last[-1]["text"]:
                last.pop()
    return "\n\n".join(system), turns


def translate_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array of function tools.")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function.get("name"), str)
        ):
            raise BadRequest(f"tools[{i}]: only function tools with a name are supported.")
        spec: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            spec["description"] = function["description"]
        parameters = function.get("parameters")
        spec["input_schema"] = (
            parameters
            if isinstance(parameters, dict) and parameters
            else {"type": "object", "properties": {}}
        )
        out.append(spec)
    return out


def translate_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif (
        isinstance(choice, dict)
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise BadRequest("tool_choice must be 'auto', 'none', 'required' or a named function.")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is already auto
    return out


# -- stream ----------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


class AnthropicStream(StreamTranslator):
    def __init__(self, chat: ChatRequest, provider: AnthropicProvider):
        super().__init__(chat)
        self.provider = provider
        self.input_counts: dict[str, int] = {}
        self.output_tokens = 0
        self.started = False  # message_start seen: the input count is the upstream's
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if event.comment or not event.data:
            return []
        data = load_json(event.data, "stream event")
        kind = event.event or data.get("type")
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "message_start":
            message = data.get("message")
            self._count(message.get("usage") if isinstance(message, dict) else None)
            self.started = True
            return [_chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            self._count(data.get("usage"))
            if isinstance(data.get("usage"), dict):
                self.usage = Usage(input_tokens(self.input_counts), self.output_tokens)
            delta = data.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            return [_chunk({}, finish_reason(stop))] if stop else []
        if kind == "message_stop":
            self.done = True
            if self.usage is None:
                self.usage = Usage(input_tokens(self.input_counts), self.output_tokens)
            if self.chat.include_usage:
                return [{"choices": [], "usage": self.usage.as_dict()}]
            return []
        if kind == "error":
            raise self.provider.error_from_type(data.get("error"), {})
        return []  # ping, content_block_stop, and event types added after this was written

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text" and block.get("text"):
            self.produced_chars += text_weight(block["text"])
            return [_chunk({"content": block["text"]})]
        if block.get("type") == "tool_use":
            index = self.tool_index[data.get("index", -1)] = len(self.tool_index)
            name = str(block.get("name", ""))
            self.produced_chars += text_weight(name)
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            return [_chunk({"tool_calls": [call]})]
        return []  # thinking and redacted_thinking stay out of an OpenAI answer

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            self.produced_chars += text_weight(delta["text"])
            return [_chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            index = self.tool_index.get(data.get("index", -1))
            if index is None:
                return []
            self.produced_chars += text_weight(delta["partial_json"])
            call = {"index": index, "function": {"arguments": delta["partial_json"]}}
            return [_chunk({"tool_calls": [call]})]
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            # Not sent, but billed as output: count it, for the estimate of a cut stream.
            self.produced_chars += text_weight(delta["thinking"])
        return []  # signature_delta, citations_delta

    def _count(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in _INPUT_FIELDS:
            if isinstance(usage.get(name), int):
                self.input_counts[name] = usage[name]
        if isinstance(usage.get("output_tokens"), int):
            self.output_tokens = usage["output_tokens"]

    def final_usage(self) -> Usage:
        """The upstream's usage; for a cut stream, its input count and an output estimate."""
        if self.usage is not None:
            return self.usage
        if self.started:
            output = max(self.output_tokens, estimate_text_tokens(self.produced_chars))
            return Usage(input_tokens(self.input_counts), output, estimated=True)
        return super().final_usage()


# -- provider --------------------------------------------------------------------------------


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

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        source = chat.body
        n = source.get("n")
        if isinstance(n, int) and n > 1:
            raise BadRequest(f"n={n} is not supported for {chat.public_model}; only n=1.")
        system, messages = translate_messages(source.get("messages") or [])
        body: dict[str, Any] = {
            "model": deployment.model,
            "max_tokens": chat.cap_for(deployment),
            "messages": messages,
        }
        if system:
            body["system"] = system
        temperature = source.get("temperature")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            body["temperature"] = min(max(float(temperature), 0.0), 1.0)
        if isinstance(source.get("top_p"), (int, float)):
            body["top_p"] = source["top_p"]
        stop = source.get("stop")
        if isinstance(stop, str) and stop:
            body["stop_sequences"] = [stop]
        elif isinstance(stop, list) and stop:
            body["stop_sequences"] = [s for s in stop if isinstance(s, str) and s]
        if isinstance(source.get("user"), str) and source["user"]:
            body["metadata"] = {"user_id": source["user"]}
        tools = source.get("tools")
        if tools:
            body["tools"] = translate_tools(tools)
            choice = translate_tool_choice(
                source.get("tool_choice"), source.get("parallel_tool_calls")
            )
            if choice is not None:
                body["tool_choice"] = choice
        if chat.stream:
            body["stream"] = True
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
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in payload["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": arguments},
                    }
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        completion: dict[str, Any] = {
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason(payload.get("stop_reason")),
                }
            ]
        }
        usage = usage_from(payload.get("usage"))
        if usage is not None:
            cached = payload["usage"].get("cache_read_input_tokens")
            completion["usage"] = {
                **usage.as_dict(),
                "prompt_tokens_details": {"cached_tokens": cached or 0},
            }
        return completion, usage

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        return AnthropicStream(chat, self)

    def error_from_type(
        self, error: Any, headers: dict[str, str], status: int | None = None
    ) -> GatewayError:
        """Map Anthropic's error `type` (and the HTTP status, when there is one) to ours."""
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        name = self.config.name
        retry = {"Retry-After": headers.get("retry-after") or "1"}
        if kind == "overloaded_error" or status in (503, 529):
            return ServiceUnavailable(
                f"Provider '{name}' is overloaded; retry later.", headers=retry
            )
        if kind == "rate_limit_error" or status == 429:
            return ServiceUnavailable(
                f"Provider '{name}' is rate-limited; retry later.", headers=retry
            )
        if kind in ("authentication_error", "permission_error") or status in (401, 403):
            return UpstreamError(f"The gateway's credentials for provider '{name}' were rejected.")
        if kind == "billing_error" or status == 402:
            return UpstreamError(f"Provider '{name}' refused the gateway's account (billing).")
        if kind == "request_too_large" or status == 413:
            return BadRequest(f"The request is too large for provider '{name}'.")
        client_fault = kind in ("invalid_request_error", "not_found_error")
        if client_fault or (status is not None and 400 <= status < 500):
            return BadRequest(
                message
                if isinstance(message, str) and message
                else f"Provider '{name}' rejected the request."
            )
        if status is not None:
            return UpstreamError(f"Provider '{name}' failed ({status}).")
        return UpstreamError(
            f"Provider '{name}' failed mid-stream"
            + (f": {message}" if isinstance(message, str) and message else ".")
        )

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        lowered = {k.lower(): v for k, v in headers.items()}
        return self.error_from_type(error, lowered, status)
