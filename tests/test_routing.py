"""Retries and fallbacks across a model's deployments, cooldowns, and weighted balancing."""

from __future__ import annotations

import asyncio
import os
import random
import time

import aiohttp
import pytest

from proxy.app_state import ACCOUNTANT, ACCOUNTS, METRICS
from proxy.config import parse_config
from proxy.errors import BadRequest, UpstreamError
from proxy.metrics import Metrics
from proxy.routing import Router
from tests.conftest import (
    DEFAULT_TIERS,
    FakeUpstream,
    GatewayFactory,
    free_port,
    openai_provider,
)
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS

FAST = {"backoff_base_seconds": 0.001, "backoff_max_seconds": 0.002}


def providers(fake: FakeUpstream) -> dict:
    return {
        "good": openai_provider(fake.url),
        "dead": openai_provider(f"http://127.0.0.1:{free_port()}/v1"),
        "slow": openai_provider(fake.url, timeouts={"first_byte": 0.2}),
    }


async def post(gw, body: dict) -> tuple[int, dict | bytes, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.api + "/chat/completions", json=body, headers=gw.auth()) as resp,
    ):
        data = await resp.read()
        is_json = resp.content_type == "application/json"
        return resp.status, (await resp.json()) if is_json else data, dict(resp.headers)


