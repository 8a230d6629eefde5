"""HTTP to providers: send a provider's request, hand its answer back, pump its stream.

This is the one boundary where aiohttp's client errors become ours: refused or reset
connections are 502, timeouts 504, an upstream error status whatever the provider maps it to.

Streams are pumped read by read: every read from the upstream socket is parsed at once,
the events it completes are translated and written to the client in one write before the
next read, and a write goes straight to the transport (no buffering of ours, TCP_NODELAY on
aiohttp's side).
The client's response is prepared lazily, at the first chunk, so that a failure before any
byte has gone out still gets a proper status and, later, a retry on another deployment; or
FIRST_SIGN_SECONDS after a provider answered 200 and then stayed silent, so that the client
sees a sign of life (its read timeout may be shorter than a reasoning model's thinking).
Once headers are out, a failure is one `data: {"error": {"message", "type", "code"}}` event
and the end.
"""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from proxy.core import ChatRequest, Usage
from proxy.errors import GatewayError, UpstreamError, UpstreamTimeout
from proxy.metrics import Metrics
from proxy.profiles import stream_error
from proxy.providers.base import Provider, StreamTranslator, UpstreamRequest
from proxy.sse import DONE, SSEParser, frame

BIG_BODY = 1 << 20
# A stream's client may stop reading; then the pump stops reading its upstream, and what one
# stream holds is bounded by these (aiohttp's defaults made it ~3 MB: a 256 KiB read buffer,
# and one read of it all turned into one write of ~600 KiB, kept with its parts while it
# waited). Reads from the upstream are at most STREAM_READ bytes, and aiohttp stops reading
# its socket at 2 x that unread; the client transport pauses the pump past
# STREAM_WRITE_HIGH_WATER; the client socket's kernel buffer is STREAM_SNDBUF (not autotuned
# up to 4 MiB), so a client that reads nothing is noticed within seconds, not minutes.
# 8 KiB, not 4: a fast upstream's whole 20-event answer (4.1 KB in the benchmarks) is one
# read and one write. 64 unread streams at 1,000 events/s: 93 KiB each (4 KiB: 62 KiB).
STREAM_READ = 1 << 13
STREAM_WRITE_HIGH_WATER = 1 << 13
STREAM_SNDBUF = 1 << 16
# And the upstream socket's kernel buffer: what a provider can send ahead of a client that
# stopped reading (the gateway stops reading too) is bounded by this.
STREAM_RCVBUF = 1 << 16
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
KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


@dataclass(slots=True)
class Timing:
    """Where one request's time went: for the latency, TTFT and overhead metrics."""

    started: float = field(default_factory=time.perf_counter)
    first_chunk: float = 0.0  # when the first byte of the answer was ready (0: not yet)
    committed: bool = False  # the answer's status and headers went out: no other attempt
    upstream: float = 0.0  # seconds spent waiting on the provider
    store: float = 0.0  # seconds spent waiting on Redis


