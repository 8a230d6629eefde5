"""The Anthropic provider: a `providers:` entry of kind `anthropic`, at `{base}/v1/messages`."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from proxy.config import Deployment, ProviderConfig
from proxy.core import ChatRequest, Usage
from proxy.errors import BadRequest, GatewayError, UpstreamError
from proxy.providers.anthropic.errors import error_from_body, error_from_type
from proxy.providers.anthropic.messages import translate_messages
from proxy.providers.anthropic.request import (
    _refuse_unsupported,
    answer_tool_name,
    response_tool,
    translate_tool_choice,
    translate_tools,
)
from proxy.providers.anthropic.response import finish_reason, usage_from
from proxy.providers.anthropic.stream import AnthropicStream
from proxy.providers.base import Provider, StreamTranslator, UpstreamRequest, load_json

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

    def build_request(self, chat: ChatRequest, deployment: Deployment) -> UpstreamRequest:
        self.require_key()
        source = chat.body
        _refuse_unsupported(source, chat.public_model)
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
        elif isinstance(source.get("top_p"), (int, float)):
            body["top_p"] = source["top_p"]  # newer models refuse it beside temperature
        stop = source.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        # Anthropic refuses blank stop sequences; a model rarely ends text on whitespace alone.
        stops = [s for s in stops if isinstance(s, str) and s.strip()]
        if stops:
            body["stop_sequences"] = stops
        user = source.get("user")
        if isinstance(user, str) and user:
            if len(user) > 256 or not user.isprintable():
                user = hashlib.sha256(user.encode()).hexdigest()
            body["metadata"] = {"user_id": user}
        tools = translate_tools(source["tools"]) if source.get("tools") else []
        names = {tool["name"] for tool in tools}
        choice = source.get("tool_choice")
        if tools:
            anthropic_choice = translate_tool_choice(
                choice, source.get("parallel_tool_calls"), names
            )
        elif choice == "required" or isinstance(choice, dict):
            raise BadRequest(
                "tool_choice asks for a tool call, but tools is empty.", param="tool_choice"
            )
        else:
            anthropic_choice = None
        answer = response_tool(source)
        if answer is not None:
            if answer["name"] in names:
                raise BadRequest(
                    "response_format.json_schema.name is also the name of a tool.",
                    param="response_format.json_schema.name",
                )
            # The answer comes as the input of a tool the model must call (or a call of one of
            # the client's tools, when it may call them).
            only_answer = not tools or choice == "none"
            tools.append(answer)
            anthropic_choice = (
                {"type": "tool", "name": answer["name"]} if only_answer else {"type": "any"}
            )
            if source.get("parallel_tool_calls") is False:
                anthropic_choice["disable_parallel_tool_use"] = True
        if tools:
            body["tools"] = tools
        if anthropic_choice is not None:
            body["tool_choice"] = anthropic_choice
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
        answer = answer_tool_name(chat)
        answered = False  # response_format's tool was called: its input is the content
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in payload["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                if block.get("name") == answer:
                    texts.append(arguments)
                    answered = True
                    continue
                calls.append(
                    {
                        "id": str(block.get("id") or ""),
                        "type": "function",
                        "function": {"name": str(block.get("name") or ""), "arguments": arguments},
                    }
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        stop = payload.get("stop_reason")
        completion: dict[str, Any] = {
            "created": int(time.time()),  # the gateway stamps only streams' chunks with it
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "stop"
                    if stop == "tool_use" and answered and not calls
                    else finish_reason(stop),
                }
            ],
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
        """Anthropic's error `type` (and the HTTP status, when there is one) as ours
        (`errors.error_from_type`)."""
        return error_from_type(self.config.name, error, headers, status)

    def error_from_response(
        self, status: int, body: bytes, headers: dict[str, str]
    ) -> GatewayError:
        return error_from_body(self.config.name, status, body, headers)
