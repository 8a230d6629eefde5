"""The chaos run: load on the gateway while its upstream fails at random and Redis is
restarted once.

    python -m pytest tests/test_chaos.py -s                           # 10 s of load (CI's)
    WOOZLIT_CHAOS_SECONDS=60 python -m pytest tests/test_chaos.py -s  # the chaos target's run

The chaos target's done-when: "a 60-second chaos run (load from the benchmark script while the
fake upstream injects each fault at random and Redis is restarted once) ends with zero 500s,
zero hung requests, and a month's `used` equal to the sum of the usage the clients received."
The suite runs it for 10 s (the load time; the run takes about 10 s more); every setting below
is an environment variable, `WOOZLIT_CHAOS_<NAME>` (`SECONDS`, `CONCURRENCY`, `SEED`...).

What it starts, all on loopback, all stopped at the end whatever happens:

- a redis-server (tests/redis_binary.py) with an append-only file fsynced at every write, so
  that a restart keeps every account, hold and charge;
- the fake OpenAI upstream (tests/fakes/) with faults (tests/fakes/faults.py), in this
  process: every request picks at random a normal answer or one fault, stream or not, and an
  answer that completes always reports its real usage (random token counts);
- the gateway, `python -m proxy serve --workers 1`, with a config written for the run: the
  model has two deployments on that upstream (so failures fall back), timeouts of 1 s to
  connect, 2 s to the first byte and 1 s between chunks, a routing deadline of 10 s, and a
  free tier whose monthly limit no run reaches (quota holds are taken and released).

Then it creates a free developer account and a key through the admin API, drives
`concurrency` keep-alive connections for `seconds` (the benchmarks' HTTP client,
benchmarks/loadgen.py; half streams asking for `stream_options.include_usage`, half
non-stream, `idempotency_share` of those with a unique `Idempotency-Key`), each request
under a client timeout (`client_timeout`, 30 s: longer counts as HUNG), and restarts Redis
once in the middle (SIGTERM, `redis_down` seconds, started again on the same port and
directory). Every request carries `X-Request-Id: chaos-N`, so that the gateway's access log
(JSON lines on its stdout) can be joined with what the client saw.

The client's usage: the `usage.total_tokens` of a 200 non-stream answer; for a stream, the
last usage chunk it received (the gateway sends one before the error event of a stream cut
after it started; the upstream's own usage chunk may come first, and the later one repeats
it). Anything else carries no usage: an error before the first byte is charged nothing.

At the end it waits for the gateway's settles to drain (the admin usage endpoint until
`used` holds still for `settle_quiet` seconds, within `settle_wait`), stops the gateway, and
prints (with `-s`; and in the failure) statuses, outcomes of streams, faults injected, the
Redis outage and what requests saw during it, and `used` against the clients' sum and the
access log's sum, with the requests where they disagree. It passes with zero 500s, zero
hung requests, `used` equal to the clients' sum, Redis restarted, and every fault injected.
The children's logs, the Redis data and `outcomes.jsonl` stay in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from benchmarks.loadgen import Connection, ProtocolError
from tests.fakes.faults import FAULTS, Faults
from tests.fakes.openai_upstream import Record, create_fake_openai
from tests.redis_binary import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "woozlit/gpt-4o-mini"
DEPLOYMENTS = ("chaos-primary", "chaos-fallback")  # upstream model names, same fake
TIMEOUTS = {"connect": 1, "first_byte": 2, "idle": 1}


@dataclass(frozen=True)
class Settings:
    """The run's settings; each is read from WOOZLIT_CHAOS_<NAME> when set."""

    seconds: float = 10.0  # of load
    concurrency: int = 16  # connections
    seed: int = -1  # -1: a random one (the report names it)
    fault_rate: float = 0.5  # share of upstream attempts that get a fault, spread evenly
    stream_share: float = 0.5
    idempotency_share: float = 0.25  # of non-stream requests, with a unique Idempotency-Key
    client_timeout: float = 30.0  # a request taking longer counts as HUNG
    redis_down: float = 3.0  # seconds Redis stays down
    hang: float = TIMEOUTS["first_byte"] + 1.5  # seconds the upstream hangs before headers
    stall: float = TIMEOUTS["idle"] + 1.0  # seconds the upstream stalls mid-body
    settle_quiet: float = 3.0
    settle_wait: float = 60.0

    @classmethod
    def from_environ(cls) -> Settings:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = os.environ.get(f"WOOZLIT_CHAOS_{f.name.upper()}")
            if raw is not None:
                values[f.name] = type(f.default)(raw)
        settings = cls(**values)
        if settings.seed == -1:
            settings = dataclasses.replace(settings, seed=random.randrange(1 << 31))
        return settings


