"""The stream relay: a provider's event stream to the client, read by read, in the client's
protocol.

Theory of operation. Every read from the upstream socket (at most `upstream.STREAM_READ`
bytes) is parsed at once (`sse.SSEParser`), the events it completes are translated to OpenAI
chunks by the provider's StreamTranslator, the chunks of the read are encoded together by the
client protocol's StreamEncoder, and the bytes are written to the client in one write before
the next read. The events one read completes arrived together, so they leave together: one
write (one syscall) for all of them holds none back. A fast upstream's 20 events often come in
one read; writing them one by one cost a syscall each, and batching took the gateway from 1,970
to 2,950 20-chunk streams/s (one worker, Redis, c=32). A write goes straight to the transport
(no buffering of ours, TCP_NODELAY on aiohttp's side).

The client's response is prepared lazily, at the first chunk, so that a failure before any
byte has gone out still gets a proper status and, later, a retry on another deployment; or
FIRST_SIGN_SECONDS after a provider answered 200 and then stayed silent, so that the client
sees a sign of life (its read timeout may be shorter than a reasoning model's thinking).
Once headers are out, a failure is the encoder's error event, and the end.

Nothing is read from the provider while a write waits for a client whose socket is full, so an
unread stream holds no more than the socket buffers. A client that reads nothing for
`Upstream.client_read_timeout` seconds is cut off: its connection is reset and the handler is
cancelled, as for a client that left, so that it is charged what was produced.

The relay knows a client protocol only by its encoder: speaking another one to clients is
adding an encoder (`proxy/protocols/`), not changing the relay.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from proxy.core import Usage
from proxy.errors import GatewayError, UpstreamError
from proxy.providers.base import Provider, StreamTranslator
from proxy.sse import SSEParser
from proxy.upstream import PROVIDER_ERRORS, STREAM_READ, Timing, Upstream

# A stream's client may stop reading; then the relay stops reading its upstream, and what one
# stream holds is bounded by the buffers (aiohttp's defaults made it ~3 MB: a 256 KiB read
# buffer, and one read of it all turned into one write of ~600 KiB, kept with its parts while
# it waited): reads of STREAM_READ bytes and the upstream socket's STREAM_RCVBUF (upstream.py),
# and here the client transport, which pauses the relay past STREAM_WRITE_HIGH_WATER, and the
# client socket's kernel buffer, STREAM_SNDBUF (not autotuned up to 4 MiB), so that a client
# that reads nothing is noticed within seconds, not minutes.
STREAM_WRITE_HIGH_WATER = 1 << 13
STREAM_SNDBUF = 1 << 16
# A stream whose client left: what the provider already sent is read and counted for at
# most CUT_DRAIN_SECONDS, until nothing comes for CUT_DRAIN_IDLE_SECONDS.
CUT_DRAIN_SECONDS = 0.25
CUT_DRAIN_IDLE_SECONDS = 0.01
# A stream whose provider answered 200 but sends nothing yet (a reasoning model thinking):
# the client gets the headers and a comment after FIRST_SIGN_SECONDS, not after the first
# token, and then a comment whenever it has had nothing for KEEPALIVE_SECONDS (the
# provider's own comments are forwarded once the headers are out). A client's read timeout
# shorter than the silence would otherwise fire where the provider's would not. The cost:
# once the headers are out, no other deployment can take the request over.
FIRST_SIGN_SECONDS = 2.0
KEEPALIVE_SECONDS = 15.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class StreamEncoder(Protocol):
    """How one client protocol writes its stream: one encoder per stream (it may keep state,
    such as whether the usage went out), fed what the translator's `feed` returns: OpenAI
    chunks, or a native speaker's events in the client's protocol (providers/base.py)."""

    @property
    def keepalive(self) -> bytes:
        """A sign of life that the client skips (a comment, or the protocol's ping event)."""
        ...

    def encode(self, chunks: list[Any]) -> bytes:
        """The bytes of one read's chunks, in order. The list (not empty) may be reused once
        this returns: keep no reference to it; the chunks themselves may be changed and kept."""
        ...

    def error(self, exc: GatewayError, usage: Usage) -> bytes:
        """The last bytes of a stream that failed after it began; `usage` is its charge."""
        ...

    def end(self) -> bytes:
        """The last bytes of a stream that ended well."""
        ...


@dataclass(slots=True)
class ProviderStream:
    """The provider's side of a stream: its answer (headers read: 2xx, `Upstream.open`),
    and the translator of its events."""

    provider: Provider
    response: aiohttp.ClientResponse
    translator: StreamTranslator


@dataclass(slots=True)
class ClientStream:
    """The client's side of a stream: its request, the headers its answer carries besides
    SSE_HEADERS, and the encoder of its protocol."""

    request: web.Request
    headers: dict[str, str]
    encoder: StreamEncoder


class StreamRelay:
    """One stream, from `source` to `client`: construct and await `run` in the request's task.
    `upstream` maps the provider's errors and holds the client read timeout."""

    __slots__ = (
        "chunks",
        "client",
        "encoder",
        "feed",
        "frames",
        "name",
        "out",
        "parser",
        "source",
        "timing",
        "translator",
        "upstream",
        "watchdog",
    )

    def __init__(
        self, upstream: Upstream, source: ProviderStream, client: ClientStream, timing: Timing
    ) -> None:
        self.upstream = upstream
        self.source = source
        self.client = client
        self.timing = timing
        self.name = source.provider.config.name
        self.translator = source.translator
        self.feed = source.translator.feed
        self.encoder = client.encoder
        self.parser = SSEParser()
        self.chunks: list[Any] = []  # translated, not yet encoded
        self.frames: list[bytes] = []  # encoded, not yet written
        self.out: web.StreamResponse | None = None  # the client's response, once prepared
        self.watchdog: IdleWatchdog

    async def run(self) -> web.StreamResponse:
        """Relay the stream to its end: the client's response, complete. Raises the
        GatewayError of a stream that failed before anything went out to the client."""
        watchdog = self.watchdog = self._watch()
        try:
            return await self._relay()
        except asyncio.CancelledError:
            if watchdog.client_stalled:
                self.upstream.metrics.client_stalls.inc()
            raise
        finally:
            watchdog.close()

    async def _relay(self) -> web.StreamResponse:
        """The loop of `run`: a read, its bytes, a write. On any early exit (client gone, an
        error) the provider's response is released unfinished, which closes its connection:
        the provider sees it at once and stops generating."""
        content, timing, clock = self.source.response.content, self.timing, time.perf_counter
        watchdog, drain, out = self.watchdog, self.client.request.writer.drain, self.out
        try:
            while True:
                since = clock()
                watchdog.reading = True
                try:
                    data = await content.read(STREAM_READ)
                except asyncio.CancelledError as exc:
                    self._woken(exc)  # a beat, if it returns: a sign of life is due
                    data = None
                except PROVIDER_ERRORS as exc:
                    self.upstream.fail(self.name, "stream", exc)
                finally:
                    watchdog.reading = False
                    timing.upstream += clock() - since
                if data:
                    payload, data = self._translate(data), b""  # only the payload is kept
                    if payload:
                        if out is None or not timing.first_chunk:
                            out = await self._first()
                        watchdog.writing = True
                        try:
                            await out.write(payload)
                            # out.write waits for the client only every 64 KiB: wait now,
                            # as soon as its transport is past its high-water mark.
                            await drain()
                        finally:
                            watchdog.writing = False
                elif data is None:
                    out = await self._beat()
                else:
                    break
            self._finish()
        except GatewayError as exc:
            if self.out is None and not self.frames:
                raise  # nothing went out: the request may yet go to another deployment
            return await self._close(exc)
        except (asyncio.CancelledError, ConnectionResetError):
            await self._cut()
            raise
        finally:
            self.source.response.release()
        return await self._close()

    def _watch(self) -> IdleWatchdog:
        timeouts = self.source.provider.config.timeouts
        return IdleWatchdog(
            timeouts.idle,
            self.upstream.client_read_timeout,
            max(timeouts.first_byte, timeouts.idle),
        )

    def _woken(self, exc: asyncio.CancelledError) -> None:
        """A read was cancelled: returns if the watchdog did it for a sign of life to the
        client (a beat: read on); raises the provider's error if it did it because the
        provider stalled, and `exc` if it did not do it (the client left)."""
        watchdog = self.watchdog
        if not (watchdog.beat or watchdog.fired):
            raise exc
        watchdog.task.uncancel()
        if watchdog.beat:
            watchdog.beat = False
            return
        self.upstream.fail(self.name, "stream", exc)

    def _translate(self, data: bytes) -> bytes:
        """Parse one read (b"": the end of the body), translate the events it completes, and
        encode their chunks, all of the read's at once: the bytes to write for it."""
        chunks, frames, feed = self.chunks, self.frames, self.feed
        progressed = False
        try:
            for event in self.parser.feed(data) if data else self.parser.close():
                if event.comment:
                    # A sign of life for the client once the headers are out: ours, not the
                    # provider's bytes. Not progress: comments alone do not keep a stream
                    # open past `first_byte` (watchdog).
                    if self.out is not None:
                        self._flush()
                        frames.append(self.encoder.keepalive)
                    continue
                progressed = True
                chunks += feed(event)
        except GatewayError:
            self._flush()  # the chunks of the events before an error event go out before it
            raise
        if progressed:
            self.watchdog.progress()  # once a read, not once an event
        if chunks:
            payload = self.encoder.encode(chunks)
            chunks.clear()
            if not frames:
                return payload
            frames.append(payload)
        payload = b"".join(frames)
        frames.clear()
        return payload

    def _flush(self) -> None:
        """Encode the chunks translated so far into `frames` (something else comes next)."""
        if self.chunks:
            self.frames.append(self.encoder.encode(self.chunks))
            self.chunks.clear()

    def _finish(self) -> None:
        """The body ended: the events of its last bytes and the translator's last chunks go
        into `frames`; raises UpstreamError if the provider did not say it was done."""
        last, translator = self._translate(b""), self.translator
        if last:
            self.frames.append(last)
        tail = translator.finish()
        if tail:
            self.frames.append(self.encoder.encode(tail))
        if not translator.done:
            self.upstream.metrics.upstream_errors.labels(self.name, "truncated").inc()
            raise UpstreamError(f"Provider '{self.name}' ended the stream early.")

    async def _close(self, exc: GatewayError | None = None) -> web.StreamResponse:
        """End the stream: what is left of it, then the encoder's end; or with `exc`, the
        encoder's error (with the usage: a cut stream is charged what was produced)."""
        frames, encoder = self.frames, self.encoder
        if exc is None:
            frames.append(encoder.end())
        else:
            frames.append(encoder.error(exc, self.translator.final_usage()))
        out = await self._first()
        watchdog = self.watchdog
        watchdog.writing = True
        try:
            await out.write(b"".join(frames))
            await out.write_eof()
        finally:
            watchdog.writing = False
        return out

    async def _cut(self) -> None:
        """The client left (a cancel, or a write to its closed connection) or stalled. Count
        the rest first: resetting a stalled client cancels this task again."""
        await _count_the_rest(self.source.response.content, self.parser, self.translator)
        if self.watchdog.client_stalled:
            _reset(self.client.request)

    async def _first(self) -> web.StreamResponse:
        """The first chunk of the answer is ready: send the headers if they are not out yet
        (a beat may have sent them), and note the time to first chunk."""
        out = self.out if self.out is not None else await self._start()
        if not self.timing.first_chunk:
            self.timing.first_chunk = time.perf_counter()
        return out

    async def _beat(self) -> web.StreamResponse:
        """A sign of life for the client (not a chunk of the answer: no TTFT)."""
        out = self.out if self.out is not None else await self._start()
        watchdog = self.watchdog
        watchdog.writing = True
        try:
            await out.write(self.encoder.keepalive)
            await self.client.request.writer.drain()
        finally:
            watchdog.writing = False
        return out

    async def _start(self) -> web.StreamResponse:
        """Send the headers: from now on the status is 200, whatever happens."""
        self.timing.committed = True
        request = self.client.request
        out = web.StreamResponse(status=200, headers={**SSE_HEADERS, **self.client.headers})
        await out.prepare(request)
        transport = request.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=STREAM_WRITE_HIGH_WATER)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        self.out = out
        return out


