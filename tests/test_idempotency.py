"""Idempotency-Key: a retried non-stream request returns the stored answer, charged once."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.app_state import ACCOUNTANT, ACCOUNTS
from tests.conftest import (
    FakeUpstream,
    GatewayFactory,
    RedisServer,
    eventually,
    openai_provider,
)
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS

MODELS = {
    "woozlit/m": [{"provider": "openai", "model": "gpt-4o-mini"}],
    "woozlit/gated": [{"provider": "openai", "model": "gated"}],
    "woozlit/broken": [{"provider": "openai", "model": "error-500"}],
}


def body(model: str = "woozlit/m", text: str = "hi", stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


async def post(session, gw, payload, key):
    headers = {**gw.auth(), "Idempotency-Key": key}
    async with session.post(gw.api + "/chat/completions", json=payload, headers=headers) as r:
        return r.status, await r.read(), dict(r.headers)


async def used(gw) -> dict:
    await gw.app[ACCOUNTANT].flush()
    return await gw.app[ACCOUNTS].usage(gw.account_id)


async def test_a_retry_returns_the_stored_answer_and_is_charged_once(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=redis_url)
    async with aiohttp.ClientSession() as session:
        first = await post(session, gw, body(), "retry-1")
        second = await post(session, gw, body(), "retry-1")
    assert first[0] == second[0] == 200
    assert first[1] == second[1]  # the same answer, id included
    assert second[2]["Idempotent-Replayed"] == "true"
    assert len(fake_openai.record.requests) == 1
    usage = await used(gw)
    assert usage["used"] == PROMPT_TOKENS + COMPLETION_TOKENS
    assert usage["requests"] == 1


async def test_another_body_with_the_same_key_is_refused(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gw, body(text="a"), "k"))[0] == 200
        status, data, _ = await post(session, gw, body(text="b"), "k")
    assert status == 422
    assert b"different request body" in data


async def test_a_retry_while_the_first_runs_is_a_conflict(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS)
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(post(session, gw, body("woozlit/gated"), "slow"))
        await eventually(lambda: bool(fake_openai.record.requests))
        status, data, _ = await post(session, gw, body("woozlit/gated"), "slow")
        assert status == 409
        assert b"still in progress" in data
        fake_openai.record.gate.set()
        assert (await first)[0] == 200


async def test_a_failed_request_gives_the_key_back(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gw, body("woozlit/broken"), "k"))[0] == 502
        assert (await post(session, gw, body("woozlit/broken"), "k"))[0] == 502
    assert len(fake_openai.record.requests) == 2  # the retry ran for real


async def test_keys_are_per_account_and_streams_are_not_stored(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    providers = {"openai": openai_provider(fake_openai.url)}
    a = await gateway(providers, MODELS)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, a, body(), "shared"))[0] == 200
        b_key = await a.app[ACCOUNTS].create_key(
            (await a.app[ACCOUNTS].create_account({"tier": "free", "developer": True}))["id"], "b"
        )
        headers = {"Authorization": f"Bearer {b_key['key']}", "Idempotency-Key": "shared"}
        async with session.post(a.api + "/chat/completions", json=body(), headers=headers) as r:
            assert r.status == 200 and "Idempotent-Replayed" not in r.headers
        for _ in range(2):
            status, data, headers = await post(session, a, body(stream=True), "streamed")
            assert status == 200 and data.endswith(b"data: [DONE]\n\n")
    assert len(fake_openai.record.requests) == 4


async def test_a_served_answer_stays_served_when_the_store_fails_at_the_end(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, redis_server: RedisServer
):
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=redis_url)
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(post(session, gw, body("woozlit/gated"), "k"))
        await eventually(lambda: bool(fake_openai.record.requests))
        redis_server.stop()
        try:
            fake_openai.record.gate.set()
            status, data, _ = await first
            assert status == 200  # served, and charged once Redis is back: not a 503
            assert b'"choices"' in data
        finally:
            redis_server.start()


async def test_a_key_of_bytes_that_are_not_utf8_works(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    """aiohttp keeps such header bytes as surrogates: hashing them was a 500."""
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS)
    data = (
        b'{"model": "woozlit/m", "messages": [{"role": "user", "content": "hi"}], "stream": false}'
    )
    answers = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
        writer.write(
            b"POST /api/woozlit/v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + gw.api_key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nIdempotency-Key: k\xff\xfe\r\n"
            b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
        )
        answers.append(await asyncio.wait_for(reader.read(-1), 10))
        writer.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), answers
    assert b"Idempotent-Replayed: true" in answers[1]
    assert len(fake_openai.record.requests) == 1


async def test_a_retry_after_a_dropped_connection_gets_the_answer_charged_once(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
):
    """The connection drops while the provider works on the answer: the answer is still
    charged (the provider bills it), stored for the key, and the client's retry gets it
    (409 while it is still coming), not a second run."""
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=redis_url)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await post(session, gw, body("woozlit/gated"), "dropped")
        await eventually(lambda: len(fake_openai.record.requests) == 1)
        status, _, _ = await post(session, gw, body("woozlit/gated"), "dropped")
        assert status == 409  # still coming
        fake_openai.record.gate.set()
        await gw.app[ACCOUNTANT].flush(5)
        status, answer, headers = await post(session, gw, body("woozlit/gated"), "dropped")
    assert status == 200 and headers["Idempotent-Replayed"] == "true", answer
    assert b"Hello! How can I help?" in answer
    assert len(fake_openai.record.requests) == 1
    usage = await used(gw)
    assert usage["used"] == PROMPT_TOKENS + COMPLETION_TOKENS


async def test_a_client_that_leaves_while_its_key_is_taken_leaves_it_free(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, monkeypatch
):
    """The key was taken in Redis, but the client left before we heard so: the key is given
    back, and the retry runs (not a 409 until the pending marker expires)."""
    from proxy.app_state import STORE

    gw = await gateway({"openai": openai_provider(fake_openai.url)}, MODELS, redis_url=redis_url)
    store = gw.app[STORE]
    real_set = store.set

    async def slow_take(key, value, **kwargs):
        result = await real_set(key, value, **kwargs)
        if kwargs.get("nx"):
            await asyncio.sleep(1)
        return result

    monkeypatch.setattr(store, "set", slow_take)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await post(session, gw, body(), "left-early")
        monkeypatch.setattr(store, "set", real_set)
        await asyncio.sleep(0.3)  # the key is given back
        status, _, headers = await post(session, gw, body(), "left-early")
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert len(fake_openai.record.requests) == 1
