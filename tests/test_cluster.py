"""Accounting on a real Redis Cluster: three primaries with one replica each, started from the
`redis-server` binary of tests/redis_binary.py once for this file and flushed between tests.

The gateway reaches it through `redis+cluster://` naming any one node. Every script touches
one account's keys under one hash tag, so it runs on that account's primary: the accounting
concurrency tests of test_accounting.py run here unchanged, with accounts spread over the
primaries. A primary that lacks a script (SCRIPT FLUSH, a promoted replica) gets it again
through NOSCRIPT, and the failover of a primary costs a few 503s, never a 500 or a hang.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from proxy.app_state import ACCOUNTANT, STORE
from proxy.store import ClusterStore, keys
from tests.conftest import (
    ADMIN_TOKEN,
    FakeUpstream,
    Gateway,
    GatewayFactory,
    openai_provider,
)
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS
from tests.redis_binary import LocalCluster, RedisServer, redis_binaries, wait_until
from tests.test_accounting import (
    MESSAGES,
    MODELS,
    chat,
    check_quota_admits_exactly_k,
    check_rate_limit_passes_exactly_r,
    usage_of,
)

TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(redis_binaries())
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture
def cluster_url(cluster: LocalCluster) -> str:
    """The cluster's URL, naming one node; every primary flushed."""
    cluster.wait_healthy()
    cluster.flush()
    return cluster.url


async def _new_account(session: aiohttp.ClientSession, gw: Gateway, **fields) -> tuple[str, str]:
    """(account id, key) created through the admin API."""
    body = {"tier": "free", "developer": True, **fields}
    async with session.post(gw.base_url + "/admin/v1/accounts", json=body, headers=ADMIN) as r:
        assert r.status == 201, await r.text()
        account_id = (await r.json())["id"]
    url = f"{gw.base_url}/admin/v1/accounts/{account_id}/keys"
    async with session.post(url, json={"name": "k"}, headers=ADMIN) as r:
        assert r.status == 201, await r.text()
        return account_id, (await r.json())["key"]


async def _ask(session: aiohttp.ClientSession, gw: Gateway, key: str) -> tuple[int, dict]:
    body = {"model": "woozlit/gpt-4o-mini", "messages": MESSAGES, "stream": False}
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(gw.api + "/chat/completions", json=body, headers=headers) as r:
        return r.status, await r.json()


def _scripts_loaded(gw: Gateway, node: RedisServer) -> list[bool]:
    """Whether `node` has the admit and settle scripts."""
    shas = [gw.app[STORE].scripts[name].sha for name in ("admit", "settle")]
    with node.client() as c:
        return list(c.script_exists(*shas))


def _redis_errors(gw: Gateway) -> float:
    metrics = gw.app[STORE].metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("woozlit_redis_errors_total{")
    )


async def test_accounts_spread_over_primaries_and_every_operation_works(
    gateway: GatewayFactory, fake_openai: FakeUpstream, cluster_url: str, cluster: LocalCluster
):
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=cluster_url)
    assert isinstance(gw.app[STORE], ClusterStore)
    async with aiohttp.ClientSession() as session:
        accounts = [await _new_account(session, gw) for _ in range(12)]
        homes = {cluster.primary_of(keys.account(a)).port for a, _ in accounts}
        assert len(homes) >= 2  # all 12 random accounts on one primary of three: p = 6e-6

        for _, key in accounts:
            for status, body in [await _ask(session, gw, key), await _ask(session, gw, key)]:
                assert status == 200, body
            async with session.get(
                gw.api + "/usage", headers={"Authorization": f"Bearer {key}"}
            ) as r:
                assert r.status == 200
                assert (await r.json())["used"] == 2 * TOKENS
        for port in homes:
            assert _scripts_loaded(gw, cluster.node(port)) == [True, True]

        # The admin API, each call on the account's own primary or on a global lookup's.
        account_id, key = accounts[0]
        url = f"{gw.base_url}/admin/v1/accounts/{account_id}"
        charge = {"tokens": 5, "source": "web"}
        async with session.post(url + "/usage", json=charge, headers=ADMIN) as r:
            assert r.status == 200
        async with session.get(url + "/usage", headers=ADMIN) as r:
            usage = await r.json()
        assert (usage["used"], usage["requests"]) == (2 * TOKENS + 5, 2)
        async with session.patch(url, json={"disabled": True}, headers=ADMIN) as r:
            assert r.status == 200
        assert await _ask(session, gw, key) == (403, {"error": "This account is disabled."})

        account_id, key = accounts[1]
        url = f"{gw.base_url}/admin/v1/accounts/{account_id}/keys"
        async with session.get(url, headers=ADMIN) as r:
            (listed,) = (await r.json())["data"]
        async with session.delete(
            f"{gw.base_url}/admin/v1/keys/{listed['id']}", headers=ADMIN
        ) as r:
            assert r.status == 204
        assert await _ask(session, gw, key) == (401, {"error": "Invalid API key."})

        async with session.get(gw.base_url + "/readyz") as r:
            assert r.status == 200
    assert _redis_errors(gw) == 0