def _reset(request: web.Request) -> None:
    """Close a client's connection with a reset: what it did not read is dropped at once, in
    our buffers and the kernel's, and it sees the end (a plain close would send it all first)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _count_the_rest(
    content: aiohttp.StreamReader, parser: SSEParser, translator: StreamTranslator
) -> None:
    """The client is gone, but what the provider already sent is billed: read it (for a
    moment at most, while it keeps coming) so that the charge counts it, then stop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CUT_DRAIN_SECONDS
    try:
        while not translator.done and (left := deadline - loop.time()) > 0:
            async with asyncio.timeout(min(left, CUT_DRAIN_IDLE_SECONDS)):
                data = await content.read(STREAM_READ)
            for event in parser.feed(data) if data else parser.close():
                translator.feed(event)
            if not data:
                return
    except (TimeoutError, GatewayError, *PROVIDER_ERRORS):
        pass


class IdleWatchdog:
    """Cancels the current task when a read from the provider has waited `idle` seconds
    (`fired`), or a write to the client has waited `client_idle` seconds (`client_stalled`),
    or a read waits and the client has had nothing for FIRST_SIGN_SECONDS (before the first
    write) or KEEPALIVE_SECONDS (after it): `beat`, the relay sends a keep-alive and reads on.
    A provider that sends only comments (bytes, but no event) for `events_idle` seconds
    (`timeouts.first_byte`) is stalled too (`fired`): comments show it alive, not working.

    One timer per idle period, not one per read: `asyncio.timeout` around every read armed
    and cancelled a timer per chunk, 4.0 us a read against 0.1 us here (uvloop, timeit).
    The relay sets `reading` around each read and `writing` around each write; the timer, when
    it fires, looks at how long the current read or write has waited and either cancels the
    task or sets itself again for when that one would be overdue. A write waits only while
    the client's socket is full: a client that reads nothing for `client_idle` seconds.
    """

    __slots__ = (
        "_client_idle",
        "_event_at",
        "_events_idle",
        "_handle",
        "_idle",
        "_loop",
        "_read_since",
        "_sent",
        "_silence",
        "_write_since",
        "beat",
        "client_stalled",
        "fired",
        "task",
    )

    def __init__(
        self, idle: float, client_idle: float = float("inf"), events_idle: float = float("inf")
    ):
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self._idle = idle
        self._client_idle = client_idle
        self._read_since: float | None = None
        self._write_since: float | None = None
        self.fired = False
        self.client_stalled = False
        self.beat = False
        self._sent = self._loop.time()  # when the client last got something (or the start)
        self._events_idle = events_idle
        self._event_at = self._sent  # when the provider last sent an event (or the start)
        self._silence = FIRST_SIGN_SECONDS  # how long it may wait for the next thing
        self._handle = self._loop.call_at(
            self._sent + min(idle, client_idle, self._silence), self._check
        )

    @property
    def reading(self) -> bool:
        return self._read_since is not None

    @reading.setter
    def reading(self, value: bool) -> None:
        self._read_since = self._loop.time() if value else None

    def progress(self) -> None:
        """The provider sent an event (not a comment)."""
        self._event_at = self._loop.time()

    @property
    def writing(self) -> bool:
        return self._write_since is not None

    @writing.setter
    def writing(self, value: bool) -> None:
        if value:
            self._write_since = self._loop.time()
        else:
            self._write_since = None
            self._sent = self._loop.time()
            self._silence = KEEPALIVE_SECONDS

    def _check(self) -> None:
        now = self._loop.time()
        read, write = self._read_since, self._write_since
        if read is not None and (
            now - read >= self._idle or now - self._event_at >= self._events_idle
        ):
            self.fired = True
            self.task.cancel()
            return
        if write is not None and now - write >= self._client_idle:
            self.client_stalled = True
            self.task.cancel()
            return
        if read is not None and not self.beat and now - self._sent >= self._silence:
            self.beat = True
            self.task.cancel()
            self._sent = now
        # Deadlines of what is going on now: a read's, or a write's (a check while neither
        # is set finds nothing due and sets itself again, at most `_silence` later).
        reading = read is not None
        due = min(
            (read if read is not None else now) + self._idle,
            (write if write is not None else now) + self._client_idle,
            (self._sent if reading else now) + self._silence,
            (self._event_at if reading else now) + self._events_idle,
        )
        self._handle = self._loop.call_at(max(due, now + 0.001), self._check)

    def close(self) -> None:
        self._handle.cancel()
