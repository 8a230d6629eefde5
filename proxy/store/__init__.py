"""The accounting store: a Redis client (or the embedded fakeredis), and our Lua scripts.

Scripts are `.lua` files in `proxy/store/lua/`, each prefixed with `clock.lua`, registered once and
called by SHA (redis-py reloads them on NOSCRIPT, after a Redis restart). Every failure of the
store becomes a 503 here, fast: short socket timeouts, one retry of a broken connection.
There is no fallback to per-process limits: without the store, nothing is admitted.

On Redis Cluster (`redis+cluster://`) redis-py's RedisCluster routes each script by its keys,
which share one account's hash tag (keys.py), so every script runs on one primary. A primary
that lacks a script (a promoted replica, a SCRIPT FLUSH) answers NOSCRIPT, and the script is
loaded on that node alone and run again. A failover is a few seconds of 503s: the client
retries once after refreshing the slot map, then gives up rather than wait for the election.
Readiness (`ping`) asks one node, not every primary: a shard that is down costs its own
accounts 503s, and should not take every gateway out of its load balancer at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoScriptError, RedisClusterException, RedisError

from proxy.errors import ServiceUnavailable
from proxy.metrics import Metrics
from proxy.store.pipelined import PipelinedScripts, RedisReplyError

log = logging.getLogger("proxy.store")

SCRIPTS = ("admit", "settle", "renew", "charge")
POOL_SIZE = 64
# What a store failure can raise: RedisClusterException (slots not covered, no node for a
# slot) is not a RedisError; OSError covers timeouts.
STORE_ERRORS = (RedisError, RedisClusterException, OSError)


def month_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def open_store(url: str | None, timeout: float, metrics: Metrics) -> Store:
    """The store for `url`; plain redis:// and unix:// get the pipelined script connection."""
    fast = None
    if url and url.split("://", 1)[0] in ("redis", "unix"):
        fast = PipelinedScripts(dict(parse_url(url)), {n: _source(n) for n in SCRIPTS}, timeout)
    return Store(connect(url, timeout), metrics, embedded=not url, fast=fast)


