"""What the gateway asks of its store, and what every backend shares.

`Store` is the protocol: a script run by name (for the current month, or not), a few typed
commands for the rest (a key lookup, Idempotency-Key, the admin's records), readiness and
close. The commands are written once here against redis-py's API, which every backend's
client speaks (redis-py's Redis and RedisCluster, fakeredis); a backend differs in how it
connects and how it runs a script (`_evalsha`). A backend whose client spoke another API
would override the commands as well.

Every failure of the store becomes a ServiceUnavailable (503) here, counted by operation,
with a warning at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from proxy.errors import ServiceUnavailable
from proxy.metrics import Metrics
from proxy.store.pipelined import RedisReplyError

log = logging.getLogger("proxy.store")

T = TypeVar("T")
Script = Literal["admit", "settle", "renew", "charge"]
SCRIPTS: tuple[Script, ...] = ("admit", "settle", "renew", "charge")
# What a store failure can raise: RedisClusterException (slots not covered, no node for a
# slot) is not a RedisError; OSError covers timeouts (and the pipelined connection's errors).
STORE_ERRORS = (RedisError, RedisClusterException, OSError)
SCRIPT_ERRORS = (*STORE_ERRORS, RedisReplyError)
UNAVAILABLE = "The accounting store is unavailable; retry shortly."
# Delete a key only while it holds a given value (Idempotency-Key's release).
_DELETE_IF_EQUAL = (resources.files("proxy.store") / "lua" / "delete_if_equal.lua").read_text()


def month_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def source(name: Script) -> str:
    """Script `name` as sent to Redis: `clock.lua`, then `<name>.lua`."""
    lua = resources.files("proxy.store") / "lua"
    return (lua / "clock.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Store:
    """The accounting store: our Lua scripts and a few commands, and month bookkeeping
    shared with Redis's clock. Made by `open_store`, one backend a URL scheme."""

    # How this backend runs a script: (name, KEYS, ARGV) -> the reply. An attribute, set by
    # each backend, not a method: the pipelined connection's own `evalsha` is called with no
    # frame in between, on the request path.
    _evalsha: Callable[[Script, list[str], list[Any]], Awaitable[Any]]

    def __init__(self, client: Any, metrics: Metrics) -> None:
        self.client = client
        self.metrics = metrics
        # redis-py's scripts (EVALSHA, loaded again on NOSCRIPT), for the backends that use them.
        self.scripts = {name: client.register_script(source(name)) for name in SCRIPTS}
        # The month to name in the scripts' keys, and until when it holds: recomputed once a
        # second, or the month Redis told us for a minute when our clock disagreed (`run`).
        self._month = ""
        self._month_until = 0.0
        self._warned_at = float("-inf")
        self._suppressed = 0
        self._latency = {name: metrics.redis_latency.labels(name) for name in (*SCRIPTS, "command")}
        self._errors = {name: metrics.redis_errors.labels(name) for name in (*SCRIPTS, "command")}

    def month(self) -> str:
        """The current month, YYYY-MM (UTC), as the scripts' keys name it."""
        now = time.time()
        if now >= self._month_until:
            self._month, self._month_until = month_of(now), now + 1
        return self._month

    async def run(
        self, name: Script, keys_for_month: Callable[[str], list[str]], args: list[Any]
    ) -> list[Any]:
        """Run script `name` for the current month; `keys_for_month(month)` gives its KEYS.

        The scripts take the month from Redis's clock and answer {'month', m} when ours
        disagrees (at a month's edge, or with a skewed clock); then we run it again for m.
        Raises ServiceUnavailable.
        """
        month = self.month()
        for _ in range(2):
            reply: list[Any] = await self.call(name, keys_for_month(month), [month, *args])
            if reply[0] != "month":
                return reply
            month = reply[1]
            self._month, self._month_until = month, time.time() + 60
        raise ServiceUnavailable("The accounting store's clock is unstable; retry shortly.")

    async def call(self, name: Script, keys: list[str], args: list[Any]) -> Any:
        """Run script `name` on KEYS `keys` and ARGV `args`; raises ServiceUnavailable."""
        start = time.perf_counter()
        try:
            reply = await self._evalsha(name, keys, args)
        except SCRIPT_ERRORS as exc:
            raise self._unavailable(name, f"redis script {name} failed: {exc}") from exc
        self._latency[name].observe(time.perf_counter() - start)
        return reply

    def _registered(self, name: Script, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """A script through redis-py (`_evalsha` of the backends that do not pipeline)."""
        reply: Awaitable[Any] = self.scripts[name](keys=keys, args=args)
        return reply  # not awaited here (no `async def`): no frame more a call

    async def _command(self, name: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except STORE_ERRORS as exc:
            raise self._unavailable("command", f"redis {name} failed: {exc}") from exc

    def _unavailable(self, op: str, message: str) -> ServiceUnavailable:
        """Count a failure of `op`, warn (at most once a second: an outage fails every
        request, and one line per request would bury everything else; the error counters
        count them all), and give the 503 to raise."""
        self._errors[op].inc()
        now = time.monotonic()
        if now - self._warned_at >= 1.0:
            suppressed = (
                f" ({self._suppressed} more since the last line)" if self._suppressed else ""
            )
            log.warning("%s%s", message, suppressed)
            self._warned_at, self._suppressed = now, 0
        else:
            self._suppressed += 1
        return ServiceUnavailable(UNAVAILABLE)

    # -- commands: each raises ServiceUnavailable when the store fails -------------------

    async def get(self, key: str) -> str | None:
        return await self._command("get", self.client.get(key))

    async def set(
        self, key: str, value: str, *, px: int | None = None, nx: bool = False, xx: bool = False
    ) -> bool:
        """SET, with a TTL of `px` ms (None: none); only if absent (`nx`) or present (`xx`).
        Whether it was set."""
        return bool(await self._command("set", self.client.set(key, value, px=px, nx=nx, xx=xx)))

    async def set_many(self, values: Mapping[str, str], *, px: int) -> None:
        """SET each key of `values` to its value with a TTL of `px` ms, pipelined: one round
        trip (on Redis Cluster, when the keys share one hash tag, keys.py)."""
        pipe = self.client.pipeline(transaction=False)
        for key, value in values.items():
            pipe.set(key, value, px=px)
        await self._command("set_many", pipe.execute())

    async def warm(self) -> None:
        """Open what the first request would otherwise wait for (at start); never raises."""

    def set_many_soon(self, values: Mapping[str, str], *, px: int) -> asyncio.Future[Any]:
        """`set_many` in the background: a future that never raises (a failure is counted and
        logged, `_unavailable`, and the values are lost)."""
        return asyncio.ensure_future(self._set_many_quietly(values, px))

    async def _set_many_quietly(self, values: Mapping[str, str], px: int) -> None:
        try:
            await self.set_many(values, px=px)
        except ServiceUnavailable:
            pass  # counted and logged by `_command`

    async def mget(self, keys: Sequence[str]) -> list[str | None]:
        """The value of each of `keys` (None where there is none), in one MGET: on Redis
        Cluster, the keys must share one hash tag (keys.py)."""
        values: list[str | None] = await self._command("mget", self.client.mget(list(keys)))
        return values

    async def delete(self, key: str) -> None:
        await self._command("delete", self.client.delete(key))

    async def delete_if_equal(self, key: str, value: str) -> bool:
        """Delete `key` only while it holds `value`, atomically. Whether it was deleted."""
        call = self.client.eval(_DELETE_IF_EQUAL, 1, key, value)
        return bool(await self._command("eval", call))

    async def hget(self, key: str, field: str) -> str | None:
        return await self._command("hget", self.client.hget(key, field))

    async def hgetall(self, key: str) -> dict[str, str]:
        """Every field of hash `key`; {} when there is none."""
        fields: dict[str, str] = await self._command("hgetall", self.client.hgetall(key))
        return fields

    async def hset(self, key: str, fields: Mapping[str, str]) -> None:
        await self._command("hset", self.client.hset(key, mapping=fields))

    async def sadd(self, key: str, member: str) -> None:
        await self._command("sadd", self.client.sadd(key, member))

    async def smembers(self, key: str) -> AbstractSet[str]:
        members: AbstractSet[str] = await self._command("smembers", self.client.smembers(key))
        return members

    async def ping(self) -> bool:
        """Whether the store answers (readiness); never raises."""
        try:
            return bool(await self.client.ping())
        except STORE_ERRORS:
            return False

    async def close(self) -> None:
        await self.client.aclose()