def request(model: str, stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


@pytest.mark.parametrize(
    ("first", "why"),
    [
        ({"provider": "dead", "model": "gpt-4o-mini"}, "connection refused"),
        ({"provider": "good", "model": "error-500"}, "upstream 500"),
        ({"provider": "good", "model": "error-429"}, "upstream 429"),
        ({"provider": "good", "model": "error-401"}, "our provider key refused"),
        ({"provider": "slow", "model": "hang"}, "no answer in time"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_falls_back_to_the_next_deployment(
    gateway: GatewayFactory, fake_openai: FakeUpstream, first, why, stream
):
    models = {"woozlit/m": [first, {"provider": "good", "model": "gpt-4o-mini"}]}
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    status, body, headers = await post(gw, request("woozlit/m", stream))
    assert status == 200, (why, body)
    assert headers["x-woozlit-deployment"] == "good/gpt-4o-mini"
    if not stream:
        assert body["usage"]["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
    metrics = gw.app[METRICS].render().decode()
    assert f'woozlit_upstream_retries_total{{provider="{first["provider"]}"}} 1.0' in metrics
    await gw.app[ACCOUNTANT].flush()
    usage = await gw.app[ACCOUNTS].usage(gw.account_id)
    assert usage["used"] == PROMPT_TOKENS + COMPLETION_TOKENS  # only the attempt that served


async def test_a_client_error_is_not_retried(gateway: GatewayFactory, fake_openai: FakeUpstream):
    models = {
        "woozlit/m": [
            {"provider": "good", "model": "error-400"},
            {"provider": "good", "model": "gpt-4o-mini"},
        ]
    }
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    status, body, headers = await post(gw, request("woozlit/m"))
    assert status == 400
    assert "too long" in body["error"]
    assert headers["x-woozlit-deployment"] == "good/error-400"
    assert len(fake_openai.record.requests) == 1


async def test_when_every_deployment_fails_the_last_error_is_the_answer(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    models = {
        "woozlit/m": [
            {"provider": "dead", "model": "gpt-4o-mini"},
            {"provider": "good", "model": "error-429"},
        ]
    }
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    status, body, headers = await post(gw, request("woozlit/m"))
    assert status == 503
    assert headers["Retry-After"] == "7"
    assert "rate-limited" in body["error"]


async def test_nothing_is_retried_after_bytes_reached_the_client(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    models = {
        "woozlit/m": [
            {"provider": "good", "model": "midstream-error"},
            {"provider": "good", "model": "gpt-4o-mini"},
        ]
    }
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    status, body, _ = await post(gw, request("woozlit/m", stream=True))
    assert status == 200
    assert (
        body.rstrip()
        .rsplit(b"\n", 1)[-1]
        .startswith(b'data: {"error":{"message":"The model crashed.",')
    )
    assert len(fake_openai.record.requests) == 1


async def test_a_failing_deployment_is_cooled_down(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    models = {
        "woozlit/m": [
            {"provider": "good", "model": "error-500"},
            {"provider": "good", "model": "gpt-4o-mini"},
        ]
    }
    routing = {**FAST, "cooldown_after_failures": 2, "cooldown_seconds": 60}
    gw = await gateway(providers(fake_openai), models, routing=routing)
    for _ in range(2):
        assert (await post(gw, request("woozlit/m")))[0] == 200
    tried = [r["model"] for r in fake_openai.record.requests]
    assert tried == ["error-500", "gpt-4o-mini"] * 2
    for _ in range(3):
        assert (await post(gw, request("woozlit/m")))[0] == 200
    tried = [r["model"] for r in fake_openai.record.requests]
    assert tried[4:] == ["gpt-4o-mini"] * 3  # the cooled-down deployment is skipped
    metrics = gw.app[METRICS].render().decode()
    assert 'woozlit_deployment_cooldown{model="error-500",provider="good"} 1.0' in metrics


async def test_a_cooldown_ends_on_the_scraped_metric_with_no_request_to_end_it(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    """A model's only deployment (never planned around) and an idle model of two: each
    shows 1 while cooled down, and 0 at the first scrape after, with no request between."""
    models = {
        "woozlit/only": [{"provider": "good", "model": "error-500"}],
        "woozlit/m": [
            {"provider": "dead", "model": "gpt-4o-mini"},
            {"provider": "good", "model": "gpt-4o-mini"},
        ],
    }
    routing = {**FAST, "cooldown_after_failures": 2, "cooldown_seconds": 0.5}
    gw = await gateway(providers(fake_openai), models, routing=routing)
    for _ in range(2):
        assert (await post(gw, request("woozlit/only")))[0] == 502
        assert (await post(gw, request("woozlit/m")))[0] == 200
    only = 'woozlit_deployment_cooldown{model="error-500",provider="good"}'
    dead = 'woozlit_deployment_cooldown{model="gpt-4o-mini",provider="dead"}'
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.base_url + "/metrics") as resp:
            scraped = await resp.text()
        assert f"{only} 1.0" in scraped and f"{dead} 1.0" in scraped
        await asyncio.sleep(0.6)
        async with session.get(gw.base_url + "/metrics") as resp:
            scraped = await resp.text()
    assert f"{only} 0.0" in scraped and f"{dead} 0.0" in scraped
    assert 'woozlit_deployment_cooldown{model="gpt-4o-mini",provider="good"} 0.0' in scraped


async def test_equal_priorities_are_balanced_by_weight(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    models = {
        "woozlit/m": [
            {"provider": "good", "model": "gpt-4o-mini", "priority": 0, "weight": 3},
            {"provider": "good", "model": "gpt-4o", "priority": 0, "weight": 1},
            {"provider": "good", "model": "never", "priority": 1},
        ]
    }
    gw = await gateway(providers(fake_openai), models, routing=FAST)
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.post(
                gw.api + "/chat/completions", json=request("woozlit/m"), headers=gw.auth()
            ) as resp:
                assert resp.status == 200
    tried = [r["model"] for r in fake_openai.record.requests]
    share = tried.count("gpt-4o-mini") / len(tried)
    assert "never" not in tried
    assert 0.6 < share < 0.9  # 0.75 expected; 4.9 standard deviations away either side


# -- Router.attempts, alone ------------------------------------------------------------------


def router(routing: dict) -> tuple[Router, Metrics]:
    """A router of one model of four deployments, tried in their order (m0 first)."""
    raw = {
        "providers": {"p": openai_provider("http://127.0.0.1:9/v1")},
        "models": {"woozlit/m": [{"provider": "p", "model": f"m{i}"} for i in range(4)]},
        "routing": routing,
        "tiers": DEFAULT_TIERS,
    }
    metrics = Metrics()
    return Router(parse_config(raw, "test.yaml", os.environ), metrics), metrics


async def test_another_attempt_follows_only_a_retryable_error_before_any_byte():
    r, metrics = router(FAST)
    first, second, third, fourth = r.attempts("woozlit/m")
    assert [a.deployment.model for a in (first, second, third, fourth)] == ["m0", "m1", "m2", "m3"]
    now = time.perf_counter()
    # The request is at fault, not the deployment: no retry, and nothing for the breaker.
    assert not await first.failed(BadRequest(), committed=False, started=now)
    assert not r.breaker.failures.get(first.deployment)
    # The client has bytes of the answer already.
    assert not await second.failed(UpstreamError(), committed=True, started=now)
    assert r.breaker.failures[second.deployment] == 1
    assert await third.failed(UpstreamError(), committed=False, started=now)
    # No deployment remains.
    assert not await fourth.failed(UpstreamError(), committed=False, started=now)
    assert 'woozlit_upstream_retries_total{provider="p"} 1.0' in metrics.render().decode()
    fourth.succeeded()
    assert not r.breaker.failures.get(fourth.deployment)


async def test_the_backoff_doubles_to_its_cap_and_never_ends_past_the_deadline(monkeypatch):
    routing = {"backoff_base_seconds": 0.1, "backoff_max_seconds": 0.3, "deadline_seconds": 10}
    r, metrics = router(routing)
    ceilings: list[tuple[float, float]] = []
    monkeypatch.setattr(random, "uniform", lambda low, high: ceilings.append((low, high)) or 0.0)
    now = time.perf_counter()
    for attempt in r.attempts("woozlit/m")[:3]:
        assert await attempt.failed(UpstreamError(), committed=False, started=now)
    assert ceilings == [(0, 0.1), (0, 0.2), (0, 0.3)]  # full jitter up to base x 2^(n-1)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    late = r.attempts("woozlit/m")[0]
    # 50 ms left before the deadline, and a 100 ms pause: no other attempt.
    started = time.perf_counter() - 9.95
    assert not await late.failed(UpstreamError(), committed=False, started=started)
    assert 'woozlit_upstream_retries_total{provider="p"} 3.0' in metrics.render().decode()
