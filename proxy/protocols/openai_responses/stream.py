"""How a Responses stream is written: the relay's encoders for `/responses`.

Events as in OpenAI's API reference, "Streaming events"
(platform.openai.com/docs/api-reference/responses-streaming), each `event: <type>` and
`data: {..., "type", "sequence_number"}`, with no `[DONE]` (the terminal event ends it).

Translated (`TranslatedStream`, from OpenAI chat chunks): `response.created`,
`response.in_progress`; per output item `response.output_item.added`, then for a message
`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`; for a function call `response.function_call_arguments.delta`
..., `.done`; for DeepSeek's reasoning `response.reasoning_text.delta`..., `.done`; then
`response.output_item.done`; and at the end `response.completed` (or `response.incomplete`
when the answer stopped at its cap) with the whole output and the usage. This is the
sequence openai-python's `responses.stream` accumulates (`ResponseStreamState`): an item is
added before its deltas, and every added item is done before the response completes.

Native (`NativeStream`): the provider's events as it sent them, the lifecycle events
(`response.created` ... `response.completed`) with the gateway's `id` and the public model
name (providers/openai_responses.py parses those alone), and `store` saying whether the
answer is kept (items.py: from `response.completed`, as for a translated stream).

A stream that fails after it began ends with an `error` event (`ResponseErrorEvent`:
code, message, param) and then `response.failed` carrying the error and the usage charged.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.core import ChatRequest, Usage
from proxy.errors import GatewayError
from proxy.protocols.openai_responses.items import keep, stored
from proxy.protocols.openai_responses.request import namespaces
from proxy.protocols.openai_responses.response import (
    INCOMPLETE,
    call_item,
    item_id,
    response_object,
    usage_object,
)
from proxy.sse import KEEPALIVE


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One SSE event of the Responses API (`data` already carries its `type`)."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def failure(chat: ChatRequest, rid: str, exc: GatewayError, usage: Usage, sequence: int) -> bytes:
    """The `error` event and `response.failed`: the end of a stream that failed."""
    error = {
        "type": "error",
        "code": exc.code or exc.type,
        "message": exc.message,
        "param": exc.param,
        "sequence_number": sequence,
    }
    response = response_object(chat, rid, "failed", [])
    response["error"] = {"code": failed_code(exc), "message": exc.message}
    response["usage"] = usage_object(usage)
    failed = {"type": "response.failed", "response": response, "sequence_number": sequence + 1}
    return event("error", error) + event("response.failed", failed)


def failed_code(exc: GatewayError) -> str:
    """The `response.error.code` of a failed response: one of the API's codes
    (`ResponseError.code`), `rate_limit_exceeded` for an overload, else `server_error`."""
    if exc.status == 429 or exc.code == "rate_limit_exceeded" or exc.status == 503:
        return "rate_limit_exceeded"
    return "server_error"


class NativeStream:
    """The encoder of a stream from a provider that speaks Responses: its events' bytes pass
    through; the lifecycle events (dicts, from the native translator) get the gateway's id."""

    __slots__ = ("_chat", "_rid", "_sequence")

    keepalive = KEEPALIVE

    def __init__(self, rid: str, chat: ChatRequest) -> None:
        self._rid = rid
        self._chat = chat
        self._sequence = 0  # events passed: the upstream numbers them from 0

    def encode(self, chunks: list[Any]) -> bytes:
        self._sequence += len(chunks)
        if len(chunks) == 1 and isinstance(chunks[0], bytes):
            return chunks[0]
        frames = []
        for chunk in chunks:
            if isinstance(chunk, dict):
                chunk["response"]["id"] = self._rid
                chunk["response"]["store"] = stored(self._chat)
                keep(self._chat, chunk["response"])  # the completed (or incomplete) one
                chunk = event(chunk["type"], chunk)
            frames.append(chunk)
        return b"".join(frames)

    def error(self, exc: GatewayError, usage: Usage) -> bytes:
        return failure(self._chat, self._rid, exc, usage, self._sequence)

    def end(self) -> bytes:
        return b""


