"""Each Lua script on its own, with injected time, on a real redis-server and on the embedded
store (fakeredis with lupa): both must give the same answers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from proxy.admin.accounts import Accounts
from proxy.config import parse_config
from proxy.metrics import Metrics
from proxy.store import EmbeddedStore, RedisStore, Store, keys, open_store

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
TIERS["free"]["max_concurrent_requests"] = 5
TIER_ARGS = ["free", 1000, 3, 5, "premium", "", 600, 64]
HOLD_TTL = 900_000
T0 = int(datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp() * 1000)


def month_at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


@pytest.fixture(params=["redis", "embedded"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "redis":
        store = open_store(request.getfixturevalue("redis_url"), 2.0, Metrics())
        assert isinstance(store, RedisStore)
        assert store.pipelined is not None  # the pipelined connection, as in production
    else:
        store = open_store(None, 2.0, Metrics())
        assert isinstance(store, EmbeddedStore)
    yield store
    await store.close()


@pytest.fixture
async def account(store: Store) -> tuple[str, str]:
    accounts = Accounts(store, CONFIG)
    acct = await accounts.create_account({"tier": "free", "developer": True})
    key = await accounts.create_key(acct["id"], "k")
    return acct["id"], key["id"]


async def admit(
    store: Store,
    account: tuple[str, str],
    rid: str,
    base: int,
    now: int,
    mode: str = "hold",
    *,
    choices: int = 1,
    cap: int = 0,
) -> list:
    """Admit `rid`, holding `base` + `choices` x `cap` tokens (or less, with a lower cap)."""
    account_id, key_id = account
    month = month_at(now)
    return await store.call(
        "admit",
        keys.admit_keys(account_id, key_id, month),
        [month, rid, base, choices, cap, HOLD_TTL, mode, str(now), *TIER_ARGS],
    )


async def settle(
    store: Store,
    account: tuple[str, str],
    rid: str,
    prompt: int,
    completion: int,
    now: int,
    *,
    hold: int = -1,
    limit: int = -1,
    first: bool = True,
) -> list:
    """Settle `rid`, which was admitted with `hold` under `limit` (-1: unlimited); `first`
    False: a retry."""
    account_id, key_id = account
    month = month_at(now)
    return await store.call(
        "settle",
        keys.settle_keys(account_id, key_id, month),
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
            hold,
            limit,
            "1" if first else "0",
        ],
    )


async def renew(store: Store, account: tuple[str, str], rids: list[str], now: int) -> int:
    account_id, key_id = account
    args: list = [HOLD_TTL, str(now)]
    for rid in rids:
        args += [rid, 4]
    return await store.call("renew", keys.renew_keys(account_id, [key_id]), args)


async def test_admit_answers_limits(store, account):
    reply = await admit(store, account, "r1", 100, T0)
    assert reply == ["ok", 3, 2, 60000, 1000, 0, 100, 0, 100]


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
        assert (await admit(store, account, f"c{i}", 0, T0, "check"))[:3] == ["ok", 3, 3]
    assert (await admit(store, account, "r", 0, T0))[:3] == ["ok", 3, 2]


async def test_quota_holds_and_settles(store, account):
    assert (await admit(store, account, "r1", 400, T0))[0] == "ok"
    assert (await admit(store, account, "r2", 400, T0 + 1))[0] == "ok"
    assert (await admit(store, account, "r3", 400, T0 + 2))[:4] == ["quota", 1000, 0, 800]
    assert await settle(store, account, "r1", 30, 70, T0 + 3, hold=400) == ["ok", 100, 100]
    # used 100 + held 400 + 400 <= 1000
    assert (await admit(store, account, "r3", 400, 61_000 + T0))[0] == "ok"


async def test_settle_is_idempotent(store, account):
    await admit(store, account, "r1", 400, T0)
    assert await settle(store, account, "r1", 10, 20, T0 + 1) == ["ok", 30, 30]
    # A retry (its first try's reply was lost, say) charges nothing.
    assert await settle(store, account, "r1", 10, 20, T0 + 2, first=False) == ["gone", 30, 0]
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
    # A request whose hold was swept (its instance could not renew it) is still charged,
    # within the hold it had; r3's hold stays.
    reply = await settle(store, account, "crashed", 5, 5, later + 1, hold=900, limit=1000)
    assert reply == ["ok", 10, 10]
    # Its retry (the reply was lost) finds no hold: settled already, charged once.
    reply = await settle(store, account, "crashed", 5, 5, later + 1, hold=900, first=False)
    assert reply == ["gone", 10, 0]
    assert int(await store.client.get(keys.held(account_id))) == 900
    assert await settle(store, account, "r3", 5, 5, later + 2, hold=900) == ["ok", 20, 10]
    assert int(await store.client.get(keys.held(account_id))) == 0


async def test_month_rollover(store, account):
    november = T0
    december = int(datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC).timestamp() * 1000)
    await admit(store, account, "r1", 500, november)
    assert await settle(store, account, "r1", 400, 500, november + 1) == ["ok", 900, 900]
    assert (await admit(store, account, "r2", 500, november + 61_000))[0] == "quota"
    reply = await admit(store, account, "r3", 500, december)
    assert reply[0] == "ok" and reply[5] == 0  # a new month, nothing used
    # A caller that still believes it is November is told the month.
    account_id, key_id = account
    wrong = await store.call(
        "admit",
        keys.admit_keys(account_id, key_id, "2026-11"),
        ["2026-11", "r4", 1, 1, 0, HOLD_TTL, "hold", str(december), *TIER_ARGS],
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
            ["1999-01", "x", 0, 1, 0, HOLD_TTL, "check", str(ms), *TIER_ARGS],
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
    # The quota refusal is a request of the minute too (or refusals would be free).
    assert (await admit(store, account, "r1", 60, T0))[:4] == ["quota", 50, 0, 0]
    assert (await admit(store, account, "r2", 50, T0 + 1))[0] == "rate"
    assert (await admit(store, account, "r3", 50, T0 + 60_001))[:3] == ["ok", 1, 0]
    assert (await admit(store, account, "r4", 0, T0 + 60_002))[0] == "rate"


async def test_unlimited_accounts_hold_no_tokens_but_settle_once(store, account):
    account_id, _ = account
    await store.client.hset(keys.account(account_id), "tier", "premium")
    reply = await admit(store, account, "r1", 10**9, T0)
    assert reply[0] == "ok" and reply[4] == -1
    assert await store.client.get(keys.held(account_id)) is None
    assert await settle(store, account, "r1", 1, 2, T0 + 1) == ["ok", 3, 3]
    assert await settle(store, account, "r1", 1, 2, T0 + 2, first=False) == ["gone", 3, 0]
    assert await store.client.hlen(keys.holds(account_id)) == 0


async def test_nothing_grows_per_request(store, account):
    """Settled requests leave no trace but the month's counters."""
    account_id, key_id = account
    await store.client.hset(keys.account(account_id), "requests_per_minute", "1000")

    async def footprint() -> tuple[int, int]:
        names = await store.client.keys(f"*{account_id}*")
        return len(names), await store.client.hlen(keys.usage(account_id, month_at(T0)))

    await admit(store, account, "r", 10, T0)
    await settle(store, account, "r", 1, 1, T0)
    before = await footprint()
    for i in range(50):
        await admit(store, account, f"r{i}", 10, T0 + i)
        await settle(store, account, f"r{i}", 1, 1, T0 + i)
    assert await footprint() == before
    assert await store.client.hlen(keys.holds(account_id)) == 0
    assert await store.client.zcard(keys.hold_expiries(account_id)) == 0
    assert await store.client.zcard(keys.in_flight(account_id, key_id)) == 0


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


