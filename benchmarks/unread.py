"""Streams whose clients never read: what the gateway holds for each (bench.py --unread-streams).

A client that sends its request and then reads nothing fills its socket's receive buffer,
then the gateway's send buffer; from then on the gateway stops reading the stream's upstream
(proxy/upstream.py: STREAM_READ; proxy/relay.py: STREAM_WRITE_HIGH_WATER, STREAM_SNDBUF) and
holds what it had read but could not write. This module measures that: N raw-socket clients
that send the request and never call recv(), against a fresh gateway, whose VmRSS is sampled
every SAMPLE_EVERY seconds for the case's duration; the growth over its RSS before the
streams, divided by N, is what one unread stream costs. The upstream is the fake upstream's
endless stream (`-long` models, see tests/fakes/fast.py), either as fast as the gateway
takes it or paced at LONG_RATE chunks a second. For contrast, the same N streams read to the
end of the duration as fast as the client can (an asyncio protocol counting bytes).

Each case gets a gateway of its own (started by bench.py), so that memory freed by the
case before (which RSS does not give back) is not counted as free room for this one.
Nothing here reads the kernel's own socket buffers (the unread bytes queued in the client's
receive buffer and the gateway's send buffer): they are kernel memory, not the gateway's
RSS; the clients' queued bytes are reported on the side.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
import time
from dataclasses import dataclass, field

from harness import Proc
from loadgen import Target

LONG_RATE = 1000  # chunks a second of the paced case (gateway.yaml: ...-long1000)
LONG_MODEL = "woozlit/gpt-4o-mini-long"
LONG_PACED_MODEL = f"woozlit/gpt-4o-mini-long{LONG_RATE}"
SAMPLE_EVERY = 0.5  # seconds between RSS samples
CLIENT_READ_TIMEOUT = 120.0  # the gateway's server.client_read_timeout_seconds (its default)
TCP_ESTABLISHED = 1  # tcpi_state in TCP_INFO (linux/tcp_states.h)


@dataclass(frozen=True)
class Case:
    """One measurement: which upstream, and whether the clients read."""

    name: str  # the phase name in the results
    upstream: str  # as printed
    model: str
    read: bool


CASES = (
    Case("unread-fast", "full speed", LONG_MODEL, False),
    Case(f"unread-{LONG_RATE}", f"{LONG_RATE:,} events/s", LONG_PACED_MODEL, False),
    Case("read-fast", "full speed", LONG_MODEL, True),
    Case(f"read-{LONG_RATE}", f"{LONG_RATE:,} events/s", LONG_PACED_MODEL, True),
)


@dataclass
class CaseResult:
    """What one case saw. RSS in KiB; samples every SAMPLE_EVERY s, the last at the end."""

    streams: int
    seconds: float
    read: bool
    before_kib: int
    samples_kib: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)  # status (or what came) -> streams
    open_at_end: int = 0  # streams still open (on both sides) when the duration was over
    client_bytes: int = 0  # unread: queued in the clients' receive buffers; read: read
    opened_s: float = 0.0  # seconds it took to open (connect and send) every stream

    @property
    def end_kib(self) -> int:
        return self.samples_kib[-1] if self.samples_kib else 0

    @property
    def peak_kib(self) -> int:
        return max(self.samples_kib, default=0)

    def per_stream(self, kib: int) -> float:
        return (kib - self.before_kib) / self.streams

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    def as_dict(self) -> dict:
        return {
            "streams": self.streams,
            "seconds": self.seconds,
            "clients_read": self.read,
            "rss_before_kib": self.before_kib,
            "rss_end_kib": self.end_kib,
            "rss_peak_kib": self.peak_kib,
            "kib_per_stream_end": round(self.per_stream(self.end_kib), 1),
            "kib_per_stream_peak": round(self.per_stream(self.peak_kib), 1),
            "rss_samples_kib": self.samples_kib,
            "sample_every_s": SAMPLE_EVERY,
            "statuses": self.statuses,
            "open_at_end": self.open_at_end,
            "client_bytes": self.client_bytes,
            "opened_s": round(self.opened_s, 3),
        }


def status_of(head: bytes) -> str:
    """The status code of a response's first bytes, or what came instead."""
    if not head:
        return "nothing"
    if head.startswith(b"HTTP/") and len(head) >= 12:
        return head[9:12].decode("ascii", "replace")
    return "?"


