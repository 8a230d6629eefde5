"""Anthropic's event stream -> OpenAI chunks, one event at a time.

Each upstream event is translated on its own, so every text or tool-argument delta goes out
as soon as it comes in. OpenAI numbers tool calls 0, 1, 2... while Anthropic numbers all
content blocks, text and thinking included, so tool blocks are renumbered. A tool without
parameters streams only an empty fragment: at its block's end it gets "{}", as the non-stream
answer does. The response_format tool's input goes out as content deltas. Thinking is not
sent, but counted, since it is billed as output. Usage comes from `message_start` (input,
plus cache reads and writes, which Anthropic counts apart) and the last `message_delta`
(cumulative output; newer API versions repeat the input counts there). Mid-stream `error`
events are sorted by their type as error answers are (errors.py).

Source: Anthropic's streaming messages
(platform.claude.com/docs/en/build-with-claude/streaming: the event types, `ping`,
`input_json_delta`, `error` events, and new event types to be ignored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.core import ChatRequest, Usage
from proxy.estimates import estimate_text_tokens, text_weight
from proxy.providers.anthropic.request import answer_tool_name
from proxy.providers.anthropic.response import INPUT_FIELDS, finish_reason, input_tokens
from proxy.providers.base import StreamTranslator, load_json
from proxy.sse import SSEEvent

if TYPE_CHECKING:
    from proxy.providers.anthropic.provider import AnthropicProvider


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


class AnthropicUsage(StreamTranslator):
    """The usage of a Claude stream, translated or passed through: `message_start` gives the
    input counts (input, cache writes, cache reads), `message_delta` the cumulative output
    (and, in newer API versions, the input counts again); `_count` reads either's usage."""

    def __init__(self, chat: ChatRequest) -> None:
        super().__init__(chat)
        self.input_counts: dict[str, int] = {}
        self.output_tokens = 0
        self.started = False  # message_start seen: the input count is the upstream's

    def _count(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in INPUT_FIELDS:
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


class AnthropicStream(AnthropicUsage):
    def __init__(self, chat: ChatRequest, provider: AnthropicProvider):
        super().__init__(chat)
        self.provider = provider
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self.silent: set[int] = set()  # tool blocks whose arguments have not begun
        self.answer = answer_tool_name(chat)
        self.answer_blocks: set[int] = set()  # blocks of response_format's tool: content

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if event.comment or not event.data:
            return []
        data = load_json(event.data, "stream event")
        kind = event.event or data.get("type")
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_stop":
            return self._block_stop(data)
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
            if stop == "tool_use" and self.answer_blocks and not self.tool_index:
                return [_chunk({}, "stop")]  # only response_format's tool was called
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
        return []  # ping, and event types added after this was written

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text" and block.get("text"):
            self.produced_chars += text_weight(block["text"])
            return [_chunk({"content": block["text"]})]
        if block.get("type") == "tool_use":
            at = data.get("index", -1)
            if self.answer is not None and block.get("name") == self.answer:
                self.answer_blocks.add(at)
                self.silent.add(at)
                return []
            index = self.tool_index[at] = len(self.tool_index)
            self.silent.add(at)
            name = str(block.get("name") or "")
            self.produced_chars += text_weight(name)
            call = {
                "index": index,
                "id": str(block.get("id") or ""),
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
            at = data.get("index", -1)
            fragment = str(delta["partial_json"])
            self.silent.discard(at)
            if at in self.answer_blocks:
                self.produced_chars += text_weight(fragment)
                return [_chunk({"content": fragment})]
            index = self.tool_index.get(at)
            if index is None:
                return []
            self.produced_chars += text_weight(fragment)
            call = {"index": index, "function": {"arguments": fragment}}
            return [_chunk({"tool_calls": [call]})]
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            # Not sent, but billed as output: count it, for the estimate of a cut stream.
            self.produced_chars += text_weight(delta["thinking"])
        return []  # signature_delta, citations_delta

    def _block_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """A tool without parameters streams `input: {}` and one empty fragment: its arguments
        must still add up to JSON, as the non-stream answer's "{}" does."""
        at = data.get("index", -1)
        if at not in self.silent:
            return []
        self.silent.discard(at)
        self.produced_chars += 2
        if at in self.answer_blocks:
            return [_chunk({"content": "{}"})]
        call = {"index": self.tool_index[at], "function": {"arguments": "{}"}}
        return [_chunk({"tool_calls": [call]})]
