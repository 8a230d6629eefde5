"""Admission and settlement: the two Redis round trips of every request.

Theory of operation. Before a request goes upstream, `admit` runs one Lua script that checks
the key and its account, applies the key's sliding-window rate limit and, for limited
accounts, reserves a hold of (prompt estimate + max_tokens) tokens on the month's quota:
`used + held + hold <= limit`, atomically, so concurrent requests on any number of gateway
instances can never together overspend. After the answer (streamed or not, completed or
cut), `settle` runs one script that charges the tokens really used and releases the hold.
Settling is idempotent by our request id; a hold whose instance died expires by itself.

The only thing cached in-process is the digest -> (account, key id) mapping, which never
changes; revocation is a flag read by the admit script itself, so it acts on every
instance at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

from proxy import auth, keys
from proxy.config import Config
from proxy.errors import Forbidden, QuotaExceeded, RateLimited, ServiceUnavailable, Unauthorized
from proxy.metrics import Metrics
from proxy.providers.base import Usage
from proxy.store import Store

log = logging.getLogger("proxy.accounting")

KEY_CACHE_SIZE = 100_000
SETTLE_RETRY_SECONDS = 1.0


@dataclass(slots=True)
class Admission:
    account_id: str
    key_id: str
    request_id: str
    headers: dict[str, str]  # the x-ratelimit-* headers for the answer


def _duration(ms: int) -> str:
    """A reset time as OpenAI writes it: '60s', '1.5s', '20ms'."""
    return f"{ms}ms" if ms < 1000 else f"{ms / 1000:g}s"


class Accountant:
    def __init__(self, store: Store, config: Config, metrics: Metrics):
        self.store = store
        self.metrics = metrics
        self.hold_ttl_ms = config.accounting.hold_ttl_seconds * 1000
        self.tier_args: list[str | int] = []
        for name, tier in config.tiers.items():
            limit = "" if tier.monthly_tokens is None else tier.monthly_tokens
            self.tier_args += [name, limit, tier.requests_per_minute]
        self._owners: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()
        self._decisions = {
            reason: metrics.admissions.labels(reason)
            for reason in ("admitted", "auth", "forbidden", "rate_limit", "quota", "store")
        }

    async def identify(self, authorization: str | None) -> tuple[str, str]:
        """(account id, key id) of the request's key; 401 when it is malformed or unknown."""
        try:
            key = auth.bearer_key(authorization)
        except Unauthorized:
            self._decisions["auth"].inc()
            raise
        digest = auth.digest(key)
        owner = self._owners.get(digest)
        if owner is None:
            try:
                value = await self.store.command("get", keys.key_digest(digest))
            except ServiceUnavailable:
                self._decisions["store"].inc()
                raise
            if not value:
                self._decisions["auth"].inc()
                raise Unauthorized("Invalid API key.")
            account_id, _, key_id = value.partition(":")
            owner = (account_id, key_id)
            self._owners[digest] = owner
            if len(self._owners) > KEY_CACHE_SIZE:
                self._owners.popitem(last=False)
        return owner

    async def admit(
        self, owner: tuple[str, str], request_id: str, hold: int, *, consume: bool = True
    ) -> Admission:
        """Check the key and its account, rate-limit and reserve `hold` tokens: one script call.

        `owner` is what `identify` found for the request's key.
        """
        account_id, key_id = owner
        try:
            reply = await self.store.run(
                "admit",
                lambda month: keys.admit_keys(account_id, key_id, month),
                [request_id, hold, self.hold_ttl_ms, "1" if consume else "0", "", *self.tier_args],
            )
        except ServiceUnavailable:
            self._decisions["store"].inc()
            raise
        code = reply[0]
        if code == "ok":
            self._decisions["admitted"].inc()
            rpm, remaining, reset_ms = reply[1], reply[2], reply[3]
            headers = {
                "x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-remaining-requests": str(max(remaining, 0)),
                "x-ratelimit-reset-requests": _duration(reset_ms),
            }
            return Admission(account_id, key_id, request_id, headers)
        if code in ("unknown", "revoked"):
            self._decisions["auth"].inc()
            raise Unauthorized("Invalid API key.")
        if code == "disabled":
            self._decisions["forbidden"].inc()
            raise Forbidden("This account is disabled.")
        if code == "nodev":
            self._decisions["forbidden"].inc()
            raise Forbidden("This account does not have developer access; ask an administrator.")
        if code == "rate":
            self._decisions["rate_limit"].inc()
            rpm, retry_ms = reply[1], reply[3]
            raise RateLimited(
                f"Rate limit of {rpm} requests per minute exceeded for this API key; "
                f"retry after {-(-retry_ms // 1000)} s.",
                headers={
                    "Retry-After": str(-(-retry_ms // 1000)),
                    "x-ratelimit-limit-requests": str(rpm),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": _duration(retry_ms),
                },
            )
        if code == "quota":
            self._decisions["quota"].inc()
            raise QuotaExceeded()
        # 'duplicate': our request ids are random, so this is a bug, not the client's fault.
        raise ServiceUnavailable(f"Unexpected answer from the accounting store: {code!r}.")

    def settle_soon(self, admission: Admission, usage: Usage, model: str, *, served: bool) -> None:
        """Settle in the background: the answer need not wait for Redis to go out.

        The task is kept until done (retrying while the store is down), and `flush` or
        `drain` wait for it: usage reads and shutdown see every settle of this process.
        """
        task = asyncio.create_task(self.settle(admission, usage, model, served=served))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self, admission: Admission, usage: Usage, model: str, *, served: bool) -> None:
        """Charge `usage` and release the hold, trying again while the store is down."""
        account_id = admission.account_id
        args = [
            admission.request_id,
            usage.prompt_tokens,
            usage.completion_tokens,
            model,
            admission.key_id,
            "1" if served else "0",
            keys.USAGE_TTL_SECONDS,
            "",
        ]
        loop = asyncio.get_running_loop()
        # Settling is idempotent, so trying again until the store is back is safe; past the
        # hold's lifetime it would charge nothing anyway.
        deadline = loop.time() + self.hold_ttl_ms / 1000
        while True:
            try:
                await self.store.run(
                    "settle", lambda month: keys.settle_keys(account_id, month), args
                )
            except ServiceUnavailable:
                if loop.time() >= deadline:
                    log.error("settle of %s abandoned", admission.request_id)
                    return
                await asyncio.sleep(SETTLE_RETRY_SECONDS)
                continue
            self.metrics.tokens_charged.inc(usage.total_tokens)
            return

    async def flush(self, seconds: float = 2.0) -> None:
        """Wait (a little) for this process's settles in flight: read-your-writes for usage."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=seconds)

    async def drain(self, seconds: float) -> None:
        """Wait for every settle in flight (at shutdown)."""
        await self.flush(seconds)
