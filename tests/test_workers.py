"""`serve --workers 2`: one port, two processes, metrics summed over both, a dead worker
restarted, SIGTERM forwarded for a graceful exit."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from proxy.admin.accounts import Accounts
from proxy.config import parse_config
from proxy.metrics import Metrics
from proxy.store import open_store
from tests.conftest import DEFAULT_TIERS, FakeUpstream, eventually, free_port
from tests.test_shutdown import read_line

REQUESTS = 120


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_two_workers_share_a_port_and_their_metrics(
    fake_openai: FakeUpstream, tmp_path: Path, redis_url: str
):
    config = {
        "providers": {"openai": {"kind": "openai", "base_url": fake_openai.url}},
        "models": {"woozlit/m": [{"provider": "openai", "model": "gpt-4o-mini"}]},
        "tiers": DEFAULT_TIERS,
        "server": {"shutdown_grace_seconds": 0.1},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    store = open_store(redis_url, 2.0, Metrics())
    accounts = Accounts(store, parse_config(config, "test", {}))
    account = await accounts.create_account({"tier": "premium", "developer": True})
    key = (await accounts.create_key(account["id"], "workers"))["key"]
    await store.close()
    port = free_port()
    env = {**os.environ, "WOOZLIT_REDIS_URL": redis_url}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--workers", "2", "--config", str(path),
        "--host", "127.0.0.1", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    body = {"model": "woozlit/m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    headers = {"Authorization": f"Bearer {key}"}
    try:
        assert "(2 workers)" in await read_line(proc, "woozlit-proxy: listening on ")
        workers = children(proc.pid)
        assert len(workers) == 2
        await eventually(lambda: all(_listening_pid(w) for w in workers))

        async def one() -> None:
            # A connection per request, so that the kernel spreads them over both workers.
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.post(base + "/v1/chat/completions", json=body, headers=headers) as resp,
            ):
                assert resp.status == 200

        for _ in range(REQUESTS // 20):
            await asyncio.gather(*(one() for _ in range(20)))

        # Whichever worker answers /metrics, it shows the sum over both.
        for _ in range(6):
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.get(base + "/metrics") as resp,
            ):
                text = await resp.text()
            line = re.search(
                r'woozlit_requests_total\{model="woozlit/m".*status="200"\} (\S+)', text
            )
            assert line is not None and float(line.group(1)) == REQUESTS

        # A worker that dies is replaced; the port keeps serving.
        os.kill(workers[0], signal.SIGKILL)
        await eventually(
            lambda: len(children(proc.pid)) == 2 and workers[0] not in children(proc.pid)
        )
        for _ in range(10):
            await one()

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _listening_pid(pid: int) -> bool:
    """The worker has opened sockets (a rough sign that it is up)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd")) > 5
    except FileNotFoundError:
        return False
