"""The pipelined script connection against a real redis-server: ordering under concurrency,
cancelled calls, a killed connection, a flushed script cache, a server that is gone."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from proxy.store.pipelined import PipelinedScripts, RedisConnectionError, RedisReplyError, encode
from tests.conftest import RedisServer, free_port

SCRIPTS = {
    "echo": "return ARGV[1]",
    "slow": "local t = redis.call('TIME'); local s = tonumber(t[1]) + tonumber(t[2]) / 1e6; "
    "repeat local n = redis.call('TIME') until tonumber(n[1]) + tonumber(n[2]) / 1e6 - s "
    "> tonumber(ARGV[1]); return ARGV[2]",
    "fail": "return redis.error_reply('nope')",
}


@pytest.fixture
async def scripts(redis_url: str):
    conn = PipelinedScripts(
        {"host": "127.0.0.1", "port": int(redis_url.split(":")[2].split("/")[0])},
        SCRIPTS,
        timeout=2.0,
    )
    yield conn
    conn.close()


def test_encode():
    assert (
        encode("EVALSHA", "ab", 0, b"x")
        == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n0\r\n$1\r\nx\r\n"
    )
    assert encode("é") == b"*1\r\n$2\r\n\xc3\xa9\r\n"


async def test_many_concurrent_calls_get_their_own_replies(scripts):
    replies = await asyncio.gather(*(scripts.evalsha("echo", [], [str(i)]) for i in range(2000)))
    assert replies == [str(i) for i in range(2000)]


async def test_a_cancelled_call_does_not_poison_the_connection(scripts):
    slow = asyncio.create_task(scripts.evalsha("slow", [], ["0.2", "slow"]))
    await asyncio.sleep(0.05)
    slow.cancel()
    follower = scripts.evalsha("echo", [], ["mine"])
    assert await follower == "mine"  # not the slow call's reply
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_a_late_reply_fails_the_calls_and_the_next_reconnects(redis_url: str):
    port = int(redis_url.split(":")[2].split("/")[0])
    conn = PipelinedScripts({"host": "127.0.0.1", "port": port}, SCRIPTS, timeout=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RedisConnectionError, match="did not answer"):
        await conn.evalsha("slow", [], ["0.4", "slow"])
    assert loop.time() - started < 0.3
    await asyncio.sleep(0.4)  # Redis is single-threaded: it answers once the slow script ends
    assert await conn.evalsha("echo", [], ["after"]) == "after"
    conn.close()


async def test_a_stalled_event_loop_is_not_blamed_on_redis(redis_url: str):
    # Our own loop blocked past the timeout (a turn with thousands of callbacks): the reply
    # came in meanwhile and sits unread; the watchdog, running late, must not drop it.
    port = int(redis_url.split(":")[2].split("/")[0])
    conn = PipelinedScripts({"host": "127.0.0.1", "port": port}, SCRIPTS, timeout=0.1)
    assert await conn.evalsha("echo", [], ["warm"]) == "warm"
    call = asyncio.ensure_future(conn.evalsha("echo", [], ["during"]))
    await asyncio.sleep(0)  # the command is written
    time.sleep(0.3)  # noqa: ASYNC251 - the point: the loop is blocked for three timeouts
    assert await call == "during"
    conn.close()


async def test_a_connect_the_caller_gave_up_on_serves_the_next(redis_url: str):
    port = int(redis_url.split(":")[2].split("/")[0])
    conn = PipelinedScripts({"host": "127.0.0.1", "port": port}, SCRIPTS, timeout=0.1)
    call = asyncio.ensure_future(conn.evalsha("echo", [], ["first"]))
    await asyncio.sleep(0)  # the connect has begun
    time.sleep(0.3)  # noqa: ASYNC251 - the loop is blocked past the caller's 0.1 s
    with pytest.raises(RedisConnectionError, match=r"within 0\.1 s"):
        await call
    await asyncio.sleep(0.05)
    protocol = conn._protocol
    assert protocol is not None and not protocol.closed  # the attempt went on, and connected
    assert await conn.evalsha("echo", [], ["next"]) == "next"
    assert conn._protocol is protocol
    conn.close()


async def test_script_errors_are_raised(scripts):
    with pytest.raises(RedisReplyError, match="nope"):
        await scripts.evalsha("fail", [], [])
    assert await scripts.evalsha("echo", [], ["still fine"]) == "still fine"


async def test_flushed_script_cache_reloads(scripts, redis_url: str):
    assert await scripts.evalsha("echo", [], ["1"]) == "1"
    client = aioredis.Redis.from_url(redis_url)
    await client.script_flush()
    await client.aclose()
    assert await scripts.evalsha("echo", [], ["2"]) == "2"


async def test_killed_connection_reconnects(scripts, redis_url: str):
    assert await scripts.evalsha("echo", [], ["1"]) == "1"
    client = aioredis.Redis.from_url(redis_url)
    await client.client_kill_filter(_type="normal", skipme=True)
    await client.aclose()
    await asyncio.sleep(0.05)
    assert await scripts.evalsha("echo", [], ["2"]) == "2"


async def test_restarted_server(scripts, redis_url: str, redis_server: RedisServer):
    assert await scripts.evalsha("echo", [], ["1"]) == "1"
    redis_server.stop()
    with pytest.raises((RedisConnectionError, TimeoutError)):
        await scripts.evalsha("echo", [], ["2"])
    redis_server.start()
    assert await scripts.evalsha("echo", [], ["3"]) == "3"


async def test_nothing_listening_fails_fast():
    conn = PipelinedScripts({"host": "127.0.0.1", "port": free_port()}, SCRIPTS, timeout=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RedisConnectionError):
        await conn.evalsha("echo", [], ["x"])
    assert loop.time() - started < 0.5
    conn.close()



async def test_set_many_soon_rides_the_pipelined_connection(
    redis_url: str, redis_server: RedisServer
):
    """The Responses items are SET with their TTL on the scripts' connection when it is up
    (through redis-py when it is not); a failure is counted, never raised."""
    from proxy.metrics import Metrics
    from proxy.store.standalone import RedisStore

    metrics = Metrics()
    store = RedisStore(redis_url, 1.0, metrics)
    client = aioredis.from_url(redis_url, decode_responses=True)
    pipelined = store.pipelined
    assert pipelined is not None
    try:
        await store.set_many_soon({"t:a": "1"}, px=60_000)  # not connected yet: redis-py
        await pipelined.connect()
        sent = pipelined.send_now([encode("PING")])
        assert sent is not None and await sent[0] == "PONG"
        await store.set_many_soon({"t:b": "2", "t:c": "3"}, px=60_000)
        assert await client.mget(["t:a", "t:b", "t:c"]) == ["1", "2", "3"]
        assert 0 < await client.pttl("t:b") <= 60_000
        errors = metrics.redis_errors.labels("command")
        before = errors._value.get()
        redis_server.stop()
        await store.set_many_soon({"t:d": "4"}, px=60_000)  # fails quietly, counted
        assert errors._value.get() == before + 1
    finally:
        redis_server.start()
        await client.aclose()
        await store.close()


async def test_the_gateway_opens_the_pipelined_connection_at_start(
    gateway, fake_openai, redis_url: str
):
    """The first request does not wait for the connection (a caller waits one timeout at
    most, which a busy machine's first request could exceed: a 503)."""
    from proxy.app_state import STORE
    from proxy.store.standalone import RedisStore
    from tests.conftest import openai_provider

    models = {"woozlit/m": [{"provider": "openai", "model": "gpt-4o-mini"}]}
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, models, redis_url=redis_url)
    store = gw.app[STORE]
    assert isinstance(store, RedisStore) and store.pipelined is not None
    assert store.pipelined.send_now([]) == []  # None while it is not connected
