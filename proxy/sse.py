"""Server-sent events: an incremental parser for upstream streams, and framing for ours.

The parser takes bytes as they arrive from the socket, in pieces of any size, and returns
each complete event as soon as its terminating blank line is in. It never waits for more
than the current event, so nothing is held back. Lines end in LF, CRLF or CR (the SSE spec);
comments (`: keep-alive`) become events with `comment` set so a caller can see them.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.errors import UpstreamError

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"  # a comment: a sign of life that SSE clients skip
# The largest event a provider may send (a base64 image or audio piece is the largest
# honest one): past it a stream is cut with an error rather than held without bound.
MAX_EVENT_BYTES = 16 << 20


@dataclass(slots=True)
class SSEEvent:
    data: bytes = b""
    event: str | None = None
    comment: bool = False  # a `:` comment line on its own, such as DeepSeek's `: keep-alive`


class SSEParser:
    """Feed it bytes; get back the events they complete.

    A line still coming is kept as its pieces, joined once when its end arrives, and only the
    new bytes are searched: an event of n bytes in reads of k costs O(n), not O(n^2 / k) (an
    8 MB event in 8 KiB reads took 2.3 s of the event loop when each read rescanned it all).
    An event (or a line) over `max_event` bytes raises UpstreamError: the stream cannot be
    followed, and holding it would grow without bound.
    """

    __slots__ = (
        "_data",
        "_data_size",
        "_event",
        "_has_data",
        "_max",
        "_pending",
        "_size",
        "_skip_lf",
    )

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._pending: list[bytes] = []  # the pieces of a line whose end has not come
        self._data_size = 0  # bytes of the event's data lines so far
        self._size = 0  # and with the pending line
        self._max = max_event
        self._data: list[bytes] = []
        self._event: str | None = None
        self._has_data = False
        self._skip_lf = False  # the last chunk ended in a CR: a LF first in the next is its pair

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that `chunk`, the next bytes of the stream, completes."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if b"\r" in chunk:
            chunk = self._to_lf(chunk)
        if self._pending:
            if b"\n" not in chunk:
                self._hold(chunk)
                return []
            chunk = b"".join(self._pending) + chunk
            self._pending.clear()
            self._size = self._data_size
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            line = chunk[start:end]
            start = end + 1
            if not line:
                if self._has_data or self._event is not None:
                    events.append(SSEEvent(b"\n".join(self._data), self._event))
                self._data.clear()
                self._event = None
                self._has_data = False
                self._size = 0
            elif line[0] == 0x3A:  # ':' comment
                events.append(SSEEvent(line[1:].strip(), comment=True))
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self._data.append(value)
                    self._has_data = True
                    self._size += len(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
                # `id` and `retry` mean nothing to a one-shot proxy stream.
        self._data_size = self._size
        if start < len(chunk):
            self._hold(chunk[start:])
        elif self._size > self._max:
            raise UpstreamError(f"The upstream provider sent an event over {self._max} bytes.")
        return events

    def _to_lf(self, chunk: bytes) -> bytes:
        """`chunk` with its lines ended by LF alone. A CR at the very end ends its line now
        (holding it back would hold back the event it completes); if it was the first half of
        a CRLF, the LF is dropped from the next chunk (`_skip_lf`)."""
        self._skip_lf = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._size += len(piece)
        if self._size > self._max:
            raise UpstreamError(f"The upstream provider sent an event over {self._max} bytes.")

    def close(self) -> list[SSEEvent]:
        """Events left at the end of the body (a last event without its blank line)."""
        tail = self.feed(b"\n\n") if self._pending or self._has_data else []
        self._pending.clear()
        self._skip_lf = False
        self._size = self._data_size = 0
        return tail

    @property
    def pending_bytes(self) -> int:
        return sum(len(p) for p in self._pending)


def frame(data: bytes) -> bytes:
    """One SSE event carrying `data` (a single line of JSON)."""
    return b"data: " + data + b"\n\n"