class Upstream:
    """The shared client session, and the request/response cycle with one provider."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        client_read_timeout: float = float("inf"),
    ):
        self.session = session
        self.metrics = metrics
        self.client_read_timeout = client_read_timeout  # seconds a stream's client may not read
        self._client_timeouts: dict[str, aiohttp.ClientTimeout] = {}

    def _client_timeout(self, provider: Provider) -> aiohttp.ClientTimeout:
        timeout = self._client_timeouts.get(provider.config.name)
        if timeout is None:
            connect = provider.config.timeouts.connect
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect)
            self._client_timeouts[provider.config.name] = timeout
        return timeout

    async def open(
        self, provider: Provider, req: UpstreamRequest, timing: Timing, *, stream: bool = False
    ) -> aiohttp.ClientResponse:
        """Send the request; return the response once its headers say 2xx. A `stream`'s body
        is buffered in small reads (STREAM_READ)."""
        timeouts = provider.config.timeouts
        since = time.perf_counter()
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await self.session.post(
                    req.url,
                    # aiohttp warns about bytes bodies over 1 MiB; a file-like one it streams.
                    data=req.body if len(req.body) < BIG_BODY else io.BytesIO(req.body),
                    headers=req.headers,
                    # Never followed: a 307 would send the body and the key headers
                    # (x-api-key, x-goog-api-key) to whatever host it names.
                    allow_redirects=False,
                    timeout=self._client_timeout(provider),
                    read_bufsize=STREAM_READ if stream else None,
                )
                if resp.status >= 300:
                    body = await resp.read()
                    resp.release()
                    self.metrics.upstream_errors.labels(
                        provider.config.name, f"http_{resp.status}"
                    ).inc()
                    raise provider.error_from_response(resp.status, body, _lower(resp.headers))
        except TimeoutError as exc:
            self.metrics.upstream_errors.labels(provider.config.name, "timeout").inc()
            raise UpstreamTimeout(
                f"Provider '{provider.config.name}' did not answer in time."
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.metrics.upstream_errors.labels(provider.config.name, "connect").inc()
            raise UpstreamError(f"Could not reach provider '{provider.config.name}'.") from exc
        finally:
            timing.upstream += time.perf_counter() - since
        return resp

    async def complete(
        self, provider: Provider, req: UpstreamRequest, chat: ChatRequest, timing: Timing
    ) -> tuple[dict[str, Any], Usage | None]:
        """A non-stream answer as an OpenAI completion dict."""
        resp = await self.open(provider, req, timing)
        since = time.perf_counter()
        try:
            if resp.content.is_eof():  # the whole body came with the headers: no timer needed
                body = await resp.read()
            else:
                async with asyncio.timeout(provider.config.timeouts.idle):
                    body = await resp.read()
        except TimeoutError as exc:
            self.metrics.upstream_errors.labels(provider.config.name, "timeout").inc()
            raise UpstreamTimeout(f"Provider '{provider.config.name}' stalled.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.metrics.upstream_errors.labels(provider.config.name, "reset").inc()
            raise UpstreamError(
                f"Provider '{provider.config.name}' dropped the connection."
            ) from exc
        finally:
            resp.release()
            timing.upstream += time.perf_counter() - since
        return provider.parse_response(body, chat)

    async def pump(
        self,
        request: web.Request,
        provider: Provider,
        resp: aiohttp.ClientResponse,
        translator: StreamTranslator,
        stamp: dict[str, Any],
        headers: dict[str, str],
        timing: Timing,
    ) -> web.StreamResponse:
        """Forward the upstream stream to the client, one write per upstream read.

        The events one read completes arrived together, so they leave together: one write
        (one syscall) for all of them holds none back. A fast upstream's 20 events often come
        in one read; writing them one by one cost a syscall each, and batching took the
        gateway from 1,970 to 2,950 20-chunk streams/s (one worker, Redis, c=32).

        Nothing is read from the provider while a write waits for a client whose socket is
        full, so an unread stream holds no more than the socket buffers. A client that reads
        nothing for `client_read_timeout` seconds is cut off: its connection is closed and
        the handler is cancelled, as for a client that left, so that it is charged what was
        produced.
        """
        out: web.StreamResponse | None = None
        usage_sent = False  # a chunk with usage went out: the client knows its charge
        frames: list[bytes] = []  # this read's events, translated, framed, not yet written
        clock = time.perf_counter
        parser = SSEParser()
        name = provider.config.name
        content = resp.content
        transport = resp.connection.transport if resp.connection else None
        sock = transport.get_extra_info("socket") if transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STREAM_RCVBUF)
        timeouts = provider.config.timeouts
        watchdog = IdleWatchdog(
            timeouts.idle, self.client_read_timeout, max(timeouts.first_byte, timeouts.idle)
        )

        async def send(data: bytes, eof: bool = False) -> None:
            assert out is not None
            watchdog.writing = True
            try:
                await out.write(data)
                if eof:
                    await out.write_eof()
                else:
                    # out.write waits for the client only every 64 KiB written: wait now, as
                    # soon as the client's transport is past its high-water mark.
                    await request.writer.drain()
            finally:
                watchdog.writing = False

        try:
            try:
                while True:
                    since = clock()
                    watchdog.reading = True
                    try:
                        data = await content.read(STREAM_READ)
                    except asyncio.CancelledError as exc:
                        if watchdog.beat:  # the client has waited long enough for a sign
                            watchdog.task.uncancel()
                            watchdog.beat = False
                            data = None
                        elif not watchdog.fired:
                            raise
                        else:
                            watchdog.task.uncancel()
                            self.metrics.upstream_errors.labels(name, "stalled").inc()
                            raise UpstreamTimeout(f"Provider '{name}' stalled mid-stream.") from exc
                    except (aiohttp.ClientError, OSError) as exc:
                        self.metrics.upstream_errors.labels(name, "reset").inc()
                        raise UpstreamError(f"Provider '{name}' dropped the stream.") from exc
                    finally:
                        watchdog.reading = False
                        timing.upstream += clock() - since
                    if data is None:
                        if out is None:
                            out = await self._start(request, headers, timing)
                        await send(KEEPALIVE)
                        continue
                    progressed = False
                    for event in parser.feed(data) if data else parser.close():
                        if event.comment:
                            # A sign of life for the client once the headers are out: ours,
                            # not the provider's bytes. Not progress: comments alone do not
                            # keep a stream open past `first_byte` (watchdog).
                            if out is not None:
                                frames.append(KEEPALIVE)
                            continue
                        progressed = True
                        for chunk in translator.feed(event):
                            chunk.update(stamp)
                            usage_sent = usage_sent or bool(chunk.get("usage"))
                            frames.append(frame(orjson.dumps(chunk)))
                    if progressed:
                        watchdog.progress()  # once a read, not once an event
                    if not data:
                        break
                    if frames:
                        if out is None:
                            out = await self._start(request, headers, timing)
                        if not timing.first_chunk:
                            timing.first_chunk = clock()
                        payload = b"".join(frames)
                        frames.clear()  # nothing but the payload is kept while it waits
                        data = b""
                        await send(payload)
                for chunk in translator.finish():
                    chunk.update(stamp)
                    usage_sent = usage_sent or bool(chunk.get("usage"))
                    frames.append(frame(orjson.dumps(chunk)))
                if not translator.done:
                    self.metrics.upstream_errors.labels(name, "truncated").inc()
                    raise UpstreamError(f"Provider '{name}' ended the stream early.")
            except GatewayError as exc:
                if out is None and not frames:
                    raise
                # The chunks translated before the error still go out, then (once) the usage
                # the client asked for: a cut stream is charged what was produced, so it says so.
                if translator.chat.include_usage and not usage_sent:
                    usage = {"choices": [], "usage": translator.final_usage().as_dict(), **stamp}
                    frames.append(frame(orjson.dumps(usage)))
                frames.append(frame(orjson.dumps(stream_error(exc))))
                if out is None:
                    out = await self._start(request, headers, timing)
                timing.first_chunk = timing.first_chunk or clock()
                await send(b"".join(frames), eof=True)
                return out
            except (asyncio.CancelledError, ConnectionResetError):
                # The client left (a cancel, or a write to its closed connection) or stalled.
                # Count the rest first: resetting a stalled client cancels this task again.
                await _count_the_rest(content, parser, translator)
                if watchdog.client_stalled:
                    _reset(request)
                raise
            finally:
                # On any early exit (client gone, error) the body is unfinished, and release()
                # closes the connection: the provider sees it at once and stops generating.
                resp.release()
            if out is None:
                out = await self._start(request, headers, timing)
            if not timing.first_chunk:
                timing.first_chunk = clock()
            frames.append(DONE)
            await send(b"".join(frames), eof=True)
            return out
        except asyncio.CancelledError:
            if watchdog.client_stalled:
                self.metrics.client_stalls.inc()
            raise
        finally:
            watchdog.close()

    @staticmethod
    async def _start(
        request: web.Request, headers: dict[str, str], timing: Timing
    ) -> web.StreamResponse:
        timing.committed = True
        out = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
        await out.prepare(request)
        transport = request.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=STREAM_WRITE_HIGH_WATER)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
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
    except (TimeoutError, aiohttp.ClientError, OSError, GatewayError):
        pass


class IdleWatchdog:
    """Cancels the current task when a read from the provider has waited `idle` seconds
    (`fired`), or a write to the client has waited `client_idle` seconds (`client_stalled`),
    or a read waits and the client has had nothing for FIRST_SIGN_SECONDS (before the first
    write) or KEEPALIVE_SECONDS (after it): `beat`, the pump sends a comment and reads on.
    A provider that sends only comments (bytes, but no event) for `events_idle` seconds
    (`timeouts.first_byte`) is stalled too (`fired`): comments show it alive, not working.

    One timer per idle period, not one per read: `asyncio.timeout` around every read armed
    and cancelled a timer per chunk, 4.0 us a read against 0.1 us here (uvloop, timeit).
    The pump sets `reading` around each read and `writing` around each write; the timer, when
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


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