async def test_scripts_reloaded_after_script_flush_on_one_primary(
    gateway: GatewayFactory, fake_openai: FakeUpstream, cluster_url: str, cluster: LocalCluster
):
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=cluster_url)
    home = cluster.primary_of(keys.account(gw.account_id))
    others = [n for n in cluster.primaries() if n.port != home.port]
    for node in cluster.primaries():
        with node.client() as c:
            c.script_flush()
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, gw, "woozlit/gpt-4o-mini"))[0] == 200
        await gw.app[ACCOUNTANT].flush()  # the settle runs after the answer
        assert _scripts_loaded(gw, home) == [True, True]
        with home.client() as c:
            c.script_flush()
        assert _scripts_loaded(gw, home) == [False, False]
        for _ in range(3):
            status, body, _ = await chat(session, gw, "woozlit/gpt-4o-mini")
            assert status == 200, body
    assert _scripts_loaded(gw, home) == [True, True]
    # Loaded where NOSCRIPT was answered, not on every primary.
    assert [_scripts_loaded(gw, n) for n in others] == [[False, False]] * len(others)
    usage = await usage_of(gw)
    assert (usage["used"], usage["requests"], usage["held"]) == (4 * TOKENS, 4, 0)
    assert _redis_errors(gw) == 0


@pytest.mark.parametrize("k", [0, 1, 37])
async def test_quota_admits_exactly_k_across_two_instances(
    gateway: GatewayFactory, fake_openai: FakeUpstream, cluster_url: str, k: int
):
    a, b = await check_quota_admits_exactly_k(gateway, fake_openai, cluster_url, k)
    assert isinstance(a.app[STORE], ClusterStore) and isinstance(b.app[STORE], ClusterStore)


async def test_rate_limit_passes_exactly_r_across_two_instances(
    gateway: GatewayFactory, fake_openai: FakeUpstream, cluster_url: str
):
    await check_rate_limit_passes_exactly_r(gateway, fake_openai, cluster_url)


@dataclass
class Outcome:
    status: int
    body: dict
    seconds: float


async def _keep_asking(
    gw: Gateway, until: asyncio.Event, seconds: float, pause: float = 0.02
) -> list[Outcome]:
    """Requests one after another (each bounded by a client timeout) until `until` is set and
    one succeeded after it, or `seconds` pass."""
    outcomes: list[Outcome] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while loop.time() < deadline:
            set_before = until.is_set()
            started = loop.time()
            status, body, _ = await chat(session, gw, "woozlit/gpt-4o-mini")
            outcomes.append(Outcome(status, body, loop.time() - started))
            if set_before and status == 200:
                break
            await asyncio.sleep(pause)
    return outcomes


