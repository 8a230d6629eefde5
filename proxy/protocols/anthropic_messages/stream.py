"""How a Messages stream is written: the relay's encoders for `/messages`.

Native (a Claude deployment): the translator (providers/anthropic/native.py) hands over each
upstream event already framed as bytes, passed through as they are; only `message_start`
comes as its parsed event, whose message gets the request's `id` here (the model is the
public name already). A stream that ended well has had Anthropic's own `message_stop`.

Translated (OpenAI chunks of the other providers), the event sequence of Anthropic's
streaming guide: `message_start` (usage zero: the counts are not known yet), then per
content block `content_block_start`, its deltas and `content_block_stop`: DeepSeek's
`reasoning_content` a `thinking` block (`thinking_delta`), content a `text` block
(`text_delta`), each tool call a `tool_use` block (`input_json_delta` of its arguments);
then, at the usage chunk (always asked for: `include_usage`), `message_delta` with the
`stop_reason` and the usage charged (cumulative, input included: the SDKs take the
message_delta's counts over message_start's), and `message_stop`. A stream whose provider
sent no usage ends the same way, with the charge's estimate (the prompt's estimate, and the
output counted from what was written).

Either way the keepalive is Anthropic's `ping` event, and a failure after the headers went
out is an `error` event (answer.error_event), as Anthropic's streams end on an error.

Source: Anthropic's streaming messages
(platform.claude.com/docs/en/build-with-claude/streaming: the events, their order, `ping`,
`error`, the cumulative usage of `message_delta`).
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.core import ChatRequest, Usage
from proxy.errors import GatewayError
from proxy.estimates import estimate_text_tokens, text_weight
from proxy.protocols.anthropic_messages.answer import (
    cached_tokens,
    error_event,
    stop_reason,
    usage_fields,
)

PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def event(kind: str, **fields: Any) -> bytes:
    """One SSE event of Anthropic's: `event: <kind>`, and its data with `type` first."""
    data = orjson.dumps({"type": kind, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class NativeMessagesStream:
    """The encoder of a stream from a Claude deployment: its events, as they came."""

    __slots__ = ("_rid",)

    keepalive = PING

    def __init__(self, rid: str) -> None:
        self._rid = rid

    def encode(self, chunks: list[Any]) -> bytes:
        if len(chunks) == 1 and type(chunks[0]) is bytes:
            return chunks[0]
        return b"".join(c if type(c) is bytes else self._start(c) for c in chunks)

    def _start(self, start: dict[str, Any]) -> bytes:
        start["message"]["id"] = self._rid
        return b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n"

    def error(self, exc: GatewayError, usage: Usage) -> bytes:
        return error_event(exc)

    def end(self) -> bytes:
        return b""


class MessagesStream:
    """The encoder of a stream translated from OpenAI chunks (see the module docstring)."""

    __slots__ = (
        "_block",
        "_chars",
        "_finish",
        "_index",
        "_message",
        "_over",
        "_prompt",
        "_tools",
    )

    keepalive = PING

    def __init__(self, rid: str, chat: ChatRequest) -> None:
        self._message: dict[str, Any] | None = {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": chat.public_model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_fields(Usage(0, 0)),
        }
        self._block: str | None = None  # the open block's kind: text, thinking, tool_use
        self._index = -1  # the open (or last) block's index
        self._tools: dict[Any, int] = {}  # OpenAI tool call index -> block index
        self._finish: Any = None
        self._chars = 0  # what was written, for an estimate when no usage comes
        self._over = False  # message_stop went out
        self._prompt = chat.prompt_tokens_estimate  # the charge of a stream without usage

    def encode(self, chunks: list[dict[str, Any]]) -> bytes:
        out: list[bytes] = []
        if self._message is not None:
            out.append(event("message_start", message=self._message))
            self._message = None
        for chunk in chunks:
            if self._over:
                break
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    self._delta(delta, out)
                if choice.get("finish_reason"):
                    self._finish = choice["finish_reason"]
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                charged = Usage(usage["prompt_tokens"], usage.get("completion_tokens") or 0)
                self._stop(out, usage_fields(charged, cached_tokens(usage)))
        return b"".join(out)

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            self._write({"type": "thinking_delta", "thinking": reasoning}, reasoning, out)
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._open("text", {"type": "text", "text": ""}, out)
            self._write({"type": "text_delta", "text": text}, text, out)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._tool_call(call, out)

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        at = call.get("index", len(self._tools))
        if at not in self._tools:
            name = str(function.get("name") or "")
            block = {"type": "tool_use", "id": str(call.get("id") or ""), "name": name}
            self._open("tool_use", {**block, "input": {}}, out, force=True)
            self._tools[at] = self._index
            self._chars += text_weight(name)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            self._write(delta, arguments, out, self._tools[at])

    def _open(
        self, kind: str, block: dict[str, Any], out: list[bytes], force: bool = False
    ) -> None:
        """Open a block of `kind` unless one is open already (`force`: always a new one)."""
        if self._block == kind and not force:
            return
        self._close(out)
        self._index += 1
        self._block = kind
        out.append(event("content_block_start", index=self._index, content_block=block))

    def _write(
        self, delta: dict[str, Any], text: str, out: list[bytes], index: int | None = None
    ) -> None:
        self._chars += text_weight(text)
        at = self._index if index is None else index
        out.append(event("content_block_delta", index=at, delta=delta))

    def _close(self, out: list[bytes]) -> None:
        if self._block is not None:
            out.append(event("content_block_stop", index=self._index))
            self._block = None

    def _stop(self, out: list[bytes], usage: dict[str, int]) -> None:
        """The end of the message: the open block closed, the stop reason and the usage."""
        self._close(out)
        delta = {"stop_reason": stop_reason(self._finish), "stop_sequence": None}
        out.append(event("message_delta", delta=delta, usage=usage))
        out.append(event("message_stop"))
        self._over = True

    def error(self, exc: GatewayError, usage: Usage) -> bytes:
        return error_event(exc)

    def end(self) -> bytes:
        """Nothing if message_stop went out; else the end, with an estimated usage."""
        if self._over:
            return b""
        out: list[bytes] = []
        if self._message is not None:
            out.append(event("message_start", message=self._message))
            self._message = None
        estimate = Usage(self._prompt, estimate_text_tokens(self._chars), estimated=True)
        self._stop(out, usage_fields(estimate))
        return b"".join(out)
