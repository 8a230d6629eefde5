"""Every Prometheus metric of the gateway, named here and nowhere else.

The metrics live on the app's own registry (no global state). Labels are bounded: public
model names and providers come from the config ("none" for a request refused before its
model or provider was known), statuses and reasons from small fixed sets; never a key, an
account or a raw path.

A value that depends on the clock is computed when /metrics is scraped, not when something
happens: `woozlit_deployment_cooldown` is stored as the Unix time its cooldown ends and shown
as 1 or 0 against the scrape's clock, so it is right at any scrape, without a request to
update it. Under `serve --workers N` each worker stores its own cooldowns in the multiprocess
files; the scrape takes the latest end over the live workers (a cooldown in any worker is
shown) and compares it then.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST
COOLDOWN = "woozlit_deployment_cooldown"
NONE = "none"  # the model or provider label of a request refused before it had one

# The (model, provider) a chat completion request is counted under, set by exchange.py as it
# learns them; edge_middleware counts the request once, with its status, when it is over.
REQUEST_LABELS = web.RequestKey[tuple[str, str, str]]("request_labels")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # Label values are bounded (models and providers from the config), so are these.
        self._children: dict[tuple[str, bool, str], tuple[Any, ...]] = {}
        self._requests: dict[tuple[str, str, int, str], Any] = {}
        r = self.registry
        self.requests = Counter(
            "woozlit_requests_total",
            "API requests (chat completions, messages, responses) by public model, provider "
            "(the last one tried), HTTP status and client protocol, refusals included (401, "
            '403, 429, 503 at admission, 400...); model or provider "none" when the request '
            "was refused before it had one.",
            ["model", "provider", "status", "protocol"],
            registry=r,
        )
        self.duration = Histogram(
            "woozlit_request_duration_seconds",
            "Time from request to the end of the answer.",
            ["model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "woozlit_time_to_first_token_seconds",
            "Time from request to the first chunk of a stream, or to the whole non-stream answer.",
            ["model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "woozlit_tokens_total",
            "Tokens used by public model, kind (prompt, completion) and client protocol.",
            ["model", "kind", "protocol"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "woozlit_upstream_errors_total",
            "Upstream failures by provider and kind: the deployment's (an error answer that "
            "another deployment may not give, a broken or stalled stream), not a refusal of "
            "the client's request (a 400 about what it sent).",
            ["provider", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "woozlit_in_flight_requests",
            "Chat completion requests being served.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.open_streams = Gauge(
            "woozlit_open_streams",
            "Streams open to clients.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.admissions = Counter(
            "woozlit_admissions_total",
            "Admission decisions: admitted, or refused by reason "
            "(auth, forbidden, rate_limit, concurrency, quota, store).",
            ["result"],
            registry=r,
        )
        self.tokens_charged = Counter(
            "woozlit_tokens_charged_total",
            "Tokens charged to monthly quotas.",
            registry=r,
        )
        self.client_stalls = Counter(
            "woozlit_client_stalls_total",
            "Streams ended because their client read nothing for "
            "server.client_read_timeout_seconds.",
            registry=r,
        )
        self.tokens_excess = Counter(
            "woozlit_tokens_excess_total",
            "Tokens providers reported beyond what a request had reserved (or beyond its "
            "account's limit): served, recorded apart, not charged to the user.",
            ["model"],
            registry=r,
        )
        self.redis_latency = Histogram(
            "woozlit_redis_seconds",
            "Latency of Redis calls by operation.",
            ["op"],
            buckets=REDIS_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "woozlit_redis_errors_total",
            "Failed Redis calls by operation.",
            ["op"],
            registry=r,
        )

        self.overhead = Histogram(
            "woozlit_gateway_overhead_seconds",
            "The gateway's own time per request: total minus waiting on the upstream and Redis.",
            ["stream"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=r,
        )
        # Holds the Unix time each cooldown ends: `render` shows 1 before then, else 0.
        self.cooldown_until = Gauge(
            COOLDOWN,
            "1 while a deployment is cooled down after repeated failures, else 0.",
            ["provider", "model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.retries = Counter(
            "woozlit_upstream_retries_total",
            "Attempts moved on to the next deployment, by the provider that failed.",
            ["provider"],
            registry=r,
        )

    def count_request(self, model: str, provider: str, status: int, protocol: str) -> None:
        """One API request in `woozlit_requests_total`, once it is over."""
        key = (model, provider, status, protocol)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(model, provider, status, protocol)
        child.inc()

    def request_done(
        self,
        model: str,
        stream: bool,
        protocol: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        total: float,
        ttft: float | None,
        overhead: float,
    ) -> None:
        """The tokens and times of an API request that was admitted, once it is over (it is
        counted by `count_request`).

        The labelled children are looked up once per label set and kept: `labels()` costs
        about 1.5 us a call (validation, a lock), and a request would make five of them.
        """
        key = (model, stream, protocol)
        children = self._children.get(key)
        if children is None:
            label = "true" if stream else "false"
            children = self._children[key] = (
                self.tokens.labels(model, "prompt", protocol),
                self.tokens.labels(model, "completion", protocol),
                self.duration.labels(model, label),
                self.ttft.labels(model, label),
                self.overhead.labels(label),
            )
        prompt, completion, duration, ttft_child, overhead_child = children
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)
        duration.observe(total)
        if ttft is not None:
            ttft_child.observe(ttft)
        overhead_child.observe(overhead)

    def render(self, now: float | None = None) -> bytes:
        """The exposition text as of `now` (Unix time; default: the clock); under
        `--workers`, the sum over every worker's files."""
        source: Collector = self.registry
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            source = CollectorRegistry()
            multiprocess.MultiProcessCollector(source, path=directory)
        return generate_latest(_AtScrape(source, time.time() if now is None else now))


class _AtScrape:
    """The metrics of `source`, with the cooldowns' end times shown as 1 or 0 at `now`."""

    def __init__(self, source: Collector, now: float):
        self.source = source
        self.now = now

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name == COOLDOWN:
                family.samples = [
                    s._replace(value=1.0 if s.value > self.now else 0.0) for s in family.samples
                ]
            yield family
