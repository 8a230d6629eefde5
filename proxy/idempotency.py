"""Retry safety: a retried non-stream request returns the stored answer, charged once.

A client names a request with `Idempotency-Key`. (Not with `X-Request-Id`: proxies set one
per hop, and every answer would then be stored for the whole window.) The first request
with a key takes it (SET NX, a `pending` marker carrying the body's digest); its successful
answer is stored under the key for the configured window. A retry then gets that answer
back, with `Idempotent-Replayed: true`, and is neither admitted nor charged again. A retry
while the first is still running gets 409; the same key with another body gets 422. A
failed request gives the key back, so the client's retry runs for real. Keys are per
account, under the account's hash tag. Streams are not covered: an answer that was streamed
cannot be replayed as it went.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from proxy.errors import Conflict, IdempotencyMismatch, ServiceUnavailable
from proxy.store import Store, keys

log = logging.getLogger("proxy.idempotency")

MAX_KEY_LENGTH = 255


def _digest(data: bytes | str) -> str:
    if isinstance(data, str):
        # A header's bytes that are not UTF-8 reach us as surrogates (aiohttp): hash the bytes.
        data = data.encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest()


class Claim:
    """One request's hold on an idempotency key.

    The `pending` marker lives only as long as a request can (`pending_seconds`): if its
    instance dies, or Redis is down when the request ends, the key frees itself soon, rather
    than answering 409 for the whole window.
    """

    def __init__(
        self,
        store: Store,
        account_id: str,
        key: str,
        body: bytes,
        window: int,
        pending_seconds: float,
    ):
        self.store = store
        self.redis_key = keys.idempotency(account_id, _digest(key))
        self.body_digest = _digest(body)
        self.window_ms = window * 1000
        self.pending_ms = int(pending_seconds * 1000)
        # This request's own marker: 'pending:<body digest>:<random>'.
        self.marker = f"pending:{self.body_digest}:{secrets.token_hex(8)}"
        # The client left, and the answer still coming is stored when it comes (exchange.py).
        self.handed_over = False

    async def begin(self) -> bytes | None:
        """Take the key; or the stored answer of an earlier request with it."""
        if await self.store.set(self.redis_key, self.marker, nx=True, px=self.pending_ms):
            return None
        value = await self.store.get(self.redis_key)
        if value is None:  # expired between the two calls: take it now
            return await self.begin()
        state, _, rest = value.partition(":")
        digest, _, answer = rest.partition(":")
        if digest != self.body_digest:
            raise IdempotencyMismatch()
        if state == "pending":
            raise Conflict()
        return answer.encode()

    async def finish(self, answer: bytes) -> None:
        """Store the answer for the window. Best effort: the answer has been served and
        charged, so a store that is down now must not turn it into an error."""
        value = f"done:{self.body_digest}:{answer.decode()}"
        try:
            await self.store.set(self.redis_key, value, xx=True, px=self.window_ms)
        except ServiceUnavailable:
            log.warning("an answer could not be stored for its Idempotency-Key")

    async def abandon(self) -> None:
        """Free the key for the client's retry, if this request holds it (or let the pending
        marker expire)."""
        try:
            # Only while it holds this request's marker: a request that gives its key back
            # never frees another's, nor a stored answer.
            await self.store.delete_if_equal(self.redis_key, self.marker)
        except ServiceUnavailable:
            log.warning("an Idempotency-Key could not be freed; it expires by itself")