# -- the client side -----------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One request as the client saw it."""

    n: int
    stream: bool
    start: float  # seconds since the load began
    duration: float = 0.0
    status: int = 0  # 0: no HTTP status (hung before headers, connection error)
    kind: str = ""  # see Client.classify
    usage: int = 0  # total_tokens the client was told
    usage_chunks: int = 0
    error: str = ""
    idempotent: bool = False  # sent with an Idempotency-Key (non-stream only)


@dataclass
class Outage:
    down_at: float = 0.0  # seconds since the load began: SIGTERM sent
    stopped_at: float = 0.0  # the old redis-server exited
    up_at: float = 0.0  # the new one accepts connections
    restarted: bool = False


def parse_stream(body: bytes) -> tuple[str, int, int, str]:
    """(kind, last usage total, usage chunks, error message) of an SSE body."""
    done = False
    error = ""
    usage = 0
    usage_chunks = 0
    bad = 0
    for event in body.split(b"\n\n"):
        event = event.strip()
        if not event.startswith(b"data:"):
            continue
        data = event[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(payload, dict):
            bad += 1
            continue
        if "error" in payload:
            error = str(payload["error"])
        elif isinstance(payload.get("usage"), dict):
            usage = int(payload["usage"].get("total_tokens") or 0)
            usage_chunks += 1
    if bad:
        kind = "stream: garbage reached the client"
    elif done and not error:
        kind = "stream: complete"
    elif error and not done:
        kind = "stream: error event"
        if not usage_chunks:
            kind = "stream: error event without usage"
    elif error and done:
        kind = "stream: error event and [DONE]"
    else:
        kind = "stream: ended without [DONE] or error"
    return kind, usage, usage_chunks, error


class Client:
    """`concurrency` keep-alive connections sending chat requests until the deadline."""

    def __init__(self, host: str, port: int, key: str, settings: Settings):
        self.host, self.port, self.key = host, port, key
        self.settings = settings
        self.rng = random.Random(settings.seed + 1)
        self.numbers = itertools.count(1)
        self.outcomes: list[Outcome] = []
        self.started = 0.0
        self.run_id = secrets.token_hex(4)

    def now(self) -> float:
        return time.monotonic() - self.started

    def request(self, n: int, stream: bool, idempotent: bool) -> bytes:
        payload: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Chaos request {n}: say hello."}],
            "stream": stream,
        }
        if stream:
            payload["stream_options"] = {"include_usage": True}
        body = orjson.dumps(payload)
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\n"
            f"X-Request-Id: chaos-{n}\r\n"
            + (f"Idempotency-Key: chaos-{self.run_id}-{n}\r\n" if idempotent else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            _, conn = await loop.create_connection(Connection, self.host, self.port)
        return conn

    async def worker(self, deadline: float) -> None:
        s = self.settings
        conn: Connection | None = None
        try:
            while time.monotonic() < deadline:
                n = next(self.numbers)
                stream = self.rng.random() < s.stream_share
                out = Outcome(n, stream, self.now())
                out.idempotent = not stream and self.rng.random() < s.idempotency_share
                self.outcomes.append(out)
                t0 = time.monotonic()
                if conn is None or conn.lost:
                    try:
                        conn = await self.connect()
                    except (OSError, TimeoutError) as exc:
                        out.kind, out.error = "connect error", str(exc)
                        out.duration = time.monotonic() - t0
                        conn = None
                        await asyncio.sleep(0.1)
                        continue
                try:
                    async with asyncio.timeout(s.client_timeout):
                        await conn.send(self.request(n, stream, out.idempotent), None)
                    out.status = conn.status
                except TimeoutError:
                    out.kind = "HUNG"
                    out.status = conn.status
                except ProtocolError as exc:
                    out.kind, out.error, out.status = "connection lost", str(exc), conn.status
                out.duration = time.monotonic() - t0
                self.classify(out, conn)
                if out.kind in ("HUNG", "connection lost"):
                    if conn.transport is not None:
                        conn.transport.close()
                    conn = None
                if out.status != 200:
                    # A real client backs off; without this a down Redis turns the run into
                    # a flood of 503s (each under a millisecond).
                    await asyncio.sleep(0.02)
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.close()

    @staticmethod
    def classify(out: Outcome, conn: Connection) -> None:
        body = bytes(conn.body)
        if out.status == 200 and out.stream:
            kind, out.usage, out.usage_chunks, error = parse_stream(body)
            out.error = out.error or error
            out.kind = out.kind or kind
        elif out.status == 200:
            try:
                payload = orjson.loads(body)
                out.usage = int(payload["usage"]["total_tokens"])
                out.kind = out.kind or "json: ok"
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                out.kind = out.kind or "json: malformed 200 body"
        elif out.status:
            try:
                out.error = out.error or str(orjson.loads(body)["error"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                out.error = out.error or body[:200].decode("utf-8", "replace")
            out.kind = out.kind or f"{out.status}"

    async def run(self, seconds: float) -> None:
        self.started = time.monotonic()
        deadline = self.started + seconds
        await asyncio.gather(*(self.worker(deadline) for _ in range(self.settings.concurrency)))


# -- the run -------------------------------------------------------------------------------


def gateway_config(path: Path) -> None:
    timeouts = ", ".join(f"{k}: {v}" for k, v in TIMEOUTS.items())
    path.write_text(
        f"""# Written by tests/test_chaos.py for one run.
providers:
  openai:
    kind: openai
    base_url: "${{OPENAI_BASE_URL}}"
    api_key: "${{OPENAI_API_KEY}}"
    timeouts: {{{timeouts}}}
models:
  {MODEL}:
    - {{provider: openai, model: {DEPLOYMENTS[0]}}}
    - {{provider: openai, model: {DEPLOYMENTS[1]}}}
tiers:
  free:    {{monthly_tokens: 1000000000000, requests_per_minute: 100000000,
            max_concurrent_requests: 100000000}}
  premium: {{monthly_tokens: null, requests_per_minute: 100000000,
            max_concurrent_requests: 100000000}}
routing: {{deadline_seconds: 10}}
server: {{shutdown_grace_seconds: 0, drain_seconds: 15}}
log_level: INFO
"""
    )


def logged_popen(
    log: Path, env: dict[str, str] | None = None
) -> Callable[[list[str]], subprocess.Popen[bytes]]:
    """A popen that appends the child's output to `log`, in a session of its own."""

    def popen(argv: list[str]) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )

    return popen


class Chaos:
    """Everything one run starts (`start`, `stop`), does (`run`) and saw."""

    def __init__(self, settings: Settings, workdir: Path):
        self.settings = settings
        self.workdir = workdir
        self.faults = Faults(settings.seed, settings.fault_rate, settings.hang, settings.stall)
        self.upstream: TestServer | None = None
        self.redis = RedisServer(
            dir=workdir / "redis-data", durable=True, popen=logged_popen(workdir / "redis.log")
        )
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateway_log = workdir / "gateway.log"
        self.gateway_port = 0
        self.admin_token = secrets.token_urlsafe(24)
        self.account = ""
        self.outage = Outage()
        self.client: Client | None = None
        self.usage: dict[str, Any] = {}
        self.drain_seconds = 0.0
        self.drained = False
        self.notes: list[str] = []

    async def start(self) -> None:
        self.redis.dir.mkdir()
        await asyncio.to_thread(self.redis.start, 30.0)
        record = Record(models=None, keep=False, faults=self.faults)
        self.upstream = TestServer(create_fake_openai(record))
        await self.upstream.start_server()
        config = self.workdir / "gateway.yaml"
        gateway_config(config)
        self.gateway_port = free_port()
        # Our WOOZLIT_* settings (a Redis URL, a config path) must not leak into the run.
        env = {k: v for k, v in os.environ.items() if not k.startswith("WOOZLIT_")}
        env.update(
            PYTHONUNBUFFERED="1",
            OPENAI_BASE_URL=str(self.upstream.make_url("/v1")),
            OPENAI_API_KEY="sk-chaos",
            WOOZLIT_REDIS_URL=self.redis.url,
            WOOZLIT_ADMIN_TOKEN=self.admin_token,
        )
        port = str(self.gateway_port)
        argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config),
                "--host", "127.0.0.1", "--port", port, "--workers", "1"]  # fmt: skip
        self.gateway = logged_popen(self.gateway_log, env)(argv)
        deadline = time.monotonic() + 30
        while "woozlit-proxy: listening on http://" not in self.gateway_log.read_text("utf-8"):
            if self.gateway.poll() is not None or time.monotonic() > deadline:
                tail = self.gateway_log.read_text("utf-8", "replace")[-3000:]
                raise RuntimeError(f"the gateway did not start:\n{tail}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop whatever runs: the gateway first (its drain flushes the access log)."""
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.gateway.wait, 30)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                await asyncio.to_thread(self.gateway.wait, 10)
        if self.upstream is not None:
            await self.upstream.close()
            self.upstream = None
        await asyncio.to_thread(self.redis.stop, 15.0)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.gateway_port}/admin/v1{path}"
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
            async with s.request(method, url, json=body) as r:
                text = await r.text()
                try:
                    return r.status, json.loads(text)
                except ValueError:
                    return r.status, text

    async def create_key(self) -> str:
        status, account = await self.admin("POST", "/accounts", {"tier": "free", "developer": True})
        assert status == 201, f"creating an account: {status} {account}"
        self.account = account["id"]
        status, key = await self.admin("POST", f"/accounts/{self.account}/keys", {"name": "chaos"})
        assert status == 201, f"creating a key: {status} {key}"
        return str(key["key"])

    async def restart_redis(self, client: Client) -> None:
        """SIGTERM in the middle of the load, down for a while, back on the same port/dir."""
        await asyncio.sleep(self.settings.seconds / 2)
        self.outage.down_at = client.now()
        status = await asyncio.to_thread(self.redis.stop, 15.0)
        self.outage.stopped_at = client.now()
        if status not in (0, None):
            self.notes.append(f"redis-server exited with status {status}")
        await asyncio.sleep(self.settings.redis_down)
        await asyncio.to_thread(self.redis.start, 30.0)  # back once it answers PING
        self.outage.up_at = client.now()
        self.outage.restarted = True

    async def drain(self) -> None:
        """Until `used` holds still for settle_quiet seconds (settles retry every second)."""
        start = time.monotonic()
        last: Any = None
        still_since = time.monotonic()
        while time.monotonic() - start < self.settings.settle_wait:
            try:
                status, usage = await self.admin("GET", f"/accounts/{self.account}/usage")
            except Exception as exc:  # the gateway itself may be the problem: keep trying
                status, usage = 0, str(exc)
            if status == 200:
                self.usage = usage
                if usage["used"] != last:
                    last, still_since = usage["used"], time.monotonic()
                elif time.monotonic() - still_since >= self.settings.settle_quiet:
                    self.drained = True
                    break
            await asyncio.sleep(0.25)
        self.drain_seconds = time.monotonic() - start

    async def run(self) -> None:
        s = self.settings
        key = await self.create_key()
        self.client = client = Client("127.0.0.1", self.gateway_port, key, s)
        restart = asyncio.create_task(self.restart_redis(client))
        try:
            await client.run(s.seconds)
            # The restart runs within the load; should it still be going, let it finish.
            async with asyncio.timeout(60):
                await restart
        finally:
            restart.cancel()
        await self.drain()


