"""The routing table: a public model name -> its deployments, and the order to try them.

Deployments are tried by priority (by default their place in the list); among deployments
of equal priority the order is drawn at random by weight, which balances load among them.
A deployment that fails `cooldown_after_failures` times in a row is cooled down for
`cooldown_seconds` (a simple circuit breaker): it goes to the end of the order, so it is
tried only when everything else has failed too. A model's only deployment is always tried;
it still cools down, which the metric shows, as a sign of repeated failures.

A request's attempts (`Router.attempts`) follow that order. A failed attempt is followed by
another only when its error is `retryable` (errors.py), nothing of the answer has gone out
to the client yet, and a backoff with full jitter (a random pause up to
`backoff_base_seconds` x 2^(n-1), at most `backoff_max_seconds`, after the n-th attempt)
ends before the request's deadline (`deadline_seconds` after it began). Only a retryable
failure counts against the deployment's breaker; a success resets it.

The `woozlit_deployment_cooldown` metric is given the cooldown's end (wall clock) when it
starts, and nothing after: whether the cooldown is still on is decided when /metrics is
scraped (metrics.py), so the metric returns to 0 on time even if no request comes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby

from proxy.config import Config, Deployment, RoutingConfig
from proxy.errors import GatewayError
from proxy.metrics import Metrics
from proxy.providers import build_provider
from proxy.providers.base import Provider

Route = tuple[tuple[Deployment, Provider], ...]


class Breaker:
    """Consecutive failures per deployment, and until when each is cooled down."""

    def __init__(self, config: RoutingConfig, metrics: Metrics, deployments: Iterable[Deployment]):
        self.threshold = config.cooldown_after_failures
        self.cooldown = config.cooldown_seconds
        self.failures: dict[Deployment, int] = {}
        self.until: dict[Deployment, float] = {}  # time.monotonic()
        # Every deployment's series exists from the start, at 0: a cooldown is a change.
        self.gauges = {d: metrics.cooldown_until.labels(d.provider, d.model) for d in deployments}

    def cooling(self, deployment: Deployment, now: float) -> bool:
        until = self.until.get(deployment)
        if until is None:
            return False
        if now < until:
            return True
        del self.until[deployment]
        return False

    def failed(self, deployment: Deployment) -> None:
        count = self.failures.get(deployment, 0) + 1
        self.failures[deployment] = count
        if count >= self.threshold:
            self.failures[deployment] = 0
            self.until[deployment] = time.monotonic() + self.cooldown
            self.gauges[deployment].set(time.time() + self.cooldown)

    def succeeded(self, deployment: Deployment) -> None:
        if self.failures.get(deployment):
            self.failures[deployment] = 0


@dataclass(slots=True, eq=False)
class Attempt:
    """One deployment to try for a request, and its place in the order; its caller says how
    it went (`succeeded`, `failed`), which feeds the breaker and decides whether another
    attempt follows. Kept by the router for a model of one deployment: nothing of one
    request is in it."""

    deployment: Deployment
    provider: Provider
    number: int  # 1 for the request's first attempt
    last: bool  # no other deployment remains
    router: Router

    def succeeded(self) -> None:
        self.router.breaker.succeeded(self.deployment)

    async def failed(self, exc: GatewayError, *, committed: bool, started: float) -> bool:
        """True once the backoff before the next attempt is over; False when `exc` is the
        request's answer: it is not retryable, the answer's status already went out to the
        client (`committed`), no deployment remains, or the backoff would end past the
        request's deadline (`deadline_seconds` after `started`, time.perf_counter())."""
        if not exc.retryable:
            return False
        router = self.router
        router.breaker.failed(self.deployment)
        if committed or self.last:  # nothing is retried once bytes have reached the client
            return False
        ceiling = router.backoff_base * 2 ** (self.number - 1)
        pause = random.uniform(0, min(router.backoff_max, ceiling))
        if time.perf_counter() + pause >= started + router.deadline:
            return False
        router.retries.labels(self.provider.config.name).inc()
        await asyncio.sleep(pause)
        return True


class Router:
    def __init__(self, config: Config, metrics: Metrics):
        self.providers = {name: build_provider(pc) for name, pc in config.providers.items()}
        self.routes: dict[str, Route] = {
            public: tuple(
                sorted(
                    ((dep, self.providers[dep.provider]) for dep in deployments),
                    key=lambda pair: pair[0].priority,
                )
            )
            for public, deployments in config.models.items()
        }
        self.breaker = Breaker(
            config.routing, metrics, (d for route in self.routes.values() for d, _ in route)
        )
        self.deadline = config.routing.deadline_seconds
        self.backoff_base = config.routing.backoff_base_seconds
        self.backoff_max = config.routing.backoff_max_seconds
        self.retries = metrics.retries  # labelled by provider
        self.only = {
            public: (Attempt(*route[0], 1, True, self),)
            for public, route in self.routes.items()
            if len(route) == 1
        }

    def attempts(self, public_model: str) -> Sequence[Attempt]:
        """The attempts of one request of a (validated) public model, in the order of
        `plan`. The caller reports each one's outcome, and stops at a success or at the
        first failure that `Attempt.failed` does not retry."""
        # A model of one deployment, most of them: its one attempt, made once (the hot path).
        only = self.only.get(public_model)
        if only is not None:
            return only
        plan = self.plan(public_model)
        last = len(plan)
        return [Attempt(d, p, n, n == last, self) for n, (d, p) in enumerate(plan, 1)]

    def plan(self, public_model: str) -> Route:
        """The deployments of a (validated) public model, in the order to try them now."""
        route = self.routes[public_model]
        if len(route) == 1:
            return route
        ordered: list[tuple[Deployment, Provider]] = []
        for _, group in groupby(route, key=lambda pair: pair[0].priority):
            members = list(group)
            if len(members) > 1:
                # A weighted random permutation (Efraimidis and Spirakis): key u^(1/w).
                members.sort(key=lambda pair: -(random.random() ** (1 / pair[0].weight)))
            ordered += members
        now = time.monotonic()
        cooling = [pair for pair in ordered if self.breaker.cooling(pair[0], now)]
        if cooling:
            ordered = [pair for pair in ordered if pair not in cooling] + cooling
        return tuple(ordered)

    def longest_request(self) -> float:
        """An upper bound of one non-stream request's time: the retry deadline, plus the
        longest a last attempt may then wait for its answer."""
        slowest = max(p.config.timeouts.first_byte + p.config.timeouts.idle
                      for p in self.providers.values())  # fmt: skip
        return self.deadline + slowest

    def owner(self, public_model: str) -> str:
        """The provider that serves a model first, for the model list's `owned_by`."""
        return self.routes[public_model][0][0].provider
