"""What /metrics says is true when it is scraped: cooldowns end on time with no request to
end them (one process and `--workers`), and every chat completion request is counted once
with its status, refusals and a Redis outage included."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app_state import ACCOUNTS, METRICS
from proxy.config import parse_config
from proxy.metrics import Metrics
from proxy.routing import Router
from tests.conftest import (
    DEFAULT_TIERS,
    FakeUpstream,
    GatewayFactory,
    RedisServer,
    openai_provider,
)

ROOT = Path(__file__).resolve().parent.parent
COOLDOWN = "woozlit_deployment_cooldown"
REQUESTS = "woozlit_requests_total"
MESSAGES = [{"role": "user", "content": "hi"}]


def samples(text: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of metric `name` in an exposition text: sorted labels -> value."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def cooldowns(text: bytes) -> dict[str, float]:
    """provider/model -> the cooldown gauge, from an exposition text."""
    return {
        f"{dict(k)['provider']}/{dict(k)['model']}": v for k, v in samples(text, COOLDOWN).items()
    }


def router(cooldown_seconds: float) -> tuple[Router, Metrics]:
    raw = {
        "providers": {"p": openai_provider("http://127.0.0.1:9/v1")},
        "models": {
            "woozlit/one": [{"provider": "p", "model": "one"}],
            "woozlit/two": [{"provider": "p", "model": "a"}, {"provider": "p", "model": "b"}],
        },
        "routing": {"cooldown_after_failures": 2, "cooldown_seconds": cooldown_seconds},
        "tiers": DEFAULT_TIERS,
    }
    metrics = Metrics()
    return Router(parse_config(raw, "test.yaml", os.environ), metrics), metrics


# -- woozlit_deployment_cooldown ------------------------------------------------------------


def test_every_deployment_has_a_cooldown_series_at_zero_from_the_start() -> None:
    _, metrics = router(30)
    assert cooldowns(metrics.render()) == {"p/one": 0.0, "p/a": 0.0, "p/b": 0.0}


def test_a_cooldown_ends_on_the_metric_when_it_ends_without_a_request() -> None:
    """One deployment (plan never consults the breaker) and an idle model of two."""
    r, metrics = router(0.3)
    one = r.routes["woozlit/one"][0][0]
    a = r.routes["woozlit/two"][0][0]
    for deployment in (one, one, a, a):
        r.breaker.failed(deployment)
    shown = cooldowns(metrics.render())
    assert (shown["p/one"], shown["p/a"]) == (1.0, 1.0)
    for _ in range(16):  # the only deployment keeps serving: its plan skips the breaker
        assert r.plan("woozlit/one")[0][0] == one
        r.breaker.succeeded(one)
    time.sleep(0.35)
    shown = cooldowns(metrics.render())
    assert (shown["p/one"], shown["p/a"]) == (0.0, 0.0)
    # The breaker and the metric agree: the cooldown is over for routing too.
    assert [d.model for d, _ in r.plan("woozlit/two")] == ["a", "b"]


def test_the_cooldown_is_judged_at_the_scrape_s_clock() -> None:
    r, metrics = router(60)
    a = r.routes["woozlit/two"][0][0]
    r.breaker.failed(a)
    r.breaker.failed(a)
    now = time.time()
    assert cooldowns(metrics.render(now=now))["p/a"] == 1.0
    assert cooldowns(metrics.render(now=now + 59))["p/a"] == 1.0
    assert cooldowns(metrics.render(now=now + 61))["p/a"] == 0.0


WORKER = """
import sys
from tests.test_metrics import router
r, metrics = router(float(sys.argv[2]))
for model in sys.argv[1].split(",") if sys.argv[1] else ():
    deployment = next(d for route in r.routes.values() for d, _ in route if d.model == model)
    r.breaker.failed(deployment)
    r.breaker.failed(deployment)
"""

# A scrape as if made `sys.argv[1]` seconds later: this process's clock is moved on.
SCRAPE = """
import sys, time
from proxy.metrics import Metrics
clock = time.time
time.time = lambda: clock() + float(sys.argv[1])
sys.stdout.buffer.write(Metrics().render())
"""


def run(script: str, directory: Path, *args: str) -> bytes:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_under_workers_a_cooldown_in_any_worker_shows_and_ends_on_time(tmp_path: Path) -> None:
    """`serve --workers N`: each worker's breaker is its own; /metrics reads their files."""
    run(WORKER, tmp_path, "one", "60")  # a worker cools p/one down for a minute
    run(WORKER, tmp_path, "", "60")  # another saw no failure
    run(WORKER, tmp_path, "a", "600")  # a third cools p/a down for ten minutes
    shown = cooldowns(run(SCRAPE, tmp_path, "0"))
    assert (shown["p/one"], shown["p/a"]) == (1.0, 1.0)
    # Scraped two minutes later, with no request in between:
    shown = cooldowns(run(SCRAPE, tmp_path, "120"))
    assert (shown["p/one"], shown["p/a"]) == (0.0, 1.0)
    assert shown == {"p/one": 0.0, "p/a": 1.0, "p/b": 0.0}
    assert cooldowns(run(SCRAPE, tmp_path, "660")) == {"p/one": 0.0, "p/a": 0.0, "p/b": 0.0}