async def test_every_choice_is_held(store, account):
    reply = await admit(store, account, "r1", 10, T0, choices=3, cap=100)
    assert reply[0] == "ok" and reply[7:] == [100, 310]
    account_id, _ = account
    assert int(await store.client.get(keys.held(account_id))) == 310


async def test_the_last_tokens_of_a_month_lower_the_cap(store, account):
    """What remains covers the prompt but not the full hold: admitted with a lower cap, so
    that the hold, and so the charge, ends exactly at the limit."""
    account_id, _ = account
    await store.client.hset(keys.account(account_id), "requests_per_minute", "100")
    reply = await admit(store, account, "r1", 100, T0, cap=5000)
    assert reply[0] == "ok" and reply[7:] == [900, 1000]
    assert (await admit(store, account, "r2", 0, T0 + 1, cap=1))[:4] == ["quota", 1000, 0, 1000]
    # n=128 with max_tokens 9000 on 1000: each choice gets what an equal share leaves.
    await settle(store, account, "r1", 0, 0, T0 + 2, hold=1000, limit=1000)
    reply = await admit(store, account, "r3", 10, T0 + 3, choices=128, cap=9000)
    assert reply[0] == "ok" and reply[7:] == [7, 10 + 128 * 7]
    # Not even one token a choice beyond the prompt: refused.
    await settle(store, account, "r3", 0, 0, T0 + 4, hold=906, limit=1000)
    assert (await admit(store, account, "r4", 990, T0 + 5, choices=11, cap=100))[0] == "quota"


