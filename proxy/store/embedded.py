"""The embedded store: fakeredis in this process, its scripts run by lupa.

What `pip install` brings for the one-command start, with no Redis to run: one process
only, and nothing kept when it exits. The same scripts as on Redis, with the same answers
(tests/test_lua_scripts.py runs each on both).
"""

from __future__ import annotations

from proxy.metrics import Metrics
from proxy.store.base import Store

EMBEDDED_POOL = 1 << 20


class EmbeddedStore(Store):
    """An in-process store, empty at start."""

    def __init__(self, metrics: Metrics) -> None:
        import fakeredis  # here: a gateway on Redis never loads it (nor lupa)

        # Every command in flight holds a connection of the pool, and redis-py's pool refuses
        # its 101st ("Too many connections"): a burst of 200 requests got 100 503s. Here a
        # connection is a Python object in this process, not a socket, so the bound is the
        # requests in flight, which admission already bounds per key.
        client = fakeredis.FakeAsyncRedis(decode_responses=True, max_connections=EMBEDDED_POOL)
        super().__init__(client, metrics)
        self._evalsha = self._registered
