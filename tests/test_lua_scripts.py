"""Each Lua script on its own, with injected time, on a real redis-server and on the embedded
store (fakeredis with lupa): both must give the same answers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import fakeredis
import pytest

from proxy import keys
from proxy.accounts import Accounts
from proxy.config import parse_config
from proxy.metrics import Metrics
from proxy.store import Store, open_store

TIERS = {
    "free": {"monthly_tokens": 1000, "requests_per_minute": 3},
    "premium": {"monthly_tokens": None, "requests_per_minute": 600},
}
CONFIG = parse_config(
    {
        "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9"}},
        "models": {"woozlit/m": [{"provider": "p", "model": "m"}]},
        "tiers": TIERS,
    },
    "test.yaml",
    os.environ,
)
TIER_ARGS = ["free", 1000, 3, "premium", "", 600]
HOLD_TTL = 900_000
T0 = int(datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp() * 1000)


def month_at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


@pytest.fixture(params=["redis", "embedded"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "redis":
        store = open_store(request.getfixturevalue("redis_url"), 2.0, Metrics())
        assert store.fast is not None  # the pipelined connection, as in production
    else:
        store = Store(fakeredis.FakeAsyncRedis(decode_responses=True), Metrics(), embedded=True)
    yield store
    await store.close()


@pytest.fixture
async def account(store: Store) -> tuple[str, str]:
    accounts = Accounts(store, CONFIG)
    acct = await accounts.create_account({"tier": "free", "developer": True})
    key = await accounts.create_key(acct["id"], "k")
    return acct["id"], key["id"]


async def admit(
    store: Store, account: tuple[str, str], rid: str, hold: int, now: int, consume: str = "1"
) -> list:
    account_id, key_id = account
    month = month_at(now)
    return await store.call(
        "admit",
        keys.admit_keys(account_id, key_id, month),
        [month, rid, hold, HOLD_TTL, consume, str(now), *TIER_ARGS],
    )


async def settle(
    store: Store, account: tuple[str, str], rid: str, prompt: int, completion: int, now: int
) -> list:
    account_id, key_id = account
    month = month_at(now)
    return await store.call(
        "settle",
        keys.settle_keys(account_id, month),
        [
            month,
            rid,
            prompt,
            completion,
            "woozlit/m",
            key_id,
            "1",
            keys.USAGE_TTL_SECONDS,
            str(now),
        ],
    )


async def test_admit_answers_limits(store, account):
    reply = await admit(store, account, "r1", 100, T0)
    assert reply == ["ok", 3, 2, 60000, 1000, 0, 100]


async def test_rate_limit_is_an_exact_sliding_window(store, account):
    for i in range(3):
        assert (await admit(store, account, f"r{i}", 0, T0 + i * 1000))[0] == "ok"
    refused = await admit(store, account, "r3", 0, T0 + 2500)
    assert refused == ["rate", 3, 0, 57500]  # the first request leaves the window at T0+60 s
    assert (await admit(store, account, "r4", 0, T0 + 59_999))[0] == "rate"
    assert (await admit(store, account, "r5", 0, T0 + 60_000))[0] == "ok"
    # Two requests still in the window (T0+1 s, T0+2 s) plus r5: full again.
    assert (await admit(store, account, "r6", 0, T0 + 60_500))[0] == "rate"


async def test_no_double_burst_at_a_minute_edge(store, account):
    edge = T0 - T0 % 60_000 + 60_000  # a fixed window would reset here
    for i in range(3):
        assert (await admit(store, account, f"a{i}", 0, edge - 100 + i))[0] == "ok"
    for i in range(3):
        assert (await admit(store, account, f"b{i}", 0, edge + 100 + i))[0] == "rate"


async def test_check_only_admission_consumes_nothing(store, account):
    for i in range(5):
        assert (await admit(store, account, f"c{i}", 0, T0, consume="0"))[:3] == ["ok", 3, 3]
    assert (await admit(store, account, "r", 0, T0))[:3] == ["ok", 3, 2]


async def test_quota_holds_and_settles(store, account):
    assert (await admit(store, account, "r1", 400, T0))[0] == "ok"
    assert (await admit(store, account, "r2", 400, T0 + 1))[0] == "ok"
    assert await admit(store, account, "r3", 400, T0 + 2) == ["quota", 1000, 0, 800]
    assert await settle(store, account, "r1", 30, 70, T0 + 3) == ["ok", 100]
    # used 100 + held 400 + 400 <= 1000
    assert (await admit(store, account, "r3", 400, 61_000 + T0))[0] == "ok"


async def test_settle_is_idempotent(store, account):
    await admit(store, account, "r1", 400, T0)
    assert await settle(store, account, "r1", 10, 20, T0 + 1) == ["ok", 30]
    assert await settle(store, account, "r1", 10, 20, T0 + 2) == ["gone", 30]
    account_id, _ = account
    held = await store.client.get(keys.held(account_id))
    assert int(held) == 0
    usage = await store.client.hgetall(keys.usage(account_id, month_at(T0)))
    assert usage["used"] == "30" and usage["requests"] == "1"


async def test_duplicate_request_id_cannot_hold_twice(store, account):
    assert (await admit(store, account, "same", 100, T0))[0] == "ok"
    assert await admit(store, account, "same", 100, T0 + 1) == ["duplicate"]
    account_id, _ = account
    assert int(await store.client.get(keys.held(account_id))) == 100


async def test_expired_holds_are_released(store, account):
    account_id, _ = account
    assert (await admit(store, account, "crashed", 900, T0))[0] == "ok"
    assert (await admit(store, account, "r2", 900, T0 + 1))[0] == "quota"
    later = T0 + HOLD_TTL + 1
    assert (await admit(store, account, "r3", 900, later))[0] == "ok"
    assert int(await store.client.get(keys.held(account_id))) == 900
    # A settle after the hold expired (an instance gone for an hour) charges nothing.
    assert await settle(store, account, "crashed", 5, 5, later + 1) == ["gone", 0]
    assert int(await store.client.get(keys.held(account_id))) == 900
    assert await settle(store, account, "r3", 5, 5, later + 2) == ["ok", 10]
    assert int(await store.client.get(keys.held(account_id))) == 0


async def test_month_rollover(store, account):
    november = T0
    december = int(datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC).timestamp() * 1000)
    await admit(store, account, "r1", 500, november)
    assert await settle(store, account, "r1", 400, 500, november + 1) == ["ok", 900]
    assert (await admit(store, account, "r2", 500, november + 61_000))[0] == "quota"
    reply = await admit(store, account, "r3", 500, december)
    assert reply[0] == "ok" and reply[5] == 0  # a new month, nothing used
    # A caller that still believes it is November is told the month.
    account_id, key_id = account
    wrong = await store.call(
        "admit",
        keys.admit_keys(account_id, key_id, "2026-11"),
        ["2026-11", "r4", 1, HOLD_TTL, "1", str(december), *TIER_ARGS],
    )
    assert wrong == ["month", "2026-12"]


async def test_month_of_leap_day_and_year_end(store, account):
    account_id, key_id = account
    for moment, month in [
        (datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), "2024-02"),
        (datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC), "2024-03"),
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), "2026-12"),
        (datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC), "2027-01"),
    ]:
        ms = int(moment.timestamp() * 1000)
        reply = await store.call(
            "admit",
            keys.admit_keys(account_id, key_id, "1999-01"),
            ["1999-01", "x", 0, HOLD_TTL, "0", str(ms), *TIER_ARGS],
        )
        assert reply == ["month", month]


async def test_key_and_account_states(store, account):
    account_id, key_id = account
    await store.client.hset(keys.api_key(account_id, key_id), "revoked", "1")
    assert await admit(store, account, "r", 0, T0) == ["revoked"]
    await store.client.hset(keys.api_key(account_id, key_id), "revoked", "0")
    await store.client.hset(keys.account(account_id), "developer", "0")
    assert await admit(store, account, "r", 0, T0) == ["nodev"]
    await store.client.hset(keys.account(account_id), "disabled", "1")
    assert await admit(store, account, "r", 0, T0) == ["disabled"]
    assert await admit(store, (account_id, "key_nope"), "r", 0, T0) == ["unknown"]


async def test_overrides_beat_the_tier(store, account):
    account_id, _ = account
    await store.client.hset(
        keys.account(account_id), mapping={"monthly_token_limit": "50", "requests_per_minute": "1"}
    )
    assert await admit(store, account, "r1", 60, T0) == ["quota", 50, 0, 0]
    assert (await admit(store, account, "r2", 50, T0))[:3] == ["ok", 1, 0]
    assert (await admit(store, account, "r3", 0, T0 + 1))[0] == "rate"


async def test_unlimited_accounts_hold_no_tokens_but_settle_once(store, account):
    account_id, _ = account
    await store.client.hset(keys.account(account_id), "tier", "premium")
    reply = await admit(store, account, "r1", 10**9, T0)
    assert reply[0] == "ok" and reply[4] == -1
    assert await store.client.get(keys.held(account_id)) is None
    assert await settle(store, account, "r1", 1, 2, T0 + 1) == ["ok", 3]
    assert await settle(store, account, "r1", 1, 2, T0 + 2) == ["gone", 3]
    assert await store.client.hlen(keys.holds(account_id)) == 0


async def test_nothing_grows_per_request(store, account):
    """Settled requests leave no trace but the month's counters."""
    account_id, _ = account
    await store.client.hset(keys.account(account_id), "requests_per_minute", "1000")
    for i in range(50):
        await admit(store, account, f"r{i}", 10, T0 + i)
        await settle(store, account, f"r{i}", 1, 1, T0 + i)
    assert await store.client.hlen(keys.holds(account_id)) == 0
    assert await store.client.zcard(keys.hold_expiries(account_id)) == 0


async def test_charge_from_elsewhere(store, account):
    account_id, _ = account
    month = month_at(T0)
    reply = await store.call(
        "charge",
        [keys.usage(account_id, month)],
        [month, 700, "web", keys.USAGE_TTL_SECONDS, str(T0)],
    )
    assert reply == ["ok", 700]
    assert (await admit(store, account, "r1", 400, T0))[0] == "quota"
