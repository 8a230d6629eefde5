"""The accounting store: where accounts, keys, limits and usage live, and our Lua scripts.

Theory of operation. Everything that must hold across gateway instances (rate windows,
requests in flight, the month's holds and usage) is decided inside Redis, by the Lua scripts
in `lua/` (each prefixed with `clock.lua`), run by name and SHA on the keys of one account
(`keys.py`: every key name and TTL). The gateway asks its store for little else: `Store`
(base.py) is that protocol, with the month bookkeeping, the error translation and the
metrics that every backend shares. Every failure of the store is a 503, fast: short socket
timeouts, one retry of a broken connection. There is no fallback to per-process limits:
without the store, nothing is admitted.

The backends, one a URL scheme, all chosen by `open_store`:

- `standalone.py`, `RedisStore`: one Redis (`redis://`, `rediss://`, `unix://`). The two
  scripts of every request go over the pipelined connection of `pipelined.py`.
- `cluster.py`, `ClusterStore`: Redis Cluster (`redis+cluster://`), one script a primary.
- `embedded.py`, `EmbeddedStore`: no URL; fakeredis and lupa in this process, for the
  one-command start.

A new backend is a module here with a `Store` subclass that sets `_evalsha`, and a line in
`open_store`.
"""

from __future__ import annotations

from proxy.metrics import Metrics
from proxy.store.base import Store
from proxy.store.cluster import SCHEME as CLUSTER_SCHEME
from proxy.store.cluster import ClusterStore
from proxy.store.embedded import EmbeddedStore
from proxy.store.standalone import RedisStore

__all__ = ["ClusterStore", "EmbeddedStore", "RedisStore", "Store", "open_store"]


def open_store(url: str | None, timeout: float, metrics: Metrics) -> Store:
    """The store at `url` (None: the embedded one); `timeout` in seconds for a connection
    and a reply. Connects lazily. Raises ValueError (or redis-py's RedisClusterException)
    for a URL that names no store."""
    if not url:
        return EmbeddedStore(metrics)
    if url.startswith(CLUSTER_SCHEME):
        return ClusterStore(url, timeout, metrics)
    return RedisStore(url, timeout, metrics)