# -- the report ----------------------------------------------------------------------------


def access_lines(log: Path) -> dict[str, dict[str, Any]]:
    """The gateway's access lines of chat requests, by the client's X-Request-Id."""
    out: dict[str, dict[str, Any]] = {}
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.startswith("{") or '"request_id"' not in line:
            continue
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        rid = fields.get("x_request_id")
        if isinstance(rid, str) and rid.startswith("chaos-"):
            out[rid] = fields
    return out


def gateway_errors(log: Path) -> Counter[str]:
    """The gateway's error and warning lines (stderr, JSON), by message pattern."""
    counts: Counter[str] = Counter()
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return counts
    for line in text.splitlines():
        if '"level"' not in line:
            continue
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        if fields.get("level") in ("error", "warning", "critical"):
            msg = str(fields.get("msg", ""))
            words = [w if not w.startswith("woozlit-") else "<id>" for w in msg.split()]
            counts[f"{fields['level']}: {' '.join(words)[:110]}"] += 1
    return counts


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q / 100 * len(ordered) + 0.5) - 1))]


def report(chaos: Chaos) -> tuple[str, list[tuple[str, bool, str]]]:
    """The report's text, and the checks: (name, passed, detail)."""
    s = chaos.settings
    outcomes = chaos.client.outcomes if chaos.client else []
    lines: list[str] = []
    say = lines.append

    say(
        f"chaos: {s.seconds:g} s of load, {s.concurrency} connections, seed {s.seed}, "
        f"fault rate {s.fault_rate:g} per upstream attempt, {s.stream_share:.0%} streams"
    )
    say(
        f"gateway: timeouts {TIMEOUTS}, routing deadline 10 s, 2 deployments "
        f"({', '.join(DEPLOYMENTS)}) on the same fake upstream"
    )
    streams = sum(o.stream for o in outcomes)
    idem = sum(o.idempotent for o in outcomes)
    say(
        f"\nrequests: {len(outcomes)} ({streams} streams, {len(outcomes) - streams} non-stream, "
        f"{idem} of them with an Idempotency-Key)"
    )

    statuses = Counter(o.status for o in outcomes)
    say("status    count   p50 ms   p99 ms   max ms")
    for status in sorted(statuses):
        durations = [o.duration * 1000 for o in outcomes if o.status == status]
        label = str(status) if status else "none"
        say(
            f"{label:<6} {statuses[status]:>8} {pct(durations, 50):>8.1f} "
            f"{pct(durations, 99):>8.1f} {max(durations):>8.1f}"
        )
    kinds = Counter(o.kind for o in outcomes)
    say("\noutcomes:")
    for kind, count in kinds.most_common():
        say(f"  {count:>7}  {kind}")
    errors = Counter(
        f"{o.status or '-'} {o.error[:90]}" for o in outcomes if o.error and o.status != 200
    )
    stream_errors = Counter(o.error[:90] for o in outcomes if o.status == 200 and o.error)
    if errors:
        say("error answers (status, message):")
        for text, count in errors.most_common(10):
            say(f"  {count:>7}  {text}")
    if stream_errors:
        say("error events at the end of 200 streams:")
        for text, count in stream_errors.most_common(10):
            say(f"  {count:>7}  {text}")
    double = sum(o.usage_chunks > 1 for o in outcomes)
    if double:
        say(
            f"streams with two usage chunks (the upstream's, then the gateway's before the "
            f"error event; counted once): {double}"
        )

    faults = chaos.faults.counts
    say("\nupstream attempts by fault (what the fake chose, per attempt of the gateway):")
    for name in ("ok", *FAULTS):
        st, js = faults.get(f"{name} stream", 0), faults.get(f"{name} json", 0)
        say(f"  {name:<10} {st + js:>7}  (stream {st}, non-stream {js})")
    say(f"  {'total':<10} {sum(faults.values()):>7}")

    o = chaos.outage
    say("\nredis restart:")
    if o.restarted:
        # From the old server's exit to the new one's first PONG.
        during = [x for x in outcomes if o.stopped_at <= x.start < o.up_at]
        fast = [
            x.duration * 1000 for x in during if x.status == 503 and "accounting store" in x.error
        ]
        say(
            f"  SIGTERM at {o.down_at:.1f} s, exited at {o.stopped_at:.1f} s, "
            f"accepting again at {o.up_at:.1f} s (data dir kept, AOF fsync always)"
        )
        say(
            f"  requests started while it was down: {len(during)}, statuses "
            f"{dict(sorted(Counter(x.status for x in during).items()))}"
        )
        if fast:
            say(
                f"  their 503s for the store being down ({len(fast)}): p50 {pct(fast, 50):.1f} ms, "
                f"max {max(fast):.1f} ms"
            )
    else:
        say("  did not happen (the run ended first, or restarting failed)")

    access = access_lines(chaos.gateway_log)
    used = chaos.usage.get("used")
    clients = sum(x.usage for x in outcomes)
    logged = sum(
        int(f.get("prompt_tokens") or 0) + int(f.get("completion_tokens") or 0)
        for f in access.values()
    )
    say("\nusage:")
    say(
        f"  used (admin API, after {chaos.drain_seconds:.1f} s of draining"
        f"{'' if chaos.drained else ', NOT settled'}): {used}"
    )
    say(f"  sum of usage the clients were told:                 {clients}")
    say(f"  sum of tokens in the gateway's access log:          {logged}")
    if isinstance(used, int):
        say(f"  used - clients' sum: {used - clients:+d}; used - access log: {used - logged:+d}")
    say(
        f"  held after the run: {chaos.usage.get('held')}; "
        f"requests counted: {chaos.usage.get('requests')}"
    )
    missing = [x for x in outcomes if x.status and f"chaos-{x.n}" not in access]
    if missing:
        say(f"  requests with an HTTP status but no access line: {len(missing)}")
    mismatched = []
    for x in outcomes:
        f = access.get(f"chaos-{x.n}")
        tokens = int(f.get("prompt_tokens") or 0) + int(f.get("completion_tokens") or 0) if f else 0
        if tokens != x.usage:
            mismatched.append((x, f, tokens))
    if mismatched:
        say(f"  requests where the access log's tokens differ from the client's: {len(mismatched)}")
        by = Counter(
            (
                x.status,
                x.kind,
                " with Idempotency-Key" if x.idempotent else "",
                (f or {}).get("status"),
                "usage>0" if x.usage else "usage=0",
            )
            for x, f, _ in mismatched
        )
        for (status, kind, idem_key, logged_status, has), count in by.most_common(10):
            say(
                f"    {count:>6}  client {status or '-'} {kind}{idem_key} ({has}); "
                f"access log status {logged_status}"
            )
        gap = sum(t - x.usage for x, _, t in mismatched)
        say(f"    gap (access log - client) over them: {gap:+d}")
        for x, f, _ in mismatched[:8]:
            line = {k: (f or {}).get(k) for k in ("status", "prompt_tokens", "completion_tokens")}
            line.update({k: (f or {}).get(k) for k in ("deployment", "duration_ms", "ttft_ms")})
            say(
                f"    chaos-{x.n}{' (Idempotency-Key)' if x.idempotent else ''}: "
                f"client status {x.status or '-'} {x.kind!r} usage {x.usage} "
                f"at {x.start:.2f} s +{x.duration:.2f} s {x.error[:60]!r}; access {line}"
            )

    errs = gateway_errors(chaos.gateway_log)
    if errs:
        say("\ngateway warnings and errors (stderr):")
        for text, count in errs.most_common(8):
            say(f"  {count:>7}  {text}")
    for note in chaos.notes:
        say(f"note: {note}")

    fives = statuses.get(500, 0)
    hung = kinds.get("HUNG", 0)
    never = [n for n in FAULTS if not faults.get(f"{n} stream", 0) + faults.get(f"{n} json", 0)]
    checks = [
        ("zero 500s", fives == 0, f"{fives} answered 500"),
        ("zero hung requests", hung == 0, f"{hung} took longer than {s.client_timeout:g} s"),
        (
            "used == sum of the usage the clients received",
            chaos.drained and used == clients,
            f"used {used}, clients {clients}"
            + ("" if chaos.drained else ", settles did not drain"),
        ),
        ("redis restarted under load", o.restarted, f"back at {o.up_at:.1f} s"),
        (
            "every fault injected",
            s.fault_rate == 0 or not never,
            f"never: {', '.join(never)}" if never else f"{len(FAULTS)} kinds",
        ),
    ]
    say("")
    for name, ok, detail in checks:
        say(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    for name in (
        "connection lost",
        "connect error",
        "stream: ended without [DONE] or error",
        "stream: error event without usage",
        "stream: garbage reached the client",
        "json: malformed 200 body",
    ):
        if kinds.get(name, 0):
            say(f"WARN  {kinds[name]} requests: {name}")
    return "\n".join(lines), checks


# -- the test ------------------------------------------------------------------------------


@pytest.fixture
async def chaos(tmp_path: Path) -> AsyncIterator[Chaos]:
    run = Chaos(Settings.from_environ(), tmp_path)
    try:
        await run.start()
        yield run
    finally:
        await run.stop()


@pytest.mark.slow
async def test_chaos(chaos: Chaos) -> None:
    """Faults at random upstream and a Redis restart under load: zero 500s, zero hung
    requests, and `used` equal to the usage the clients were told."""
    s = chaos.settings
    async with asyncio.timeout(s.seconds + s.settle_wait + 180):
        await chaos.run()
    await chaos.stop()  # the access log is complete once the gateway has drained
    if chaos.client is not None:  # what the client saw, request by request
        lines = b"".join(orjson.dumps(x) + b"\n" for x in chaos.client.outcomes)
        (chaos.workdir / "outcomes.jsonl").write_bytes(lines)
    text, checks = report(chaos)
    (chaos.workdir / "report.txt").write_text(text + "\n")
    print(text)
    failed = [f"{name}: {detail}" for name, ok, detail in checks if not ok]
    assert not failed, (
        f"chaos run, seed {s.seed} (WOOZLIT_CHAOS_SEED): " + "; ".join(failed)
        + f"\nlogs, Redis data, outcomes.jsonl and report.txt in {chaos.workdir}\n\n{text}"
    )  # fmt: skip