async def test_manual_failover_of_a_primary(
    gateway: GatewayFactory, fake_openai: FakeUpstream, cluster_url: str, cluster: LocalCluster
):
    """CLUSTER FAILOVER on a replica: the gateway follows MOVED, and loads the scripts on the
    promoted replica through NOSCRIPT."""
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=cluster_url)
    home = cluster.primary_of(keys.account(gw.account_id))
    replica = cluster.replica_of(home)
    with replica.client() as c:
        c.script_flush()  # scripts are not replicated anyway; this makes sure
    assert _scripts_loaded(gw, replica) == [False, False]
    done = asyncio.Event()
    # 40 clients asking without pause, so that many requests are in flight at the switch.
    askers = [asyncio.create_task(_keep_asking(gw, done, seconds=15, pause=0)) for _ in range(40)]
    await asyncio.sleep(0.2)
    with replica.client() as c:
        c.cluster("failover")
    await asyncio.to_thread(
        wait_until, lambda: replica.info("replication")["role"] == "master", 10, "manual failover"
    )
    done.set()
    batches = await asyncio.gather(*askers)
    assert all(batch[-1].status == 200 for batch in batches)  # served by the new primary
    outcomes = [o for batch in batches for o in batch]
    assert {o.status for o in outcomes} <= {200, 503}
    assert all(isinstance(o.body.get("error"), str) for o in outcomes if o.status == 503)
    assert _scripts_loaded(gw, replica) == [True, True]
    usage = await usage_of(gw)
    served = sum(o.status == 200 for o in outcomes)
    assert (usage["used"], usage["requests"]) == (served * TOKENS, served)


async def test_replica_lost_changes_nothing(
    gateway: GatewayFactory, fake_openai: FakeUpstream, cluster_url: str, cluster: LocalCluster
):
    """Replicas serve no requests: losing one leaves the gateway ready and serving."""
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=cluster_url)
    replica = cluster.replica_of(cluster.primary_of(keys.account(gw.account_id)))
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, gw, "woozlit/gpt-4o-mini"))[0] == 200
        assert replica.proc is not None
        replica.proc.kill()
        replica.proc.wait(5)
        try:
            async with session.get(gw.base_url + "/readyz") as r:
                assert r.status == 200
            assert (await chat(session, gw, "woozlit/gpt-4o-mini"))[0] == 200
        finally:
            cluster.start_node(replica)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
async def test_primary_lost_gives_503_at_worst_then_its_replica_serves(
    gateway: GatewayFactory,
    fake_openai: FakeUpstream,
    cluster_url: str,
    cluster: LocalCluster,
    how: signal.Signals,
):
    """A primary dies, or hangs (every call to it times out): its accounts get 503s until its
    replica is promoted, then are served again by the same gateway, with nothing charged lost
    or charged twice."""
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=cluster_url)
    home = cluster.primary_of(keys.account(gw.account_id))
    replica = cluster.replica_of(home)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            assert (await chat(session, gw, "woozlit/gpt-4o-mini"))[0] == 200
    await gw.app[ACCOUNTANT].flush()
    with home.client() as c:
        assert c.wait(1, 2000) == 1  # the replica has every write so far

    assert home.proc is not None
    home.proc.send_signal(how)
    try:
        promoted = asyncio.Event()
        asking = asyncio.create_task(_keep_asking(gw, promoted, seconds=20))
        await asyncio.to_thread(
            wait_until, lambda: replica.info("replication")["role"] == "master", 15, "promotion"
        )
        promoted.set()
        outcomes = await asking
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.base_url + "/readyz") as r:
                assert r.status == 200
    finally:
        # Either way it comes back as a replica of the new primary.
        if how == signal.SIGSTOP:
            home.proc.send_signal(signal.SIGCONT)
        else:
            home.proc.wait(5)
            cluster.start_node(home)
    statuses = [o.status for o in outcomes]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses  # the outage was seen...
    assert statuses[-1] == 200  # ...and is over, without restarting the gateway
    for o in outcomes:
        if o.status == 503:
            assert isinstance(o.body["error"], str)
        # Never a hang: a call to a hung node times out (1 s), is tried once more after
        # reloading the slot map, then the request gets its 503.
        assert o.seconds < 3.5
    usage = await usage_of(gw)
    served = 3 + statuses.count(200)
    assert (usage["used"], usage["requests"], usage["held"]) == (served * TOKENS, served, 0)
