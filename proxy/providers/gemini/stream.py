"""Gemini's `streamGenerateContent?alt=sse` -> OpenAI chunks, one event at a time.

Each SSE event is a whole GenerateContentResponse carrying the new parts of each candidate
and the usage *so far*: `usageMetadata` is cumulative and repeated in every chunk, so the last
one wins and nothing is summed. Google sends no terminal event; a candidate is over when it
carries `finishReason`, and the body then just ends. So the finish chunk goes out with the
finishReason and the usage chunk from `finish()` at EOF. Function calls arrive whole, each as
one `tool_calls` delta with its id and the complete arguments. An error event mid-stream is
mapped as an error answer is (errors.py).

Source: Gemini API reference, streamGenerateContent
(ai.google.dev/api/generate-content#method:-models.streamgeneratecontent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.core import ChatRequest
from proxy.estimates import text_weight
from proxy.providers.base import StreamTranslator, load_json
from proxy.providers.gemini.calls import tool_names
from proxy.providers.gemini.errors import error_object
from proxy.providers.gemini.request import candidate_count
from proxy.providers.gemini.response import blocked, candidate_output, finish_reason, usage_from
from proxy.sse import SSEEvent

if TYPE_CHECKING:
    from proxy.providers.gemini.provider import GeminiProvider


class GeminiStream(StreamTranslator):
    """One streamGenerateContent?alt=sse answer, chunk by chunk, `n` candidates by index."""

    def __init__(self, chat: ChatRequest, provider: GeminiProvider):
        super().__init__(chat)
        self.provider = provider
        self.n = candidate_count(chat.body)
        self.started = False
        self.finished: set[int] = set()
        self.seen: set[int] = set()  # candidate indexes that came
        self.calls_sent: dict[int, int] = {}  # candidate index -> tool calls streamed
        self.names = tool_names(chat.body)

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if event.comment or not event.data:
            return []
        payload = load_json(event.data, "stream event")
        error = error_object(payload)
        if error is not None:
            code = error.get("code")
            raise self.provider.map_error(code if isinstance(code, int) else 500, error, {})
        chunks: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            chunks.extend(_chunk(i, {"role": "assistant", "content": ""}) for i in range(self.n))
        self.usage = usage_from(payload.get("usageMetadata")) or self.usage
        candidates = payload.get("candidates")
        if not candidates and blocked(payload):
            for index in range(self.n):
                if index not in self.finished:
                    chunks.append(_chunk(index, {}, "content_filter"))
                    self.finished.add(index)
        for candidate in candidates if isinstance(candidates, list) else ():
            if isinstance(candidate, dict):
                chunks.extend(self._candidate(candidate))
        # Complete when every candidate that came has finished: Google may send fewer than
        # candidateCount (one stream of n > 1 comes with one candidate at times).
        self.done = bool(self.finished) and self.seen <= self.finished
        return chunks

    def _candidate(self, candidate: dict[str, Any]) -> list[dict[str, Any]]:
        index = candidate.get("index", 0)  # proto3 JSON leaves out a zero index
        if not isinstance(index, int) or index in self.finished:
            return []
        self.seen.add(index)
        chunks = []
        text, calls = candidate_output(candidate, self.names)
        if text:
            self.produced_chars += text_weight(text)
            chunks.append(_chunk(index, {"content": text}))
        if calls:
            first = self.calls_sent.get(index, 0)
            self.calls_sent[index] = first + len(calls)
            for k, call in enumerate(calls):
                function = call["function"]
                self.produced_chars += text_weight(function["name"]) + text_weight(
                    function["arguments"]
                )
                chunks.append(_chunk(index, {"tool_calls": [{"index": first + k, **call}]}))
        reason = candidate.get("finishReason")
        if reason:
            chunks.append(_chunk(index, {}, finish_reason(reason, index in self.calls_sent)))
            self.finished.add(index)
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        if not self.done:
            return []
        # A candidate that never came (its role went out first) is finished empty.
        chunks = [_chunk(i, {}, "stop") for i in range(self.n) if i not in self.finished]
        if self.chat.include_usage:
            chunks.append({"choices": [], "usage": self.final_usage().as_dict()})
        return chunks


def _chunk(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": reason}]}
