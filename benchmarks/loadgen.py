"""The load generator: a lean HTTP/1.1 client on asyncio protocols, and the loops that drive it.

Why not an aiohttp client: on this 2-core machine the load generator shares its core with
the fake upstream, and aiohttp's client spends about 70 us of CPU per small request (12,500
requests/s with its core at 90%). Against the bare passthrough that left the harness core
as busy as the measured one, so the floor measured the harness, not the proxy. This client
writes a pre-encoded request and parses only what it must (status line, Content-Length or
chunked framing, SSE event boundaries): about 16 us per request (24,000 requests/s with
its core at 40%), so the proxy under test is the one that runs out of CPU.

It speaks plain HTTP/1.1 keep-alive, one request at a time per connection (no pipelining):
`concurrency` connections, each with one worker, the same traffic any client sends.

Timing: latencies use `perf_counter_ns` from the write of the request to its last byte.
A stream's events are stamped with `time.time_ns()` on entry to `data_received`, i.e. when
the event loop hands us the bytes; that includes this process's own scheduling delay, which
is why the table reports the upstream hit directly as well (the harness's own floor).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

# The workload: what every target is sent.
MODEL = "woozlit/gpt-4o-mini"
PACED_MS = 20  # must match a -paced<MS> model in gateway.yaml
PACED_MODEL = f"woozlit/gpt-4o-mini-paced{PACED_MS}"
OPEN_MS = 1000  # pacing of the --open-streams phase
OPEN_MODEL = f"woozlit/gpt-4o-mini-paced{OPEN_MS}"
CHURN_STREAMS = 3  # streams in a row on each connection of bench.py --churn
# The same through the gateway's Anthropic provider (bench.py --anthropic-paced).
ANTHROPIC_MODEL = "woozlit/claude"
ANTHROPIC_PACED_MODEL = f"woozlit/claude-paced{PACED_MS}"
PROMPT = "Say hello in one short sentence."
MESSAGES = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 1024  # the Messages API requires max_tokens
ANTHROPIC_VERSION = "2023-06-01"


def body(model: str, stream: bool) -> bytes:
    """A chat completions request."""
    payload: dict = {"model": model, "messages": MESSAGES, "stream": stream}
    if stream:
        # Every target then sends the client the same events: the upstream's usage chunk.
        payload["stream_options"] = {"include_usage": True}
    return orjson.dumps(payload)


def messages_body(model: str, stream: bool) -> bytes:
    """An Anthropic Messages API request (its API reference: `model`, `max_tokens` and
    `messages` required)."""
    return orjson.dumps(
        {"model": model, "max_tokens": MAX_TOKENS, "messages": MESSAGES, "stream": stream}
    )


def responses_body(model: str, stream: bool) -> bytes:
    """An OpenAI Responses API request: the prompt as a string `input`."""
    return orjson.dumps({"model": model, "input": PROMPT, "stream": stream})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def anthropic_auth(key: str) -> dict[str, str]:
    """Anthropic's headers: the key as `x-api-key` (the gateway also takes a Woozlit key
    there) and the API version."""
    return {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}


@dataclass(frozen=True, slots=True)
class Protocol:
    """A client protocol as the load generator speaks it: the path, the request body for a
    model, the headers that carry a key, and the models of its phases (plain, paced)."""

    name: str  # "chat", "messages", "responses": bench.py's phases are named after it
    title: str  # for the report
    path: str
    body: Callable[[str, bool], bytes]
    auth: Callable[[str], dict[str, str]]
    model: str
    paced_model: str


CHAT = Protocol(
    "chat", "chat completions", "/v1/chat/completions", body, bearer, MODEL, PACED_MODEL
)
MESSAGES_API = Protocol(
    "messages",
    "Messages",
    "/v1/messages",
    messages_body,
    anthropic_auth,
    ANTHROPIC_MODEL,
    ANTHROPIC_PACED_MODEL,
)
RESPONSES_API = Protocol(
    "responses", "Responses", "/v1/responses", responses_body, bearer, MODEL, PACED_MODEL
)
PROTOCOLS = {p.name: p for p in (CHAT, MESSAGES_API, RESPONSES_API)}


T_SENT = re.compile(rb'"t_sent":\s*(\d+)')
T_IN_CONTENT = re.compile(rb"\[(\d{16,20})\]")
# Named events (`event:` and `data:` lines): the ones that carry a delta's text (a paced
# stream's stamp; the closing events of a Responses stream repeat the whole text, stamps
# and all, and must not count), and the ones that end a stream, as [DONE] ends a chat one.
DELTA_EVENTS = frozenset((b"content_block_delta", b"response.output_text.delta"))
END_EVENTS = frozenset((b"message_stop", b"response.completed"))

# Chunked transfer decoding states.
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ProtocolError(Exception):
    pass


@dataclass(slots=True)
class Target:
    """Where to send requests, and the key they carry (the fake upstream and the bare
    passthrough take any)."""

    name: str
    host: str
    port: int
    key: str = "bench"

    def request(self, body: bytes, protocol: Protocol = CHAT) -> bytes:
        """The request's bytes: `body` on the protocol's path, with its headers."""
        lines = [
            f"POST {protocol.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            *(f"{k}: {v}" for k, v in protocol.auth(self.key).items()),
            f"Content-Length: {len(body)}",
            "",
            "",
        ]
        return "\r\n".join(lines).encode() + body


class StreamStats:
    """Per-stream SSE bookkeeping: event count, the end, and for paced streams the delays.

    Chat completions' events are `data:` lines and end with `data: [DONE]`; the Messages
    and Responses APIs' have an `event:` line first, their type, and end with
    `message_stop` / `response.completed` (END_EVENTS). Per event this costs a prefix test
    and, for a named one, a slice and a set lookup; the stamp is searched for in paced
    streams only, and in named events only in their deltas (DELTA_EVENTS).
    """

    __slots__ = (
        "content_events",
        "delays",
        "done",
        "events",
        "first_arrival",
        "paced",
        "reads",
        "sent",
        "tail",
        "window",
    )

    def __init__(self, paced: bool, window: tuple[int, int] | None = None):
        self.paced = paced
        self.window = window  # keep only the delays of chunks sent within (time_ns)
        self.tail = b""
        self.events = 0  # events other than [DONE] and comments
        self.content_events = 0  # events that carry a send stamp (paced streams)
        self.reads: set[int] = set()  # which socket reads delivered stamped events
        self.delays: list[int] = []  # ns, receive minus upstream send
        self.sent: list[int] = []  # ns, upstream send of each delay's chunk
        self.first_arrival = 0  # ns, when the first stamped chunk arrived (0: none yet)
        self.done = False

    def feed(self, data: bytes, t_ns: int, read_id: int) -> None:
        buffer = self.tail + data if self.tail else data
        parts = buffer.split(b"\n\n")
        self.tail = parts.pop()
        for event in parts:
            if event.startswith(b"data:"):
                if event[5:].strip() == b"[DONE]":
                    self.done = True
                    continue
                self.events += 1
                if self.paced:
                    self.stamped(T_SENT.search(event) or T_IN_CONTENT.search(event), t_ns, read_id)
            elif event.startswith(b"event:"):
                self.events += 1
                end = event.find(b"\n")
                name = event[6:end].strip() if end > 0 else event[6:].strip()
                if name in END_EVENTS:
                    self.done = True
                elif self.paced and name in DELTA_EVENTS:
                    self.stamped(T_IN_CONTENT.search(event, end), t_ns, read_id)
            # else: comments (`: keep-alive`), blank lines

    def stamped(self, found: re.Match[bytes] | None, t_ns: int, read_id: int) -> None:
        """A paced event with its send stamp (`found`) arrived at `t_ns` in read `read_id`."""
        if found is None:
            return
        self.content_events += 1
        self.reads.add(read_id)
        sent = int(found.group(1))
        self.first_arrival = self.first_arrival or t_ns
        if self.window is None or self.window[0] <= sent <= self.window[1]:
            self.delays.append(t_ns - sent)
            self.sent.append(sent)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self.reads = 0
        self._start(None)

    def _start(self, stream: StreamStats | None) -> None:
        self.head = b""
        self.in_body = False
        self.status = 0
        self.remaining = -1  # Content-Length bytes still to come; -1 = chunked or until close
        self.chunked = False
        self.until_close = False
        self.cstate = _SIZE
        self.cline = b""
        self.body = bytearray()
        self.stream = stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if self.until_close and self.in_body:
                waiter.set_result(None)
            else:
                waiter.set_exception(ProtocolError(f"connection lost: {exc or 'closed by peer'}"))

    def send(self, request: bytes, stream: StreamStats | None) -> asyncio.Future[None]:
        """Write a request; the future resolves when its answer is complete."""
        self._start(stream)
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        t_ns = time.time_ns()
        self.reads += 1
        if self.waiter is None:
            return
        try:
            if not self.in_body:
                data = self._head(data)
                if data is None:
                    return
            if self.chunked:
                self._chunked(data, t_ns)
            else:
                self._payload(data, t_ns)
                if self.remaining >= 0:
                    self.remaining -= len(data)
                    if self.remaining <= 0:
                        self._complete()
        except (ValueError, ProtocolError) as exc:
            self._fail(ProtocolError(f"bad response: {exc}"))

    def _head(self, data: bytes) -> bytes | None:
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return None
        lines = head[:end].split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
        self.in_body = True
        if not self.chunked:
            if length is None:
                self.until_close = True
            else:
                self.remaining = length
                if length == 0:
                    self._complete()
        return head[end + 4 :]

    def _payload(self, data: bytes, t_ns: int) -> None:
        if not data:
            return
        if self.stream is not None and self.status == 200:
            self.stream.feed(data, t_ns, self.reads)
        else:
            self.body += data

    def _chunked(self, data: bytes, t_ns: int) -> None:
        pos, size = 0, len(data)
        while pos < size and self.waiter is not None:
            if self.cstate == _DATA:
                take = min(self.remaining, size - pos)
                self._payload(data[pos : pos + take], t_ns)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.cstate = _DATA_END
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self.cline += data[pos:]
                return
            line = (self.cline + data[pos:end]).strip()
            self.cline = b""
            pos = end + 1
            if self.cstate == _SIZE:
                self.remaining = int(line.split(b";", 1)[0], 16)
                self.cstate = _DATA if self.remaining else _TRAILER
            elif self.cstate == _DATA_END:
                if line:
                    raise ProtocolError("chunk not followed by CRLF")
                self.cstate = _SIZE
            elif not line:  # _TRAILER: the blank line ends the message
                self._complete()

    def _complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


@dataclass
class LoadResult:
    """What one load run saw."""

    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    # streams only
    stream_events: dict[int, int] = field(default_factory=dict)  # events per stream -> streams
    streams_without_done: int = 0
    delays_ns: list[int] = field(default_factory=list)
    paced_streams: int = 0
    paced_separate: int = 0  # streams whose stamped chunks all came in separate reads
    paced_complete: int = 0  # streams with the expected number of stamped chunks
    all_open_s: float = 0.0  # with all_open: how long every stream was open at once

    def merge(self, other: LoadResult) -> None:
        self.ok += other.ok
        self.errors += other.errors
        self.elapsed += other.elapsed
        self.latencies_ns += other.latencies_ns
        self.error_samples += other.error_samples[: max(0, 5 - len(self.error_samples))]
        for k, v in other.stream_events.items():
            self.stream_events[k] = self.stream_events.get(k, 0) + v
        self.streams_without_done += other.streams_without_done
        self.delays_ns += other.delays_ns
        self.paced_streams += other.paced_streams
        self.paced_separate += other.paced_separate
        self.paced_complete += other.paced_complete
        self.all_open_s += other.all_open_s

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


async def run_load(
    target: Target,
    body: bytes,
    *,
    concurrency: int,
    duration: float | None = None,
    total: int | None = None,
    kind: str = "json",  # "json", "stream" or "paced"
    chunks: int = 20,
    stagger: float = 0.0,
    delay_window: tuple[float, float] | None = None,
    all_open: bool = False,
    protocol: Protocol = CHAT,
) -> LoadResult:
    """Drive `concurrency` connections for `duration` seconds or until `total` requests
    (`body`, sent in `protocol`'s way).

    Connection i starts `stagger * i` seconds after the first. With `delay_window` (seconds
    from the start), paced streams keep the delays of the chunks sent within it only, e.g.
    the time when every stream is open, leaving out the ramp up and down. With `all_open`
    (one stream per connection), they keep only the chunks sent while every stream was
    open, as the client saw it: after the last stream's first chunk arrived, before the
    first stream's last chunk was sent.
    """
    assert (duration is None) != (total is None)
    assert not all_open or total == concurrency, "all_open: one stream per connection"
    finished: list[StreamStats] = []
    loop = asyncio.get_running_loop()
    request = target.request(body, protocol)
    result = LoadResult()
    issued = 0
    started = time.monotonic()
    deadline = started + duration if duration is not None else float("inf")
    window = None
    if delay_window is not None:
        now_ns = time.time_ns()
        window = (now_ns + int(delay_window[0] * 1e9), now_ns + int(delay_window[1] * 1e9))

    async def connect() -> Connection:
        _, conn = await loop.create_connection(Connection, target.host, target.port)
        return conn

    def take() -> bool:
        nonlocal issued
        if total is not None:
            if issued >= total:
                return False
            issued += 1
            return True
        return time.monotonic() < deadline

    def failed(message: str) -> None:
        result.errors += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(message)

    async def worker(index: int) -> None:
        if stagger:
            await asyncio.sleep(stagger * index)
        conn: Connection | None = None
        try:
            while take():
                if conn is None or conn.lost:
                    try:
                        conn = await connect()
                    except OSError as exc:
                        failed(f"connect: {exc}")
                        conn = None
                        await asyncio.sleep(0.05)
                        continue
                stream = StreamStats(kind == "paced", window) if kind != "json" else None
                t0 = time.perf_counter_ns()
                try:
                    await conn.send(request, stream)
                except ProtocolError as exc:
                    failed(str(exc))
                    continue
                t1 = time.perf_counter_ns()
                if conn.status != 200:
                    text = bytes(conn.body[:300]).decode("utf-8", "replace")
                    failed(f"HTTP {conn.status}: {text}")
                    continue
                result.ok += 1
                result.latencies_ns.append(t1 - t0)
                if stream is not None:
                    counts = result.stream_events
                    counts[stream.events] = counts.get(stream.events, 0) + 1
                    if not stream.done:
                        result.streams_without_done += 1
                    if stream.paced:
                        result.paced_streams += 1
                        if all_open:
                            finished.append(stream)
                        else:
                            result.delays_ns += stream.delays
                        if stream.content_events == chunks:
                            result.paced_complete += 1
                            if len(stream.reads) == chunks:
                                result.paced_separate += 1
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.elapsed = time.monotonic() - started
    if finished and all(s.sent for s in finished):
        opened = max(s.first_arrival for s in finished)
        closing = min(s.sent[-1] for s in finished)
        result.all_open_s = max(closing - opened, 0) / 1e9
        for s in finished:
            result.delays_ns += [
                d for d, t in zip(s.delays, s.sent, strict=True) if opened <= t <= closing
            ]
    return result


def percentile(values: list[int] | list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[rank])
