"""HTTP to providers: send a provider's request, hand its answer back, pump its stream.

This is the one boundary where aiohttp's client errors become ours: refused or reset
connections are 502, timeouts 504, an upstream error status whatever the provider maps it to.

Streams are pumped event by event: every read from the upstream socket is parsed at once,
each complete event is translated and written to the client before the next read, and a
write goes straight to the transport (no buffering of ours, TCP_NODELAY on aiohttp's side).
The client's response is prepared lazily, at the first chunk, so that a failure before any
byte has gone out still gets a proper status and, later, a retry on another deployment.
Once headers are out, a failure is one `data: {"error": ...}` event and the end.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from proxy.errors import GatewayError, UpstreamError, UpstreamTimeout
from proxy.metrics import Metrics
from proxy.providers.base import ChatRequest, Provider, StreamTranslator, UpstreamRequest, Usage
from proxy.sse import DONE, SSEParser, frame

BIG_BODY = 1 << 20
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
    upstream: float = 0.0  # seconds spent waiting on the provider
    store: float = 0.0  # seconds spent waiting on Redis


class Upstream:
    """The shared client session, and the request/response cycle with one provider."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics):
        self.session = session
        self.metrics = metrics
        self._client_timeouts: dict[str, aiohttp.ClientTimeout] = {}

    def _client_timeout(self, provider: Provider) -> aiohttp.ClientTimeout:
        timeout = self._client_timeouts.get(provider.config.name)
        if timeout is None:
            connect = provider.config.timeouts.connect
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect)
            self._client_timeouts[provider.config.name] = timeout
        return timeout

    async def open(
        self, provider: Provider, req: UpstreamRequest, timing: Timing
    ) -> aiohttp.ClientResponse:
        """Send the request; return the response once its headers say 2xx."""
        timeouts = provider.config.timeouts
        since = time.perf_counter()
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await self.session.post(
                    req.url,
                    # aiohttp warns about bytes bodies over 1 MiB; a file-like one it streams.
                    data=req.body if len(req.body) < BIG_BODY else io.BytesIO(req.body),
                    headers=req.headers,
                    timeout=self._client_timeout(provider),
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
        """Forward the upstream stream to the client, one event at a time."""
        out: web.StreamResponse | None = None
        usage_sent = False  # a chunk with usage went out: the client knows its charge
        clock = time.perf_counter
        parser = SSEParser()
        idle = provider.config.timeouts.idle
        name = provider.config.name
        content = resp.content
        try:
            while True:
                since = clock()
                try:
                    async with asyncio.timeout(idle):
                        data = await content.readany()
                except TimeoutError as exc:
                    self.metrics.upstream_errors.labels(name, "stalled").inc()
                    raise UpstreamTimeout(f"Provider '{name}' stalled mid-stream.") from exc
                except (aiohttp.ClientError, OSError) as exc:
                    self.metrics.upstream_errors.labels(name, "reset").inc()
                    raise UpstreamError(f"Provider '{name}' dropped the stream.") from exc
                finally:
                    timing.upstream += clock() - since
                events = parser.feed(data) if data else parser.close()
                for event in events:
                    for chunk in translator.feed(event):
                        if out is None:
                            out = await self._start(request, headers, timing)
                        chunk.update(stamp)
                        usage_sent = usage_sent or bool(chunk.get("usage"))
                        await out.write(frame(orjson.dumps(chunk)))
                if not data:
                    break
            for chunk in translator.finish():
                if out is None:
                    out = await self._start(request, headers, timing)
                chunk.update(stamp)
                usage_sent = usage_sent or bool(chunk.get("usage"))
                await out.write(frame(orjson.dumps(chunk)))
            if not translator.done:
                self.metrics.upstream_errors.labels(name, "truncated").inc()
                raise UpstreamError(f"Provider '{name}' ended the stream early.")
        except GatewayError as exc:
            if out is None:
                raise
            if translator.chat.include_usage and not usage_sent:
                # The client asked to know what it uses: a cut stream is charged what was
                # produced, so say so (once) before the error ends it.
                usage = {"choices": [], "usage": translator.final_usage().as_dict(), **stamp}
                await out.write(frame(orjson.dumps(usage)))
            await out.write(frame(orjson.dumps({"error": exc.message})))
            await out.write_eof()
            return out
        finally:
            # On any early exit (client gone, error) the body is unfinished, and release()
            # closes the connection: the provider sees it at once and stops generating.
            resp.release()
        if out is None:
            out = await self._start(request, headers, timing)
        await out.write(DONE)
        await out.write_eof()
        return out

    @staticmethod
    async def _start(
        request: web.Request, headers: dict[str, str], timing: Timing
    ) -> web.StreamResponse:
        timing.first_chunk = time.perf_counter()
        out = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
        await out.prepare(request)
        return out


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
