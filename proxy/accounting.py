"""Admission and settlement: the two Redis round trips of every request.

Theory of operation. What a request may cost is bounded before it is sent. Before a request
goes upstream, `admit` runs one Lua script that checks the key and its account, applies the
key's sliding-window rate limit and its cap on requests in flight and, for limited accounts,
reserves a hold of prompt estimate + n x output cap tokens on the month's quota:
`used + held + hold <= limit`, atomically, so concurrent requests on any number of gateway
instances can never together overspend. When only part of the hold fits, the output cap is
lowered to what remains (the last tokens of a month can be spent). The upstream is sent the
cap that was reserved. After the answer (streamed or not, completed or cut), `settle` runs
one script that charges the tokens really used, at most the hold and at most what remains of
the limit (the rest is recorded apart as excess), and releases the hold.

A live request's hold is never swept: every instance renews the holds of its requests in
flight every third of `hold_ttl_seconds`, so only a dead instance's holds expire. Settling is
idempotent by our request id, and charges even a request whose hold is gone.

The only thing cached in-process is the digest -> (account, key id) mapping, which never
changes; revocation is a flag read by the admit script itself, so it acts on every
instance at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from proxy import api_keys
from proxy.config import Config
from proxy.core import Usage
from proxy.errors import (
    Forbidden,
    GatewayError,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    TooManyConcurrent,
    Unauthorized,
)
from proxy.metrics import Metrics
from proxy.store import Store, keys

log = logging.getLogger("proxy.accounting")

KEY_CACHE_SIZE = 100_000
SETTLE_RETRY_SECONDS = 1.0
SETTLE_GIVE_UP_SECONDS = 3600.0
# Requests renewed by one script call: a call blocks Redis for ~1 us a request.
RENEW_BATCH = 1000


# admit's modes: 'hold' admits a request to serve; 'rate' counts a request that costs no
# tokens (a replayed answer) against the rate limit; 'check' checks the key and account only.
Mode = Literal["hold", "rate", "check"]


@dataclass(slots=True)
class Admission:
    account_id: str
    key_id: str
    request_id: str
    headers: dict[str, str]  # the x-ratelimit-* headers for the answer
    cap: int = 0  # the output cap per choice the request was admitted with
    hold: int = -1  # tokens held: the most it may be charged (-1: unlimited account)
    limit: int = -1  # the account's monthly limit at admission (-1: unlimited)


def _duration(ms: int) -> str:
    """A reset time as OpenAI writes it: '60s', '1.5s', '20ms'."""
    return f"{ms}ms" if ms < 1000 else f"{ms / 1000:g}s"


_next_month = [0.0, 0.0]  # [this month's start, the next month's start], UTC timestamps


def _until_next_month(now: float | None = None) -> str:
    """The time until the monthly quota resets (00:00 UTC on the 1st), as OpenAI writes
    durations in its x-ratelimit-reset-* headers: '412h7m30s'."""
    now = time.time() if now is None else now
    if not _next_month[0] <= now < _next_month[1]:
        today = datetime.fromtimestamp(now, UTC)
        year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
        _next_month[0] = datetime(today.year, today.month, 1, tzinfo=UTC).timestamp()
        _next_month[1] = datetime(year, month, 1, tzinfo=UTC).timestamp()
    hours, rest = divmod(int(_next_month[1] - now), 3600)
    return f"{hours}h{rest // 60}m{rest % 60}s"


def rate_headers(rpm: int, remaining: int, reset_ms: int) -> dict[str, str]:
    """OpenAI's x-ratelimit-*-requests headers: the key's requests per minute."""
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(max(remaining, 0)),
        "x-ratelimit-reset-requests": _duration(reset_ms),
    }


def token_headers(limit: int, remaining: int) -> dict[str, str]:
    """OpenAI's x-ratelimit-*-tokens headers, for the account's monthly token quota (none
    for an unlimited account): the limit, what is neither used nor held, when it resets."""
    if limit < 0:
        return {}
    return {
        "x-ratelimit-limit-tokens": str(limit),
        "x-ratelimit-remaining-tokens": str(max(remaining, 0)),
        "x-ratelimit-reset-tokens": _until_next_month(),
    }


class Accountant:
    """Admit, settle and renew this process's requests against the store."""

    def __init__(self, store: Store, config: Config, metrics: Metrics):
        self.store = store
        self.metrics = metrics
        self.hold_ttl_ms = config.accounting.hold_ttl_seconds * 1000
        self.tier_args: list[str | int] = []
        for name, tier in config.tiers.items():
            limit = "" if tier.monthly_tokens is None else tier.monthly_tokens
            self.tier_args += [name, limit, tier.requests_per_minute, tier.max_concurrent_requests]
        self._owners: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lookups: dict[str, asyncio.Future[str | None]] = {}  # key digest -> its GET
        self._pending: set[asyncio.Task[None]] = set()
        # This process's requests admitted and not yet settled: account -> request -> key.
        self._live: dict[str, dict[str, str]] = {}
        self._decisions = {
            reason: metrics.admissions.labels(reason)
            for reason in (
                "admitted",
                "auth",
                "forbidden",
                "rate_limit",
                "concurrency",
                "quota",
                "store",
            )
        }

    async def identify(self, authorization: str | None) -> tuple[str, str]:
        """(account id, key id) of the request's key; 401 when it is malformed or unknown."""
        try:
            key = api_keys.bearer_key(authorization)
        except Unauthorized:
            self._decisions["auth"].inc()
            raise
        digest = api_keys.digest(key)
        owner = self._owners.get(digest)
        if owner is None:
            try:
                value = await self._lookup(digest)
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

    async def _lookup(self, digest: str) -> str | None:
        """The `account:key` a key digest names in the store (None: no such key). Concurrent
        first uses of one key share one GET: a burst on a new key (or on every key, after a
        restart) is one read per key, not one per request, which would queue behind the
        pool's connections and fail the burst with 503s."""
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self.store.get(keys.key_digest(digest)))
            self._lookups[digest] = lookup
            lookup.add_done_callback(partial(self._looked_up, digest))
        return await asyncio.shield(lookup)  # a waiter that leaves cancels no one else's

    def _looked_up(self, digest: str, lookup: asyncio.Future[str | None]) -> None:
        del self._lookups[digest]
        if not lookup.cancelled():
            lookup.exception()  # retrieved, even when every waiter left before it failed

    async def admit(
        self,
        owner: tuple[str, str],
        request_id: str,
        *,
        base: int = 0,
        choices: int = 1,
        cap: int = 0,
        mode: Mode = "hold",
    ) -> Admission:
        """Check the key and its account, rate-limit, and hold what the request may cost:
        `base` + `choices` x `cap` tokens, or less with a lower cap (`Admission.cap`) when
        only that fits in what remains of the month. One script call.

        `owner` is what `identify` found for the request's key. Raises Unauthorized (401),
        Forbidden (403), RateLimited, TooManyConcurrent or QuotaExceeded (429), or
        ServiceUnavailable (503, the store is down).
        """
        account_id, key_id = owner
        try:
            reply = await self.store.run(
                "admit",
                lambda month: keys.admit_keys(account_id, key_id, month),
                [request_id, base, choices, cap, self.hold_ttl_ms, mode, "", *self.tier_args],
            )
        except ServiceUnavailable:
            self._decisions["store"].inc()
            raise
        except asyncio.CancelledError:
            if mode == "hold":
                # The client left while the script may have run: release what it may hold
                # (a settle that finds no hold charges nothing). On the pipelined connection
                # the release runs after the admission.
                gone = Admission(account_id, key_id, request_id, {}, hold=0)
                self.settle_soon(gone, Usage(0, 0), "", served=False)
            raise
        if reply[0] != "ok":
            raise self._refusal(reply)
        self._decisions["admitted"].inc()
        rpm, remaining, reset_ms, limit = reply[1], reply[2], reply[3], reply[4]
        headers = rate_headers(rpm, remaining, reset_ms)
        headers.update(token_headers(limit, limit - reply[5] - reply[6]))
        hold = reply[8] if limit >= 0 else -1
        if mode == "hold":
            self._live.setdefault(account_id, {})[request_id] = key_id
        return Admission(account_id, key_id, request_id, headers, reply[7], hold, limit)

    def _refusal(self, reply: list[Any]) -> GatewayError:
        """The error for the admit script's refusal `reply`, counted by its reason."""
        code = reply[0]
        if code in ("unknown", "revoked"):
            self._decisions["auth"].inc()
            return Unauthorized("Invalid API key.")
        if code == "disabled":
            self._decisions["forbidden"].inc()
            return Forbidden("This account is disabled.")
        if code == "nodev":
            self._decisions["forbidden"].inc()
            return Forbidden("This account does not have developer access; ask an administrator.")
        if code == "rate":
            self._decisions["rate_limit"].inc()
            rpm, retry_ms = reply[1], reply[3]
            return RateLimited(
                f"Rate limit of {rpm} requests per minute exceeded for this API key; "
                f"retry after {-(-retry_ms // 1000)} s.",
                headers={
                    "Retry-After": str(-(-retry_ms // 1000)),
                    **rate_headers(rpm, 0, retry_ms),
                },
            )
        if code == "busy":
            self._decisions["concurrency"].inc()
            return TooManyConcurrent(
                f"This API key already has {reply[1]} requests in progress, the most its plan "
                "allows at once; retry when one has finished.",
                headers={"Retry-After": "1", **rate_headers(reply[2], reply[3], reply[4])},
            )
        if code == "quota":
            self._decisions["quota"].inc()
            limit, rpm, remaining, reset_ms = reply[1], reply[4], reply[5], reply[6]
            return QuotaExceeded(
                headers={
                    "x-should-retry": "false",  # the openai SDKs would retry a 429 otherwise
                    **rate_headers(rpm, remaining, reset_ms),
                    **token_headers(limit, 0),
                }
            )
        # 'duplicate': our request ids are random, so this is a bug, not the client's fault.
        return ServiceUnavailable(f"Unexpected answer from the accounting store: {code!r}.")

    def settle_soon(self, admission: Admission, usage: Usage, model: str, *, served: bool) -> None:
        """Settle in the background: the answer need not wait for Redis to go out.

        The task is kept until done (retrying while the store is down), and `flush` or
        `drain` wait for it: usage reads and shutdown see every settle of this process.
        """
        task = asyncio.create_task(self.settle(admission, usage, model, served=served))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def settle_when(self, admission: Admission, usage: Awaitable[Usage], model: str) -> None:
        """Settle once `usage` is known (an answer still coming after its client left). The
        request stays in flight, renewed and counted against its key's concurrency, till then."""

        async def settle_later() -> None:
            billed = await usage
            await self.settle(admission, billed, model, served=billed.total_tokens > 0)

        task = asyncio.create_task(settle_later())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self, admission: Admission, usage: Usage, model: str, *, served: bool) -> None:
        """Charge `usage` (at most the hold and what remains of the limit; the rest is
        recorded as excess) and release the hold, trying again while the store is down."""
        self._forget(admission)
        account_id, key_id = admission.account_id, admission.key_id
        args = [
            admission.request_id,
            usage.prompt_tokens,
            usage.completion_tokens,
            model,
            key_id,
            "1" if served else "0",
            keys.USAGE_TTL_SECONDS,
            "",
            admission.hold,
            admission.limit,
            "1",  # the first try
        ]
        loop = asyncio.get_running_loop()
        # Settling is idempotent (a retry charges only a request that still holds), so trying
        # again until the store is back is safe.
        deadline = loop.time() + SETTLE_GIVE_UP_SECONDS
        while True:
            try:
                reply = await self.store.run(
                    "settle", lambda month: keys.settle_keys(account_id, key_id, month), args
                )
            except ServiceUnavailable:
                if loop.time() >= deadline:
                    log.error("settle of %s abandoned", admission.request_id)
                    return
                await asyncio.sleep(SETTLE_RETRY_SECONDS)
                args[-1] = "0"  # the try that failed may have run: a retry
                continue
            if reply[0] == "ok":
                charged = reply[2]
                self.metrics.tokens_charged.inc(charged)
                if usage.total_tokens > charged:
                    self.metrics.tokens_excess.labels(model).inc(usage.total_tokens - charged)
            return

    def _forget(self, admission: Admission) -> None:
        live = self._live.get(admission.account_id)
        if live is not None:
            live.pop(admission.request_id, None)
            if not live:
                del self._live[admission.account_id]

    async def renew(self) -> None:
        """Renew the holds of this process's requests in flight: a script call an account
        (and RENEW_BATCH requests), all at once on the pipelined connection."""
        calls = []
        for account_id, live in self._live.items():
            requests = list(live.items())
            for start in range(0, len(requests), RENEW_BATCH):
                batch = requests[start : start + RENEW_BATCH]
                key_ids = sorted({key_id for _, key_id in batch})
                index = {key_id: str(i) for i, key_id in enumerate(key_ids, 4)}  # KEYS[4..]
                args: list[str | int] = [self.hold_ttl_ms, ""]
                for request_id, key_id in batch:
                    args += [request_id, index[key_id]]
                calls.append(self.store.call("renew", keys.renew_keys(account_id, key_ids), args))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = sum(isinstance(result, BaseException) for result in results)
        if failed:
            log.warning("holds of %d accounts could not be renewed; trying again soon", failed)

    async def keep_renewing(self) -> None:
        """Renew live holds every third of their lifetime, until cancelled."""
        while True:
            await asyncio.sleep(self.hold_ttl_ms / 3000)
            await self.renew()

    async def flush(self, seconds: float = 2.0) -> None:
        """Wait (a little) for this process's settles in flight: read-your-writes for usage."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=seconds)

    async def drain(self, seconds: float) -> None:
        """Wait for every settle in flight (at shutdown)."""
        await self.flush(seconds)