async def test_the_charge_never_passes_the_hold_or_the_limit(store, account):
    account_id, _ = account
    month = month_at(T0)
    await admit(store, account, "r1", 10, T0, cap=40)
    # A provider that reports more than the request could cost: the rest is excess.
    assert await settle(store, account, "r1", 30, 70, T0 + 1, hold=50, limit=1000) == [
        "ok",
        50,
        50,
    ]
    usage = await store.client.hgetall(keys.usage(account_id, month))
    assert (usage["used"], usage["prompt"], usage["completion"], usage["excess"]) == (
        "50",
        "30",
        "20",
        "50",
    )
    # Usage from elsewhere took the account near its limit meanwhile: charged up to it.
    await admit(store, account, "r2", 10, T0 + 2, cap=100)
    await store.call(
        "charge", [keys.usage(account_id, month)], [month, 900, "web", 60, str(T0 + 3)]
    )
    assert await settle(store, account, "r2", 10, 100, T0 + 4, hold=110, limit=1000) == [
        "ok",
        1000,
        50,
    ]


async def test_requests_in_flight_are_capped_per_key(store, account):
    await store.client.hset(keys.account(*account[:1]), "requests_per_minute", "1000")
    for i in range(5):
        assert (await admit(store, account, f"r{i}", 1, T0 + i))[0] == "ok"
    assert (await admit(store, account, "r5", 1, T0 + 5))[:2] == ["busy", 5]
    # A check or a replay is no request in flight.
    assert (await admit(store, account, "c", 1, T0 + 5, "check"))[0] == "ok"
    assert (await admit(store, account, "p", 1, T0 + 5, "rate"))[0] == "ok"
    await settle(store, account, "r0", 1, 1, T0 + 6)
    assert (await admit(store, account, "r5", 1, T0 + 7))[0] == "ok"
    # The requests of a dead instance leave the count when their hold would expire.
    assert (await admit(store, account, "r6", 1, T0 + HOLD_TTL + 8))[0] == "ok"


async def test_live_holds_are_renewed_not_swept(store, account):
    account_id, key_id = account
    assert (await admit(store, account, "live", 900, T0))[0] == "ok"
    assert (await admit(store, account, "dead", 50, T0))[0] == "ok"
    # Renewed just before it would expire; "dead" is not renewed.
    assert await renew(store, account, ["live", "settled-meanwhile"], T0 + HOLD_TTL - 1) == 1
    later = T0 + HOLD_TTL + 1
    assert (await admit(store, account, "r", 101, later))[:4] == ["quota", 1000, 0, 900]
    assert (
        await store.client.zscore(keys.hold_expiries(account_id), "live") == T0 + 2 * HOLD_TTL - 1
    )
    assert await store.client.zscore(keys.in_flight(account_id, key_id), "live") is not None
    assert await store.client.hget(keys.holds(account_id), "dead") is None


async def test_a_replay_counts_against_the_rate_but_costs_no_tokens(store, account):
    account_id, _ = account
    assert (await admit(store, account, "r1", 1000, T0))[0] == "ok"  # the whole quota held
    reply = await admit(store, account, "p1", 0, T0 + 1, "rate")
    assert reply[:3] == ["ok", 3, 1] and reply[8] == 0
    assert (await admit(store, account, "p2", 0, T0 + 2, "rate"))[0] == "ok"
    assert (await admit(store, account, "p3", 0, T0 + 3, "rate"))[0] == "rate"
    assert int(await store.client.get(keys.held(account_id))) == 1000


