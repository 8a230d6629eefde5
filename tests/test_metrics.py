"""What /metrics says is true when it is scraped: cooldowns end on time with no request to
end them (one process and `--workers`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from proxy.config import parse_config
from proxy.metrics import Metrics
from proxy.routing import Router
from tests.conftest import DEFAULT_TIERS, openai_provider

ROOT = Path(__file__).resolve().parent.parent
COOLDOWN = "woozlit_deployment_cooldown"


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
            "woozlit/two": [
                {"provider": "p", "model": "a"},
                {"provider": "p", "model": "b"},
            ],
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
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_under_workers_a_cooldown_in_any_worker_shows_and_ends_on_time(
    tmp_path: Path,
) -> None:
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
    assert cooldowns(run(SCRAPE, tmp_path, "660")) == {
        "p/one": 0.0,
        "p/a": 0.0,
        "p/b": 0.0,
    }