class Reader(asyncio.Protocol):
    """A client that reads everything as it comes, counting bytes."""

    def __init__(self, request: bytes):
        self.request = request
        self.head = b""
        self.bytes = 0
        self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if len(self.head) < 16:
            self.head += data[:16]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def open_unread(target: Target, request: bytes) -> socket.socket:
    """A client that sends its request and never reads (never calls recv)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (target.host, target.port))
        await loop.sock_sendall(sock, request)
    except BaseException:
        sock.close()
        raise
    return sock


def gateway_side_open(port: int) -> set[int]:
    """The client ports of the connections to `port` (the gateway) that are ESTABLISHED on
    the gateway's side (/proc/net/tcp).

    A client that reads nothing cannot tell that the gateway closed its connection: the
    kernel sends the gateway's FIN after the bytes still in its send buffer, which wait for
    the client to read (measured: the gateway's side in FIN-WAIT-1 with 156 KB queued, the
    client's ESTABLISHED). So whether a stream is still open is asked of the gateway's side.
    """
    ports = set()
    with open("/proc/net/tcp") as f:
        next(f)  # the header
        for line in f:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports


def unread_state(sock: socket.socket) -> tuple[str, bool, int]:
    """(status, ESTABLISHED on the client's side, bytes queued) of an unread client, without
    reading: the status is peeked at (MSG_PEEK leaves the bytes where they are)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        established = info[0] == TCP_ESTABLISHED
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        head = sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "nothing", established, 0
    except OSError as exc:
        return type(exc).__name__, False, 0
    return status_of(head), established, queued


async def measure_case(
    case: Case, target: Target, gateway: Proc, streams: int, seconds: float, body: bytes
) -> CaseResult:
    """Open `streams` streams of `case` on `target`, sample the gateway's RSS for `seconds`,
    check what every client got, and close them all."""
    loop = asyncio.get_running_loop()
    request = target.request(body)
    result = CaseResult(streams, seconds, case.read, gateway.rss_kib())
    socks: list[socket.socket] = []
    readers: list[Reader] = []
    started = time.monotonic()
    try:
        if case.read:
            opened = await asyncio.gather(
                *(
                    loop.create_connection(lambda: Reader(request), target.host, target.port)
                    for _ in range(streams)
                ),
                return_exceptions=True,
            )
            readers = [o[1] for o in opened if isinstance(o, tuple)]
        else:
            for _ in range(streams):  # one at a time: a list of sockets to close whatever happens
                try:
                    socks.append(await open_unread(target, request))
                except OSError:
                    pass
        failed = streams - len(readers) - len(socks)
        if failed:
            result.statuses["connect failed"] = failed
        result.opened_s = time.monotonic() - started
        deadline = started + seconds
        at, k = started, 0
        while at < deadline:  # every SAMPLE_EVERY s from the first connect, the last at the end
            k += 1
            at = min(started + k * SAMPLE_EVERY, deadline)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            result.samples_kib.append(gateway.rss_kib())
        if case.read:
            for r in readers:
                status = status_of(r.head)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.open_at_end += not r.lost
                result.client_bytes += r.bytes
        else:
            gateway_open = gateway_side_open(target.port)
            for sock in socks:
                status, established, queued = unread_state(sock)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.open_at_end += established and sock.getsockname()[1] in gateway_open
                result.client_bytes += queued
    finally:
        for sock in socks:
            sock.close()
        for r in readers:
            if r.transport is not None:
                r.transport.close()
    return result
