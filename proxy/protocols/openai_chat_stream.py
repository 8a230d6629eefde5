"""How an OpenAI chat completions stream is written: the relay's encoder for `/chat/completions`.

Every chunk is one `data: {...}` event carrying the stream's `id`, `object`, `created` and
`model`; a stream that ended well ends with `data: [DONE]`. One that failed after it began
ends with the usage the client asked for (`stream_options.include_usage`), if it has not
had it, since a cut stream is charged what was produced, and then the error event
(`profiles.stream_error`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.core import ChatRequest, Usage
from proxy.errors import GatewayError
from proxy.profiles import stream_error
from proxy.sse import DONE, KEEPALIVE, frame


class OpenAIChatStream:
    """The encoder (`relay.StreamEncoder`) of one chat completions stream."""

    __slots__ = ("_stamp", "_usage_sent")

    keepalive = KEEPALIVE

    def __init__(self, request_id: str, chat: ChatRequest) -> None:
        self._stamp = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": chat.public_model,
        }
        # A chunk with usage went out: the client knows its charge. Set from the start when
        # the client did not ask for it, so that no chunk is looked at for it.
        self._usage_sent = not chat.include_usage

    def encode(self, chunks: list[dict[str, Any]]) -> bytes:
        """The events of one read's chunks (completed in place with the stream's stamp).
        Framed here, not by `sse.frame`: a call less per chunk."""
        stamp, dumps, sent = self._stamp, orjson.dumps, self._usage_sent
        if len(chunks) == 1:  # a provider paced by its tokens: one event a read
            chunk = chunks[0]
            chunk.update(stamp)
            self._usage_sent = sent or bool(chunk.get("usage"))
            return b"data: " + dumps(chunk) + b"\n\n"
        frames = []
        for chunk in chunks:
            chunk.update(stamp)
            sent = sent or bool(chunk.get("usage"))
            frames.append(b"data: " + dumps(chunk) + b"\n\n")
        self._usage_sent = sent
        return b"".join(frames)

    def error(self, exc: GatewayError, usage: Usage) -> bytes:
        """The usage the client asked for and has not had, then the error event."""
        error = frame(orjson.dumps(stream_error(exc)))
        if self._usage_sent:
            return error
        chunk = {"choices": [], "usage": usage.as_dict(), **self._stamp}
        return frame(orjson.dumps(chunk)) + error

    def end(self) -> bytes:
        """`data: [DONE]`."""
        return DONE
