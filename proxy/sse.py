"""Server-sent events: an incremental parser for upstream streams, and framing for ours.

The parser takes bytes as they arrive from the socket, in pieces of any size, and returns
each complete event as soon as its terminating blank line is in. It never waits for more
than the current event, so nothing is held back. Lines end in LF, CRLF or CR (the SSE spec);
comments (`: keep-alive`) become events with `comment` set so a caller can see them.
"""

from __future__ import annotations

from dataclasses import dataclass

DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class SSEEvent:
    data: bytes = b""
    event: str | None = None
    comment: bool = False  # a `:` comment line on its own, such as DeepSeek's `: keep-alive`


class SSEParser:
    """Feed it bytes; get back the events they complete."""

    __slots__ = ("_buffer", "_data", "_event", "_has_data", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._has_data = False
        self._skip_lf = False  # the last chunk ended in a CR: a LF first in the next is its pair

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if self._skip_lf and buffer:
            self._skip_lf = False
            if buffer[0] == 0x0A:
                buffer = buffer[1:]
        if b"\r" in buffer:
            # A CR at the very end ends its line now (holding it back would hold back the
            # event it completes); if it was the first half of a CRLF, the LF is dropped later.
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if not line:
                if self._has_data or self._event is not None:
                    events.append(SSEEvent(b"\n".join(self._data), self._event))
                self._data.clear()
                self._event = None
                self._has_data = False
            elif line[0] == 0x3A:  # ':' comment
                events.append(SSEEvent(line[1:].strip(), comment=True))
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self._data.append(value)
                    self._has_data = True
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
                # `id` and `retry` mean nothing to a one-shot proxy stream.
        self._buffer = buffer[start:]
        return events

    def close(self) -> list[SSEEvent]:
        """Events left at the end of the body (a last event without its blank line)."""
        tail = self.feed(b"\n\n") if self._buffer or self._has_data else []
        self._buffer = b""
        self._skip_lf = False
        return tail

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)


def frame(data: bytes) -> bytes:
    """One SSE event carrying `data` (a single line of JSON)."""
    return b"data: " + data + b"\n\n"
