"""One Redis server (`redis://`, `rediss://`, `unix://`): the backend in production.

The scripts of every request go over the pipelined connection (pipelined.py); everything
else goes through redis-py. Over TLS (`rediss://`), which the pipelined connection does not
speak, the scripts go through redis-py too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.metrics import Metrics
from proxy.store.base import SCRIPTS, Store, source
from proxy.store.pipelined import PipelinedScripts, encode

POOL_SIZE = 64


def client_options(timeout: float) -> dict[str, Any]:
    """redis-py's options for our clients: fail fast (short timeouts, one retry of a broken
    connection), so that a store that is down is a 503 at once."""
    return dict(
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )


class RedisStore(Store):
    """A Redis server at `url`; `timeout` in seconds for a connection and for a reply.
    Raises ValueError for a URL redis-py cannot read."""

    def __init__(self, url: str, timeout: float, metrics: Metrics) -> None:
        self.pipelined: PipelinedScripts | None = None
        if url.split("://", 1)[0] in ("redis", "unix"):
            sources: dict[str, str] = {name: source(name) for name in SCRIPTS}
            self.pipelined = PipelinedScripts(dict(parse_url(url)), sources, timeout)
        # A bounded pool that makes a burst wait briefly for a connection, instead of opening
        # one per concurrent request (and failing past the pool's size).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=timeout, **client_options(timeout)
        )
        # The client owns the pool: aclose() closes both.
        super().__init__(aioredis.Redis.from_pool(pool), metrics)
        self._evalsha = self.pipelined.evalsha if self.pipelined else self._registered

    async def warm(self) -> None:
        """Connect the pipelined connection at start: the first request then does not wait
        for it, where a caller waits one `timeout` at most (a busy machine's first request
        got a 503 "cannot connect to Redis within 1.0 s"). A Redis that is not there yet is
        no error here: the first request tries again."""
        if self.pipelined is not None:
            try:
                await self.pipelined.connect()
            except OSError:
                pass

    def set_many_soon(self, values: Mapping[str, str], *, px: int) -> asyncio.Future[Any]:
        """As `Store.set_many_soon`, on the pipelined connection when it is up: the SETs go
        with the next flush of the requests' scripts, and no task is made (redis-py's
        pipeline and a task cost about 250 us an answer, benchmarks/README)."""
        pipelined = self.pipelined
        replies = pipelined and pipelined.send_now(
            [encode("SET", key, value, "PX", px) for key, value in values.items()]
        )
        if not replies:
            return super().set_many_soon(values, px=px)
        done = asyncio.gather(*replies, return_exceptions=True)
        done.add_done_callback(self._check_set_many)
        return done

    def _check_set_many(self, done: asyncio.Future[list[Any]]) -> None:
        failed = [r for r in done.result() if isinstance(r, BaseException)]
        if failed:
            self._unavailable("command", f"redis set_many failed: {failed[0]}")

    async def close(self) -> None:
        if self.pipelined is not None:
            self.pipelined.close()
        await super().close()