class TranslatedStream:
    """The encoder of a stream translated from OpenAI chat chunks (one choice)."""

    keepalive = KEEPALIVE

    def __init__(self, rid: str, chat: ChatRequest) -> None:
        self.rid, self.chat = rid, chat
        self.sequence = 0
        self.frames: list[bytes] = []
        self.output: list[dict[str, Any]] = []  # every item, as done or as far as it came
        self.open: dict[str, Any] | None = None  # the message or reasoning item being written
        self.text: list[str] = []  # its text so far
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool call index -> its item
        self.finish: str | None = None
        self.usage: Any = None  # the chat usage chunk's
        self.names = namespaces(chat.native.body) if chat.native is not None else {}

    def emit(self, kind: str, **data: Any) -> None:
        data["type"] = kind
        data["sequence_number"] = self.sequence
        self.sequence += 1
        self.frames.append(event(kind, data))

    def lifecycle(self, kind: str, status: str) -> dict[str, Any]:
        response = response_object(self.chat, self.rid, status, self.output)
        self.emit(kind, response=response)
        return response

    def encode(self, chunks: list[dict[str, Any]]) -> bytes:
        if self.sequence == 0:
            self.lifecycle("response.created", "in_progress")
            self.lifecycle("response.in_progress", "in_progress")
        for chunk in chunks:
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                self.choice(choice)
        payload = b"".join(self.frames)
        self.frames.clear()
        return payload

    def choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self.text_delta("reasoning", reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.text_delta("message", content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self.text_delta("message", refusal)
        for call in delta.get("tool_calls") or ():
            self.call_delta(call)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def text_delta(self, kind: str, text: str) -> None:
        """A piece of the message's text (or of the reasoning's): its item opened first."""
        if self.open is None or self.open["type"] != kind:
            self.close_text()
            self.open_text(kind)
        assert self.open is not None
        self.text.append(text)
        where = {"item_id": self.open["id"], "output_index": self.open["index"]}
        if kind == "message":
            self.emit("response.output_text.delta", **where, content_index=0, delta=text,
                      logprobs=[])  # fmt: skip
        else:
            self.emit("response.reasoning_text.delta", **where, content_index=0, delta=text)

    def open_text(self, kind: str) -> None:
        index = len(self.output)
        if kind == "message":
            item = {"id": item_id("msg", self.rid, index), "type": "message",
                    "status": "in_progress", "role": "assistant", "content": []}  # fmt: skip
        else:
            item = {"id": item_id("rs", self.rid, index), "type": "reasoning", "summary": []}
        self.output.append(item)
        self.open = {"type": kind, "id": item["id"], "index": index}
        self.text = []
        self.emit("response.output_item.added", output_index=index, item=item)
        # Its one content part opens before its first delta, a reasoning item's too (the
        # openai npm package's stream reader refuses a delta of a part it was not given).
        part = _text_part("") if kind == "message" else {"type": "reasoning_text", "text": ""}
        self.emit("response.content_part.added", item_id=item["id"], output_index=index,
                  content_index=0, part=part)  # fmt: skip

    def close_text(self) -> None:
        """The open message or reasoning item is done."""
        if self.open is None:
            return
        kind, index, text = self.open["type"], self.open["index"], "".join(self.text)
        where = {"item_id": self.open["id"], "output_index": index, "content_index": 0}
        item = dict(self.output[index])
        if kind == "message":
            part = _text_part(text)
            self.emit("response.output_text.done", **where, text=text, logprobs=[])
            self.emit("response.content_part.done", **where, part=part)
            item.update(status="completed", content=[part])
        else:
            part = {"type": "reasoning_text", "text": text}
            self.emit("response.reasoning_text.done", **where, text=text)
            self.emit("response.content_part.done", **where, part=part)
            item["content"] = [part]
        self.output[index] = item
        self.emit("response.output_item.done", output_index=index, item=item)
        self.open = None

    def call_delta(self, call: dict[str, Any]) -> None:
        """A piece of a tool call: its item added at its first piece."""
        position = call.get("index", 0)
        function = call.get("function") or {}
        item = self.calls.get(position)
        if item is None:
            self.close_text()
            index = len(self.output)
            name = str(function.get("name") or "")
            item = call_item(self.rid, index, str(call.get("id") or ""), name, "", self.names)
            item["status"] = "in_progress"
            self.calls[position] = item
            self.output.append(item)
            self.emit("response.output_item.added", output_index=index, item=dict(item))
            item["output_index"] = index  # ours: taken out before it goes out whole
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            self.emit("response.function_call_arguments.delta", item_id=item["id"],
                      output_index=item["output_index"], delta=arguments)  # fmt: skip

    def close_calls(self) -> None:
        for item in self.calls.values():
            index = item.pop("output_index")
            item["status"] = "completed"
            done = {"name": item["name"], "arguments": item["arguments"]}
            self.emit("response.function_call_arguments.done", item_id=item["id"],
                      output_index=index, **done)  # fmt: skip
            self.emit("response.output_item.done", output_index=index, item=item)
        self.calls = {}

    def end(self) -> bytes:
        """Every item done, then `response.completed` (or `.incomplete`) with the usage."""
        if self.sequence == 0:
            self.encode([])
        self.close_text()
        self.close_calls()
        incomplete = INCOMPLETE.get(self.finish or "")
        status = "incomplete" if incomplete else "completed"
        response = response_object(self.chat, self.rid, status, self.output)
        if incomplete:
            response["incomplete_details"] = {"reason": incomplete}
        if isinstance(self.usage, dict):
            counts = self.usage.get("prompt_tokens", 0), self.usage.get("completion_tokens", 0)
            response["usage"] = usage_object(Usage(*counts), self.usage)
        self.emit(f"response.{status}", response=response)
        keep(self.chat, response)
        payload = b"".join(self.frames)
        self.frames.clear()
        return payload

    def error(self, exc: GatewayError, usage: Usage) -> bytes:
        return b"".join(self.frames) + failure(self.chat, self.rid, exc, usage, self.sequence)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
