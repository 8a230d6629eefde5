"""SIGTERM with streams in flight: readiness turns 503 at once, new connections are served
during the grace, every stream completes and is settled, and the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from proxy.admin.accounts import Accounts
from proxy.config import parse_config
from proxy.metrics import Metrics
from proxy.store import Store, open_store
from tests.conftest import DEFAULT_TIERS, FakeUpstream, eventually, free_port
from tests.fakes.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS

STREAMS = 5


async def read_line(proc: asyncio.subprocess.Process, prefix: str) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"the gateway exited before printing {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


async def serve(
    config: dict, tmp_path: Path, redis_url: str
) -> tuple[asyncio.subprocess.Process, int, Store, Accounts, dict, str]:
    """The gateway as a process of its own on `config`, and a free account's key."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    store = open_store(redis_url, 2.0, Metrics())
    accounts = Accounts(store, parse_config(config, "test", {}))
    account = await accounts.create_account({"tier": "free", "developer": True})
    key = (await accounts.create_key(account["id"], "drain"))["key"]
    env = {**os.environ, "WOOZLIT_REDIS_URL": redis_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(path),
        "--host", "127.0.0.1", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        await read_line(proc, "woozlit-proxy: listening on ")
    except BaseException:
        proc.kill()
        await proc.wait()
        await store.close()
        raise
    return proc, port, store, accounts, account, key


async def test_sigterm_drains_streams_and_exits_0(
    fake_openai: FakeUpstream, tmp_path: Path, redis_url: str
):
    fake_openai.record.delay = 0.15  # 5 chunks: each stream lasts about 0.75 s
    config = {
        "providers": {"openai": {"kind": "openai", "base_url": fake_openai.url}},
        "models": {"woozlit/slow": [{"provider": "openai", "model": "slow"}]},
        "tiers": DEFAULT_TIERS,
        "server": {"shutdown_grace_seconds": 0.5, "drain_seconds": 10},
    }
    proc, port, store, accounts, account, key = await serve(config, tmp_path, redis_url)
    try:
        base = f"http://127.0.0.1:{port}"
        body = {
            "model": "woozlit/slow",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {key}"}

        async with aiohttp.ClientSession() as session:

            async def stream() -> bytes:
                async with session.post(
                    base + "/v1/chat/completions", json=body, headers=headers
                ) as resp:
                    assert resp.status == 200
                    return await resp.read()

            streams = [asyncio.create_task(stream()) for _ in range(STREAMS)]
            await eventually(lambda: len(fake_openai.record.requests) == STREAMS)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            # During the grace: not ready, yet a new connection is still served.
            async with aiohttp.ClientSession() as fresh:
                async with fresh.get(base + "/readyz") as resp:
                    assert resp.status == 503
                async with fresh.get(base + "/healthz") as resp:
                    assert resp.status == 200
            bodies = await asyncio.gather(*streams)

        for data in bodies:
            assert data.endswith(b"data: [DONE]\n\n")
            assert data.count(b'"content"') >= 5
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
        assert fake_openai.record.disconnects == 0
        # Every stream was settled before the exit: charged, and no hold left.
        usage = await accounts.usage(account["id"])
        assert usage["requests"] == STREAMS
        assert usage["used"] == STREAMS * (PROMPT_TOKENS + COMPLETION_TOKENS)
        assert usage["held"] == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await store.close()


async def test_sigterm_waits_for_the_answers_of_clients_that_left(
    fake_openai: FakeUpstream, tmp_path: Path, redis_url: str
):
    """A non-stream request whose client left is charged the answer still coming; a SIGTERM
    meanwhile waits for that answer before the upstream session closes."""
    config = {
        "providers": {"openai": {"kind": "openai", "base_url": fake_openai.url}},
        "models": {"woozlit/gated": [{"provider": "openai", "model": "gated"}]},
        "tiers": DEFAULT_TIERS,
        "server": {"shutdown_grace_seconds": 0.1, "drain_seconds": 10},
    }
    proc, port, store, accounts, account, key = await serve(config, tmp_path, redis_url)
    try:
        body = {
            "model": "woozlit/gated",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        }
        async with aiohttp.ClientSession() as session:
            request = session.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            )
            try:
                async with asyncio.timeout(0.5):
                    await request
            except TimeoutError:
                pass  # the client leaves; the provider is still working on the answer
        await eventually(lambda: len(fake_openai.record.requests) == 1)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1)
        fake_openai.record.gate.set()
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
        usage = await accounts.usage(account["id"])
        assert usage["used"] == PROMPT_TOKENS + COMPLETION_TOKENS
        assert usage["held"] == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await store.close()
