"""Shared fixtures: a real redis-server on a free port, fake upstreams, gateways on real ports."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.app_state import ACCOUNTS
from proxy.config import parse_config
from proxy.server import GatewayRunner
from tests.fakes.openai_upstream import Record, create_fake_openai
from tests.openai_types import check_chunks, check_completion, stream_chunks
from tests.redis_binary import RedisServer, redis_binaries
from tests.redis_binary import free_port as free_port  # for the tests that import it from here

ADMIN_TOKEN = "test-admin-token"
# Concurrency is not what most tests are about: they may run hundreds of requests at once.
DEFAULT_TIERS = {
    "free": {
        "monthly_tokens": 1_000_000,
        "requests_per_minute": 60,
        "max_concurrent_requests": 100_000,
    },
    "premium": {
        "monthly_tokens": None,
        "requests_per_minute": 100_000,
        "max_concurrent_requests": 100_000,
    },
}


async def eventually(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until `predicate()` holds (polling); fail after `seconds`."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still false after {seconds} s: {predicate}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Which redis-server the run started (tests/redis_binary.py), if it started one."""
    if redis_binaries.cache_info().currsize:
        found = redis_binaries()
        terminalreporter.write_line(
            f"redis-server: {found.server} ({found.version_text}, from {found.source})"
        )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's redis-server (tests/redis_binary.py); a test may stop and start it."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on the session's redis-server."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@dataclass
class FakeUpstream:
    url: str
    record: Record


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeUpstream]:
    record = Record()
    server = TestServer(create_fake_openai(record))
    await server.start_server()
    yield FakeUpstream(str(server.make_url("/v1")), record)
    await server.close()


def openai_provider(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": url, "api_key": "sk-test-provider-key", **extra}


class GatewayTestServer(TestServer):
    """A TestServer with the gateway's own runner (JSON answers to malformed HTTP)."""

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, **kwargs)


@dataclass
class Gateway:
    app: web.Application
    server: TestServer
    base_url: str  # http://127.0.0.1:PORT
    api_key: str
    account_id: str

    @property
    def api(self) -> str:
        return self.base_url + "/api/woozlit/v1"

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}


GatewayFactory = Callable[..., Awaitable[Gateway]]


class AnswerCheck:
    """Every chat answer of every gateway a test starts, checked against the openai SDK's
    types (tests/openai_types.py) as it goes out: a JSON answer whole, a stream's chunks up
    to its end or its error event. Failures are collected and fail the test at teardown."""

    def __init__(self) -> None:
        self.checked = 0
        self.failures: list[str] = []

    async def watch(self, request: web.Request, response: web.StreamResponse) -> None:
        if not request.path.endswith("/chat/completions") or response.status != 200:
            return
        if isinstance(response, web.Response):
            if isinstance(response.body, bytes):
                self._check(lambda body=response.body: check_completion(orjson.loads(body)))
            return
        written: list[bytes] = []
        write, write_eof = response.write, response.write_eof

        async def collect(data: bytes | bytearray | memoryview) -> None:
            written.append(bytes(data))
            await write(data)

        async def end(data: bytes = b"") -> None:
            written.append(data)
            self._check(lambda: check_chunks(stream_chunks(b"".join(written))))
            await write_eof(data)

        response.write = collect  # type: ignore[method-assign]
        response.write_eof = end  # type: ignore[method-assign]

    def _check(self, check: Callable[[], Any]) -> None:
        self.checked += 1
        try:
            check()
        except Exception as exc:  # every failure is reported at teardown
            self.failures.append(f"{type(exc).__name__}: {exc}"[:2000])

    def assert_all_valid(self) -> None:
        assert not self.failures, "answers that fail the openai types:\n" + "\n".join(self.failures)


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayFactory]:
    """Start gateways: `await gateway(providers=..., models=..., redis_url=None, ...)`.

    Each has its own app on a real loopback port (so the openai SDK can reach it), an
    account (premium and developer unless `account=` says otherwise) and a key for it, or
    the account and key of `same_account_as` (two instances sharing one Redis).
    """
    servers: list[TestServer] = []

    async def start(
        providers: dict[str, Any],
        models: dict[str, Any],
        *,
        aliases: dict[str, str] | None = None,
        tiers: dict[str, Any] | None = None,
        accounting: dict[str, Any] | None = None,
        routing: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
        redis_url: str | None = None,
        account: dict[str, Any] | None = None,
        admin_token: str | None = ADMIN_TOKEN,
        same_account_as: Gateway | None = None,
    ) -> Gateway:
        raw: dict[str, Any] = {
            "providers": providers,
            "models": models,
            "tiers": tiers or DEFAULT_TIERS,
        }
        if aliases:
            raw["aliases"] = aliases
        if accounting:
            raw["accounting"] = accounting
        if routing:
            raw["routing"] = routing
        if server:
            raw["server"] = server
        config = parse_config(raw, "test.yaml", os.environ)
        app = create_app(config, redis_url=redis_url, admin_token=admin_token, bootstrap=False)
        app.on_response_prepare.append(answers.watch)
        test_server = GatewayTestServer(app)
        await test_server.start_server()
        servers.append(test_server)
        base_url = str(test_server.make_url("")).rstrip("/")
        if same_account_as is not None:
            return Gateway(
                app, test_server, base_url, same_account_as.api_key, same_account_as.account_id
            )
        accounts = app[ACCOUNTS]
        acct = await accounts.create_account(account or {"tier": "premium", "developer": True})
        key = await accounts.create_key(acct["id"], "test")
        return Gateway(app, test_server, base_url, key["key"], acct["id"])

    answers = AnswerCheck()
    yield start
    for s in reversed(servers):
        await s.close()
    answers.assert_all_valid()
