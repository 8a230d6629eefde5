"""The embedded store: fakeredis in this process, its scripts run by lupa.

What `pip install` brings for the one-command start, with no Redis to run: one process
only, and nothing kept when it exits. The same scripts as on Redis, with the same answers
(tests/test_lua_scripts.py runs each on both).
"""

from __future__ import annotations

from proxy.metrics import Metrics
from proxy.store.base import Store


class EmbeddedStore(Store):
    """An in-process store, empty at start."""

    def __init__(self, metrics: Metrics) -> None:
        import fakeredis  # here: a gateway on Redis never loads it (nor lupa)

        super().__init__(fakeredis.FakeAsyncRedis(decode_responses=True), metrics)
        self._evalsha = self._registered
