"""HTTP to providers: send a provider's request, check its status, hand its answer back.

This is the one boundary where aiohttp's client errors become ours (`Upstream.fail`, the
only place that maps them): refused or reset connections are 502, timeouts 504, an upstream
error status whatever the provider maps it to. A stream's body is read by the stream relay
(`relay.py`), which hands its read errors here too.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, NoReturn

import aiohttp

from proxy.core import ChatRequest, Usage
from proxy.errors import GatewayError, UpstreamError, UpstreamTimeout
from proxy.metrics import Metrics
from proxy.providers.base import Provider, UpstreamRequest

BIG_BODY = 1 << 20
# What a provider raises at us: aiohttp's client errors, and the socket's (TimeoutError is
# an OSError too).
PROVIDER_ERRORS = (aiohttp.ClientError, OSError)
# A stream's reads from the upstream are at most STREAM_READ bytes, and aiohttp stops reading
# its socket at 2 x that unread (its default buffer is 256 KiB; see relay.py for what one
# stream holds). 8 KiB, not 4: a fast upstream's whole 20-event answer (4.1 KB in the
# benchmarks) is one read and one write. 64 unread streams at 1,000 events/s: 93 KiB each
# (4 KiB: 62 KiB).
STREAM_READ = 1 << 13
# And the upstream socket's kernel buffer: what a provider can send ahead of a client that
# stopped reading (the gateway stops reading too) is bounded by this.
STREAM_RCVBUF = 1 << 16

Stage = Literal["open", "body", "stream"]


class _Failure(NamedTuple):
    reason: str  # the `upstream_errors` metric's label
    error: type[GatewayError]
    sentence: str  # the message, given the provider's name


# What a provider error means at each stage of a request: (the exception that means the
# provider took too long, that failure, any other failure). Mid-stream nothing of aiohttp's
# times out (no read timeout is set): the relay's watchdog does, by cancelling the read.
_FAILURES: dict[Stage, tuple[type[BaseException], _Failure, _Failure]] = {
    "open": (
        TimeoutError,
        _Failure("timeout", UpstreamTimeout, "Provider '{}' did not answer in time."),
        _Failure("connect", UpstreamError, "Could not reach provider '{}'."),
    ),
    "body": (
        TimeoutError,
        _Failure("timeout", UpstreamTimeout, "Provider '{}' stalled."),
        _Failure("reset", UpstreamError, "Provider '{}' dropped the connection."),
    ),
    "stream": (
        asyncio.CancelledError,
        _Failure("stalled", UpstreamTimeout, "Provider '{}' stalled mid-stream."),
        _Failure("reset", UpstreamError, "Provider '{}' dropped the stream."),
    ),
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

    def fail(self, provider: str, stage: Stage, exc: BaseException) -> NoReturn:
        """Raise the GatewayError for `exc`, which `provider` caused at `stage` (an aiohttp
        client error, an OSError, or the stage's timeout), and count it."""
        timed_out, slow, other = _FAILURES[stage]
        failure = slow if isinstance(exc, timed_out) else other
        self.metrics.upstream_errors.labels(provider, failure.reason).inc()
        raise failure.error(failure.sentence.format(provider)) from exc

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
                    error = provider.error_from_response(resp.status, body, _lower(resp.headers))
                    if error.retryable:  # the deployment failed; a refusal of the request did not
                        self.metrics.upstream_errors.labels(
                            provider.config.name, f"http_{resp.status}"
                        ).inc()
                    raise error
        except PROVIDER_ERRORS as exc:
            self.fail(provider.config.name, "open", exc)
        finally:
            timing.upstream += time.perf_counter() - since
        if stream:
            _small_receive_buffer(resp)
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
        except PROVIDER_ERRORS as exc:
            self.fail(provider.config.name, "body", exc)
        finally:
            resp.release()
            timing.upstream += time.perf_counter() - since
        return provider.parse_response(body, chat)


def _small_receive_buffer(resp: aiohttp.ClientResponse) -> None:
    transport = resp.connection.transport if resp.connection else None
    sock = transport.get_extra_info("socket") if transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STREAM_RCVBUF)


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