# -- woozlit_requests_total -----------------------------------------------------------------


def requests_by_status(text: bytes) -> dict[tuple[str, str, str], float]:
    """(model, provider, status) -> requests, from an exposition text."""
    return {
        (d["model"], d["provider"], d["status"]): v
        for d, v in ((dict(k), v) for k, v in samples(text, REQUESTS).items())
    }


async def post(session: aiohttp.ClientSession, url: str, body: object, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with session.post(url + "/chat/completions", headers=headers, **kwargs) as resp:
        await resp.read()
        return resp.status


async def test_every_chat_completion_request_is_counted_once_with_its_status(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    models = {
        "woozlit/m": [{"provider": "openai", "model": "gpt-4o-mini"}],
        "woozlit/broken": [{"provider": "openai", "model": "error-500"}],
    }
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        models,
        account={"tier": "free", "developer": True, "requests_per_minute": 7},
    )
    accounts = gw.app[ACCOUNTS]
    disabled = await accounts.create_account({"tier": "premium", "disabled": True})
    disabled_key = (await accounts.create_key(disabled["id"], "off"))["key"]
    ok = {"model": "woozlit/m", "messages": MESSAGES}
    async with aiohttp.ClientSession() as session:
        statuses = [
            await post(session, gw.api, ok, gw.api_key),  # 200
            await post(session, gw.base_url + "/v1", {**ok, "stream": True}, gw.api_key),  # 200
            await post(session, gw.api, ok, "woozlit_" + "n" * 43),  # 401
            await post(session, gw.api, ok, disabled_key),  # 403
            await post(session, gw.api, b"{not json", gw.api_key),  # 400
            await post(session, gw.api, {**ok, "model": "woozlit/nope"}, gw.api_key),  # 400
            await post(session, gw.api, {**ok, "model": "woozlit/broken"}, gw.api_key),  # 502
        ]
        statuses += [await post(session, gw.api, ok, gw.api_key) for _ in range(5)]
        # Not chat completions: not counted (their refusals are in woozlit_admissions_total).
        for path in ("/models", "/usage", "/models/woozlit/m"):
            async with session.get(gw.api + path, headers=gw.auth()) as resp:
                assert resp.status in (200, 429)
    assert statuses == [200, 200, 401, 403, 400, 400, 502, 200, 200, 429, 429, 429]
    counted = requests_by_status(gw.app[METRICS].render())
    assert counted == {
        ("woozlit/m", "openai", "200"): 4.0,
        ("none", "none", "401"): 1.0,
        ("woozlit/m", "none", "403"): 1.0,
        ("none", "none", "400"): 2.0,
        ("woozlit/broken", "openai", "502"): 1.0,
        ("woozlit/m", "none", "429"): 3.0,
    }


async def test_a_client_that_leaves_is_counted_once_as_499(
    gateway: GatewayFactory, fake_openai: FakeUpstream
):
    gw = await gateway(
        {"openai": openai_provider(fake_openai.url)},
        {"woozlit/hang": [{"provider": "openai", "model": "hang"}]},
    )
    body = {"model": "woozlit/hang", "messages": MESSAGES}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(session, gw.api, body, gw.api_key), 0.5)
    metrics = gw.app[METRICS]
    for _ in range(200):
        if requests_by_status(metrics.render()):
            break
        await asyncio.sleep(0.01)
    assert requests_by_status(metrics.render()) == {("woozlit/hang", "openai", "499"): 1.0}


async def test_a_redis_outage_shows_in_the_5xx_ratio(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, redis_server: RedisServer
):
    """The 140 store 503s that woozlit_requests_total did not see, and the alert's ratio."""
    models = {"woozlit/m": [{"provider": "openai", "model": "gpt-4o-mini"}]}
    gw = await gateway({"openai": openai_provider(fake_openai.url)}, models, redis_url=redis_url)
    ok = {"model": "woozlit/m", "messages": MESSAGES}
    async with aiohttp.ClientSession() as session:
        assert [await post(session, gw.api, ok, gw.api_key) for _ in range(10)] == [200] * 10
        redis_server.stop()
        try:
            down = await asyncio.gather(
                *(post(session, gw.api, ok, gw.api_key) for _ in range(140))
            )
            # A key this instance has not seen needs Redis to be known: 503 too.
            down.append(await post(session, gw.api, ok, "woozlit_" + "u" * 43))
        finally:
            redis_server.start()
    assert down == [503] * 141
    counted = requests_by_status(gw.app[METRICS].render())
    assert counted == {
        ("woozlit/m", "openai", "200"): 10.0,
        ("woozlit/m", "none", "503"): 140.0,
        ("none", "none", "503"): 1.0,
    }
    # WoozlitHigh5xxRatio's expression, on these counts.
    errors = sum(v for (_, _, status), v in counted.items() if status.startswith("5"))
    assert errors / sum(counted.values()) > 0.05
