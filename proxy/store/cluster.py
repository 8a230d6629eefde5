"""Redis Cluster (`redis+cluster://host:port`): redis-py's RedisCluster, tuned for bursts.

RedisCluster routes each script by its keys, which share one account's hash tag (keys.py),
so every script runs on one primary. A primary that lacks a script (a promoted replica, a
SCRIPT FLUSH) answers NOSCRIPT, and the script is loaded on that node alone and run again.
A failover is a few seconds of 503s: the client retries once after refreshing the slot map,
then gives up rather than wait for the election. Readiness (`ping`) asks one node, not every
primary: a shard that is down costs its own accounts 503s, and should not take every gateway
out of its load balancer at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError, NoScriptError

from proxy.metrics import Metrics
from proxy.store.base import Script, Store
from proxy.store.standalone import POOL_SIZE, client_options

SCHEME = "redis+cluster://"
QUEUE_WAIT_TIMEOUTS = 5  # how many socket timeouts a command may wait for a connection


class _Cluster(RedisCluster):
    """redis-py's RedisCluster, with three of its behaviours under load changed.

    - It opens one connection per concurrent command to a node, up to `max_connections`,
      then raises MaxConnectionsError: 300 requests for one account would fail past the
      64th. A semaphore of that size in front makes a burst queue instead. A command holds
      its place for at most the socket timeout, so a queue of a few hundred passes in a few
      timeouts: a place is waited for up to QUEUE_WAIT_TIMEOUTS of them (with one, 300
      concurrent admissions of one account got 503s on a busy machine).
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
        self._wait = QUEUE_WAIT_TIMEOUTS * (kwargs.get("socket_timeout") or 1.0)

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


class ClusterStore(Store):
    """A Redis Cluster reached through one or more of its nodes at `url` (`SCHEME`);
    `timeout` in seconds. Raises ValueError or RedisClusterException for a bad URL."""

    def __init__(self, url: str, timeout: float, metrics: Metrics) -> None:
        client = _Cluster.from_url(
            "redis://" + url.removeprefix(SCHEME),
            max_connections=POOL_SIZE,
            **client_options(timeout),
        )
        super().__init__(client, metrics)
        self._evalsha = self._on_primary

    async def _on_primary(self, name: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on the keys' primary; on NOSCRIPT, load it there (not on every primary:
        another shard being down must not stop this one) and run it again."""
        script = self.scripts[name]
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            node = self.client.get_node_from_key(keys[0])
            await self.client.execute_command("SCRIPT LOAD", script.script, target_nodes=node)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
