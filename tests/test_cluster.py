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
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import redis
from redis.cluster import RedisCluster

from proxy.app_state import ACCOUNTANT, STORE
from proxy.store import ClusterStore, keys
from tests.conftest import (
    ADMIN_TOKEN,
    FakeUpstream,
    Gateway,
    GatewayFactory,
    free_port,
    openai_provider,
)
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS
from tests.redis_binary import RedisBinaries, redis_binaries
from tests.test_accounting import (
    MESSAGES,
    MODELS,
    chat,
    check_quota_admits_exactly_k,
    check_rate_limit_passes_exactly_r,
    usage_of,
)

NODE_TIMEOUT_MS = 1000
TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _wait(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if predicate():
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster: {what} not reached within {seconds} s")
        time.sleep(0.02)


def _can_bind(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Node:
    port: int
    bus_port: int
    dir: str
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)

    def ping(self) -> bool:
        with self.client() as c:
            return bool(c.ping())

    def info(self, section: str) -> dict:
        with self.client() as c:
            return c.info(section)

    def cluster_info(self) -> dict:
        with self.client() as c:
            return c.cluster("info")


@dataclass
class LocalCluster:
    """Six redis-server processes joined into a cluster by `redis-cli --cluster create`."""

    binaries: RedisBinaries
    root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="woozlit-cluster-"))
    nodes: list[Node] = field(default_factory=list)

    def start(self, primaries: int = 3, replicas: int = 1) -> None:
        for i in range(primaries * (1 + replicas)):
            port, bus_port = self.free_ports()
            node = Node(port, bus_port, os.path.join(self.root, str(i)))
            os.mkdir(node.dir)
            self.nodes.append(node)
            self.start_node(node)
        for node in self.nodes:
            _wait(node.ping, 10, f"node {node.port} up")
        cli = self.binaries.cli
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        nodes = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.wait_healthy()

    def free_ports(self) -> tuple[int, int]:
        """A node's port and its cluster bus port, both free."""
        if self.binaries.has_cluster_port:
            return free_port(), free_port()
        # Redis 6 has no --cluster-port: the bus is port + 10000, which must be free too.
        for _ in range(1000):
            port = free_port()
            if port + 10000 <= 65535 and _can_bind(port + 10000):
                return port, port + 10000
        raise RuntimeError("no free port p with p + 10000 free too")

    def start_node(self, node: Node) -> None:
        bus = ["--cluster-port", str(node.bus_port)] if self.binaries.has_cluster_port else []
        node.proc = subprocess.Popen(
            [
                self.binaries.server,
                *("--port", str(node.port), "--bind", "127.0.0.1", "--dir", node.dir),
                *("--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"),
                *("--logfile", os.path.join(node.dir, "redis.log")),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *bus,  # not port + 10000 where it can be chosen: that may be > 65535
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                # A replica may take over however long it was cut off: a failover every time.
                *("--cluster-replica-validity-factor", "0"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None]

    def wait_healthy(self, seconds: float = 20) -> None:
        """Every live node sees the cluster ok, and every replica is in sync with its primary."""

        def healthy() -> bool:
            for node in self.live():
                if node.cluster_info()["cluster_state"] != "ok":
                    return False
                replication = node.info("replication")
                if replication["role"] == "slave" and (
                    replication["master_link_status"] != "up"
                    or replication.get("master_sync_in_progress")
                ):
                    return False
            return len(self.primaries()) == 3

        _wait(healthy, seconds, "cluster_state:ok with replicas in sync")

    def primaries(self) -> list[Node]:
        return [n for n in self.live() if n.info("replication")["role"] == "master"]

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def primary_of(self, key: str) -> Node:
        with RedisCluster(host="127.0.0.1", port=self.live()[0].port) as rc:
            return self.node(int(rc.get_node_from_key(key).port))

    def replica_of(self, primary: Node) -> Node:
        with primary.client() as c:
            slaves = c.info("replication")
        return self.node(int(slaves["slave0"]["port"]))

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.live()[0].port}"

    def flush(self) -> None:
        for node in self.primaries():
            with node.client() as c:
                c.flushall()

    def stop(self) -> None:
        for node in self.live():
            assert node.proc is not None
            node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                node.proc.wait(10)
                node.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


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


def _scripts_loaded(gw: Gateway, node: Node) -> list[bool]:
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
        _wait, lambda: replica.info("replication")["role"] == "master", 10, "manual failover"
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
            _wait, lambda: replica.info("replication")["role"] == "master", 15, "promotion"
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