def connect(url: str | None, timeout: float) -> Any:
    """A client for `url` (redis, rediss, unix, redis+cluster), or the embedded store."""
    if not url:
        import fakeredis

        return fakeredis.FakeAsyncRedis(decode_responses=True)
    options: dict[str, Any] = dict(
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
    if url.startswith("redis+cluster://"):
        return _Cluster.from_url(
            "redis://" + url.removeprefix("redis+cluster://"),
            max_connections=POOL_SIZE,
            **options,
        )
    # A bounded pool that makes a burst wait briefly for a connection, instead of opening
    # one per concurrent request (and failing past the pool's size).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=timeout, **options
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


class _Cluster(RedisCluster):
    """redis-py's RedisCluster, with three of its behaviours under load changed.

    - It opens one connection per concurrent command to a node, up to `max_connections`,
      then raises MaxConnectionsError: 300 requests for one account would fail past the
      64th. A semaphore of that size in front makes a burst queue (briefly), as
      BlockingConnectionPool does for one Redis.
    - Every 5th MOVED it resets itself, cutting every connection in flight. Before its slot
      map is loaded (at first, and after a reset) it sends commands to one node, which
      answers MOVED, so a burst on a fresh client fails in a storm of resets. Here a MOVED
      only moves its slot (`reinitialize_steps=0`), which is all that a failover or a
      resharding changes for commands on one slot; a connection error still reloads the map.
    - A command whose connection is cut under it by a reset (redis-py still resets on
      CLUSTERDOWN) can fail with AttributeError, a socket writer gone: that is a connection
      error, not a bug of ours.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["reinitialize_steps"] = 0
        super().__init__(*args, **kwargs)
        self._room = asyncio.Semaphore(kwargs.get("max_connections", POOL_SIZE))
        self._wait = kwargs.get("socket_timeout") or 1.0

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._wait):
                await self._room.acquire()
        except TimeoutError:
            raise ConnectionError("No free connection to the Redis Cluster.") from None
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise ConnectionError(f"Redis Cluster connection lost: {exc}") from exc
        finally:
            self._room.release()


def _source(name: str) -> str:
    lua = resources.files("proxy.store") / "lua"
    return (lua / "clock.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Store:
    """The Redis client with our scripts, and month bookkeeping shared with Redis's clock."""

    def __init__(
        self, client: Any, metrics: Metrics, *, embedded: bool, fast: PipelinedScripts | None = None
    ):
        self.client = client
        self.fast = fast
        self.metrics = metrics
        self.embedded = embedded
        self.cluster = isinstance(client, RedisCluster)
        self.scripts = {name: client.register_script(_source(name)) for name in SCRIPTS}
        # The month to name in the scripts' keys, and until when it holds: recomputed once a
        # second, or the month Redis told us for a minute when our clock disagreed (`run`).
        self._month = ""
        self._month_until = 0.0
        self._warned_at = float("-inf")
        self._suppressed = 0
        self._latency = {name: metrics.redis_latency.labels(name) for name in (*SCRIPTS, "command")}
        self._errors = {name: metrics.redis_errors.labels(name) for name in (*SCRIPTS, "command")}

    def _warn(self, message: str) -> None:
        """A warning at most once a second: an outage fails every request, and one line per
        request would bury everything else (the error counters count them all)."""
        now = time.monotonic()
        if now - self._warned_at >= 1.0:
            suppressed = (
                f" ({self._suppressed} more since the last line)" if self._suppressed else ""
            )
            log.warning("%s%s", message, suppressed)
            self._warned_at, self._suppressed = now, 0
        else:
            self._suppressed += 1

    def month(self) -> str:
        now = time.time()
        if now >= self._month_until:
            self._month, self._month_until = month_of(now), now + 1
        return self._month

    async def run(self, name: str, keys_for_month: Any, args: list[Any]) -> list[Any]:
        """Run script `name` for the current month; `keys_for_month(month)` gives its KEYS.

        The scripts take the month from Redis's clock and answer {'month', m} when ours
        disagrees (at a month's edge, or with a skewed clock); then we run it again for m.
        """
        month = self.month()
        for _ in range(2):
            reply: list[Any] = await self.call(name, keys_for_month(month), [month, *args])
            if reply[0] != "month":
                return reply
            month = reply[1]
            self._month, self._month_until = month, time.time() + 60
        raise ServiceUnavailable("The accounting store's clock is unstable; retry shortly.")

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        start = time.perf_counter()
        try:
            if self.fast is not None:
                reply = await self.fast.evalsha(name, keys, args)
            elif self.cluster:
                reply = await self._cluster_script(name, keys, args)
            else:
                reply = await self.scripts[name](keys=keys, args=args)
        except (*STORE_ERRORS, RedisReplyError) as exc:
            self._errors[name].inc()
            self._warn(f"redis script {name} failed: {exc}")
            raise ServiceUnavailable("The accounting store is unavailable; retry shortly.") from exc
        self._latency[name].observe(time.perf_counter() - start)
        return reply

    async def _cluster_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on the keys' primary; on NOSCRIPT, load it there (not on every primary:
        another shard being down must not stop this one) and run it again."""
        script = self.scripts[name]
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            node = self.client.get_node_from_key(keys[0])
            await self.client.execute_command("SCRIPT LOAD", script.script, target_nodes=node)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def command(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One plain Redis command, with the same error translation as the scripts."""
        try:
            return await getattr(self.client, method)(*args, **kwargs)
        except STORE_ERRORS as exc:
            self._errors["command"].inc()
            self._warn(f"redis {method} failed: {exc}")
            raise ServiceUnavailable("The accounting store is unavailable; retry shortly.") from exc

    async def ping(self) -> bool:
        """Whether the store answers: on a cluster, one node (see the module's docstring)."""
        try:
            return bool(await self.client.ping())
        except STORE_ERRORS:
            return False

    async def close(self) -> None:
        if self.fast is not None:
            self.fast.close()
        await self.client.aclose()