async def test_an_instance_renews_all_its_live_requests_in_batches(store, account):
    """Accountant.renew: every live request of this process, in calls of RENEW_BATCH."""
    from proxy.accounting import RENEW_BATCH, Accountant

    account_id, key_id = account
    await store.client.hset(
        keys.account(account_id), mapping={"tier": "premium", "requests_per_minute": "100000"}
    )
    config = parse_config(
        {
            "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9"}},
            "models": {"woozlit/m": [{"provider": "p", "model": "m"}]},
            "tiers": {
                "free": TIERS["free"],
                "premium": {**TIERS["premium"], "max_concurrent_requests": 100_000},
            },
        },
        "test.yaml",
        os.environ,
    )
    accountant = Accountant(store, config, Metrics())
    count = RENEW_BATCH * 2 + 7
    for start in range(0, count, 100):
        end = min(start + 100, count)
        await asyncio.gather(*(accountant.admit(account, f"r{i}") for i in range(start, end)))
    expiries = keys.hold_expiries(account_id)
    await store.client.zadd(expiries, {f"r{i}": 1 for i in range(count)})  # about to expire
    await accountant.renew()
    scores = await store.client.zrange(expiries, 0, -1, withscores=True)
    assert len(scores) == count and min(score for _, score in scores) > 1
    assert await store.client.zcard(keys.in_flight(account_id, key_id)) == count


async def test_a_settle_whose_reply_was_lost_is_charged_once(store, account, monkeypatch):
    """The first try runs but its reply is lost (a timeout): the retry charges nothing."""
    from proxy import accounting
    from proxy.accounting import Accountant
    from proxy.core import Usage
    from proxy.errors import ServiceUnavailable

    monkeypatch.setattr(accounting, "SETTLE_RETRY_SECONDS", 0.01)
    account_id, _ = account
    accountant = Accountant(store, CONFIG, Metrics())
    admission = await accountant.admit(account, "r1", base=10, cap=100)
    real_run = store.run
    tries = []

    async def run_then_lose_the_reply(name, keys_for_month, args):
        reply = await real_run(name, keys_for_month, args)
        tries.append((args[-1], reply))
        if len(tries) == 1:
            raise ServiceUnavailable("timeout")
        return reply

    monkeypatch.setattr(store, "run", run_then_lose_the_reply)
    await accountant.settle(admission, Usage(10, 20), "woozlit/m", served=True)
    assert [(first, reply[0]) for first, reply in tries] == [("1", "ok"), ("0", "gone")]
    usage = await Accounts(store, CONFIG).usage(account_id, month_at(int(time.time() * 1000)))
    assert usage["used"] == 30 and usage["held"] == 0


async def test_a_burst_beyond_a_connection_pool_is_served(store, account):
    """300 scripts and 300 plain reads at once: each backend serves them all (the embedded
    store's pool refused the 101st concurrent command with a 503, where a real Redis queued)."""
    now = int(time.time() * 1000)
    replies = await asyncio.gather(
        *(admit(store, account, f"burst-{i}", 10, now) for i in range(300)),
        *(store.hgetall(keys.account(account[0])) for _ in range(300)),
    )
    assert len(replies) == 600 and all(replies)


async def test_a_burst_on_a_new_key_reads_it_once(store, account):
    """300 first uses of one key at once are one GET of its digest, not 300 (which queued
    behind the pool's connections and failed a burst with 503s on Redis Cluster), and one
    caller that leaves does not fail the others."""
    from proxy.accounting import Accountant

    accounts = Accounts(store, CONFIG)
    key = await accounts.create_key(account[0], "burst")
    accountant = Accountant(store, CONFIG, Metrics())

    async def gets() -> int:
        if isinstance(store, EmbeddedStore):
            return 0  # fakeredis keeps no command statistics
        stats = await store.client.info("commandstats")
        return int(stats.get("cmdstat_get", {}).get("calls", 0))

    before = await gets()
    leaving = asyncio.ensure_future(accountant.identify(f"Bearer {key['key']}"))
    burst = [accountant.identify(f"Bearer {key['key']}") for _ in range(300)]
    await asyncio.sleep(0)
    leaving.cancel()
    owners = await asyncio.gather(*burst)
    assert set(owners) == {(account[0], key["id"])}
    if not isinstance(store, EmbeddedStore):
        assert await gets() - before == 1
    assert accountant._lookups == {}
