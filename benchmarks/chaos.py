"""Chaos run: load on the gateway while its upstream misbehaves and Redis is restarted.

    python benchmarks/chaos.py                    # 60 s, 16 connections
    python benchmarks/chaos.py --seconds 20 --concurrency 8 --seed 7

The chaos target's done-when: "a 60-second chaos run (load from the benchmark script while the fake
upstream injects each fault at random and Redis is restarted once) ends with zero 500s, zero
hung requests, and a month's `used` equal to the sum of the usage the clients received."

What it starts, all on loopback, all stopped at the end whatever happens:

- a redis-server on a free port with an append-only file fsynced at every write, in a
  temporary directory, so that a restart keeps every account, hold and charge;
- a fault-injecting fake OpenAI-compatible upstream (this file run with `--serve-upstream`):
  every request picks at random a normal answer or one fault (`FAULTS`), stream or not, and
  an answer that completes always reports its real usage (random token counts);
- the gateway, `python -m proxy serve --workers 1`, with a config written to a temporary
  file: the model has two deployments on that upstream (so failures fall back), timeouts of
  1 s to connect, 2 s to the first byte and 1 s between chunks, a routing deadline of 10 s,
  and a free tier whose monthly limit no run reaches (quota holds are taken and released).

Then it creates a free developer account and a key through the admin API, drives
`--concurrency` keep-alive connections for `--seconds` (benchmarks/loadgen.py's HTTP client;
half streams asking for `stream_options.include_usage`, half non-stream, a quarter of
those with a unique `Idempotency-Key`: `--idempotency-share`), each request under a
client timeout (`--client-timeout`, 30 s: longer counts as HUNG), and restarts Redis once in
the middle (SIGTERM, `--redis-down` seconds, started again on the same port and directory).
Every request carries `X-Request-Id: chaos-N`, so that the gateway's access log (JSON lines
on its stdout) can be joined with what the client saw.

The client's usage: the `usage.total_tokens` of a 200 non-stream answer; for a stream, the
last usage chunk it received (the gateway sends one before the error event of a stream cut
after it started; the upstream's own usage chunk may come first, and the later one repeats
it). Anything else carries no usage: an error before the first byte is charged nothing.

At the end it waits for the gateway's settles to drain (the admin usage endpoint until
`used` holds still for `--settle-quiet` seconds, within `--settle-wait`), stops the
gateway, and prints: statuses, outcomes of streams, faults injected, the Redis outage and
what requests saw during it, and `used` against the clients' sum and the access log's sum,
with the requests where they disagree. PASS needs zero 500s, zero hung requests and `used`
equal to the clients' sum; the exit status is 1 otherwise. The children's logs are kept in
`benchmarks/results/chaos-logs-*` on FAIL (or with `--keep-logs`).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import itertools
import json
import random
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HERE, Harness, Proc, free_port, redis_server, run_main
from loadgen import Connection, ProtocolError

MODEL = "woozlit/gpt-4o-mini"
DEPLOYMENTS = ("chaos-primary", "chaos-fallback")  # upstream model names, same fake
FAULTS = (
    "reset",  # connection reset (RST) before any header
    "hang",  # no header for longer than the gateway's first_byte timeout
    "stall",  # a pause longer than idle in the middle of the body (stream or not)
    "429",  # rate-limited, with Retry-After
    "500",  # server error
    "529",  # overloaded (Anthropic's status, also seen behind some OpenAI-compatible hosts)
    "garbage",  # a line that is not JSON in the middle of the stream (non-stream: the body)
    "truncated",  # the body ends early: a stream without [DONE] (cleanly or by a reset)
)
TIMEOUTS = {"connect": 1, "first_byte": 2, "idle": 1}
WORDS = ["Hello", " there", "!", " How", " can", " I", " help", " you", " today", "?"]


# -- the fake upstream (a child process: this file with --serve-upstream) ------------------


def _rst(request: Any) -> None:
    """Close the client's connection with a TCP reset, not a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _error_body(status: int) -> bytes:
    if status == 529:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return orjson.dumps({"type": "error", "error": error})
    kind = "rate_limit_error" if status == 429 else "server_error"
    return orjson.dumps({"error": {"message": f"Injected {status}.", "type": kind}})


class FaultyUpstream:
    """An OpenAI-compatible /v1/chat/completions where every request may fail at random."""

    def __init__(self, seed: int, fault_rate: float, hang: float, stall: float):
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.hang = hang
        self.stall = stall
        self.counts: Counter[str] = Counter()

    def pick(self) -> str:
        if self.rng.random() >= self.fault_rate:
            return "ok"
        return self.rng.choice(FAULTS)

    async def stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(dict(self.counts))

    async def completions(self, request: Any) -> Any:
        from aiohttp import web

        body = orjson.loads(await request.read())
        stream = bool(body.get("stream"))
        model = str(body.get("model"))
        fault = self.pick()
        self.counts[f"{fault} {'stream' if stream else 'json'}"] += 1
        rng = self.rng
        pieces = [rng.choice(WORDS) for _ in range(rng.randint(2, 12))]
        prompt_tokens = rng.randint(8, 64)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }

        if fault == "reset":
            _rst(request)
            return web.Response()  # goes nowhere: the connection is gone
        if fault == "hang":
            await asyncio.sleep(self.hang)  # the gateway gave up long ago
        if fault in ("429", "500", "529"):
            status = int(fault)
            headers = {"Retry-After": "1"} if status == 429 else {}
            return web.Response(
                status=status,
                body=_error_body(status),
                content_type="application/json",
                headers=headers,
            )

        if not stream:
            answer = orjson.dumps(
                {
                    "id": "chatcmpl-chaos",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(pieces)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
            if fault == "garbage":
                garbage = rng.choice([answer[: len(answer) // 2], b"<html>Bad Gateway</html>"])
                return web.Response(body=garbage, content_type="application/json")
            if fault in ("stall", "truncated"):
                resp = web.StreamResponse(headers={"Content-Type": "application/json"})
                resp.content_length = len(answer)
                await resp.prepare(request)
                cut = rng.randint(1, len(answer) - 1)
                await resp.write(answer[:cut])
                if fault == "truncated":
                    _rst(request)
                    return resp
                await asyncio.sleep(self.stall)
                await resp.write(answer[cut:])
                await resp.write_eof()
                return resp
            return web.Response(body=answer, content_type="application/json")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {
                "id": "chatcmpl-chaos",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(data) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in pieces]
        events.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            data = {
                "id": "chatcmpl-chaos",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            events.append(b"data: " + orjson.dumps(data) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        # Where the fault strikes: after `at` events (0: before any; len-1: all but [DONE]).
        at = rng.randint(0, len(events) - 1)

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, event in enumerate(events):
                if i == at:
                    if fault == "stall":
                        await asyncio.sleep(self.stall)
                    elif fault == "garbage":
                        await resp.write(
                            rng.choice(
                                [
                                    b'data: {"choices": [{"delta": {"content": "x"\n\n',
                                    b"data: \xff\xfe not json at all\n\n",
                                    b"data: [1, 2, 3]\n\n",
                                ]
                            )
                        )
                    elif fault == "truncated":
                        if rng.random() < 0.5:
                            await resp.write_eof()  # a clean end, without [DONE]
                        else:
                            _rst(request)
                        return resp
                await resp.write(event)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the gateway went away (it gave up on a stall, or saw garbage)
        return resp


def serve_upstream(args: argparse.Namespace) -> None:
    from aiohttp import web

    fake = FaultyUpstream(args.seed, args.fault_rate, args.hang, args.stall)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.completions)
    app.router.add_get("/stats", fake.stats)
    print(f"chaos upstream: listening on http://127.0.0.1:{args.port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


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

    def __init__(self, host: str, port: int, key: str, args: argparse.Namespace):
        self.host, self.port, self.key = host, port, key
        self.args = args
        self.rng = random.Random(args.seed + 1)
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
        conn: Connection | None = None
        try:
            while time.monotonic() < deadline:
                n = next(self.numbers)
                stream = self.rng.random() < self.args.stream_share
                out = Outcome(n, stream, self.now())
                out.idempotent = not stream and self.rng.random() < self.args.idempotency_share
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
                    async with asyncio.timeout(self.args.client_timeout):
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
        await asyncio.gather(*(self.worker(deadline) for _ in range(self.args.concurrency)))


# -- the run -------------------------------------------------------------------------------


def gateway_config(path: Path) -> None:
    timeouts = ", ".join(f"{k}: {v}" for k, v in TIMEOUTS.items())
    path.write_text(
        f"""# Written by benchmarks/chaos.py for one run.
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


class Chaos:
    def __init__(self, args: argparse.Namespace, harness: Harness, workdir: Path):
        self.args = args
        self.harness = harness
        self.workdir = workdir
        self.redis_dir = workdir / "redis-data"
        self.redis_dir.mkdir()
        self.redis_port = free_port()
        self.redis: Proc | None = None
        self.gateway: Proc | None = None
        self.upstream_port = 0
        self.gateway_port = 0
        self.admin_token = secrets.token_urlsafe(24)
        self.account = ""
        self.outage = Outage()
        self.client: Client | None = None
        self.usage: dict[str, Any] = {}
        self.drain_seconds = 0.0
        self.drained = False
        self.faults: dict[str, int] = {}
        self.notes: list[str] = []

    # -- processes ---------------------------------------------------------------------

    def start_redis(self, name: str) -> Proc:
        proc = self.spawn_redis(name)
        self.harness.ready(proc, r"Ready to accept connections")
        return proc

    def spawn_redis(self, name: str) -> Proc:
        return self.harness.spawn(
            name,
            [
                redis_server(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.redis_dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        )

    def start(self) -> None:
        a = self.args
        self.redis = self.start_redis("redis")
        self.upstream_port = free_port()
        upstream = self.harness.spawn(
            "upstream",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-upstream",
                "--port",
                str(self.upstream_port),
                "--seed",
                str(a.seed),
                "--fault-rate",
                str(a.fault_rate),
                "--hang",
                str(a.hang),
                "--stall",
                str(a.stall),
            ],
        )
        self.harness.ready(upstream, r"listening on http://")
        config = self.workdir / "gateway.yaml"
        gateway_config(config)
        env = {
            "WOOZLIT_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "WOOZLIT_ADMIN_TOKEN": self.admin_token,
        }
        self.gateway, self.gateway_port, _ = self.harness.start_gateway(
            self.upstream_port, config, env, 1, expect_key=False
        )

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import aiohttp

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
        if status != 201:
            raise RuntimeError(f"creating an account: {status} {account}")
        self.account = account["id"]
        status, key = await self.admin("POST", f"/accounts/{self.account}/keys", {"name": "chaos"})
        if status != 201:
            raise RuntimeError(f"creating a key: {status} {key}")
        return key["key"]

    async def restart_redis(self, client: Client) -> None:
        """SIGTERM in the middle of the load, down for a while, back on the same port/dir."""
        await asyncio.sleep(self.args.seconds / 2)
        assert self.redis is not None
        old = self.redis
        self.outage.down_at = client.now()
        await asyncio.to_thread(old.stop, 15.0)
        self.outage.stopped_at = client.now()
        if old.popen.returncode not in (0, None):
            self.notes.append(f"redis-server exited with status {old.popen.returncode}")
        await asyncio.sleep(self.args.redis_down)
        self.redis = new = self.spawn_redis("redis-restarted")
        # PING every 5 ms: the moment it serves (not LOADING), sharper than its log's poll.
        async with asyncio.timeout(30):
            while not await self.redis_serves():
                if new.popen.poll() is not None:
                    raise RuntimeError(f"redis-server did not restart:\n{new.tail()}")
                await asyncio.sleep(0.005)
        self.outage.up_at = client.now()
        self.outage.restarted = True

    async def redis_serves(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            async with asyncio.timeout(1):
                return (await reader.readline()).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def drain(self) -> None:
        """Until `used` holds still for --settle-quiet seconds (settles retry every second)."""
        start = time.monotonic()
        last: Any = None
        still_since = time.monotonic()
        while time.monotonic() - start < self.args.settle_wait:
            try:
                status, usage = await self.admin("GET", f"/accounts/{self.account}/usage")
            except Exception as exc:  # the gateway itself may be the problem: keep trying
                status, usage = 0, str(exc)
            if status == 200:
                self.usage = usage
                if usage["used"] != last:
                    last, still_since = usage["used"], time.monotonic()
                elif time.monotonic() - still_since >= self.args.settle_quiet:
                    self.drained = True
                    break
            await asyncio.sleep(0.25)
        self.drain_seconds = time.monotonic() - start

    async def upstream_stats(self) -> None:
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(f"http://127.0.0.1:{self.upstream_port}/stats") as r:
                    self.faults = await r.json()
        except Exception as exc:
            self.notes.append(f"could not read the upstream's fault counts: {exc}")

    async def run(self) -> None:
        a = self.args
        await asyncio.to_thread(self.start)
        key = await self.create_key()
        self.client = client = Client("127.0.0.1", self.gateway_port, key, a)
        restart = asyncio.create_task(self.restart_redis(client))
        try:
            await client.run(a.seconds)
            # The restart runs within the load; should it still be going, let it finish.
            async with asyncio.timeout(60):
                await restart
        finally:
            restart.cancel()
        await self.drain()
        await self.upstream_stats()

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop(grace=30.0)  # drain: its access log is flushed on the way out


# -- the report ----------------------------------------------------------------------------


def access_lines(log: Path) -> dict[str, dict[str, Any]]:
    """The gateway's access lines of chat requests, by the client's X-Request-Id."""
    out = {}
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


def report(chaos: Chaos, gateway_log: Path) -> tuple[str, bool]:
    a = chaos.args
    client = chaos.client
    outcomes = client.outcomes if client else []
    lines: list[str] = []
    say = lines.append

    say(
        f"chaos: {a.seconds:g} s of load, {a.concurrency} connections, seed {a.seed}, "
        f"fault rate {a.fault_rate:g} per upstream attempt, {a.stream_share:.0%} streams"
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

    if chaos.faults:
        say("\nupstream attempts by fault (what the fake chose, per attempt of the gateway):")
        total = sum(chaos.faults.values())
        for name in ("ok", *FAULTS):
            s, j = chaos.faults.get(f"{name} stream", 0), chaos.faults.get(f"{name} json", 0)
            say(f"  {name:<10} {s + j:>7}  (stream {s}, non-stream {j})")
        say(f"  {'total':<10} {total:>7}")

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

    access = access_lines(gateway_log)
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

    errs = gateway_errors(gateway_log)
    if errs:
        say("\ngateway warnings and errors (stderr):")
        for text, count in errs.most_common(8):
            say(f"  {count:>7}  {text}")
    for note in chaos.notes:
        say(f"note: {note}")

    fives = statuses.get(500, 0)
    hung = kinds.get("HUNG", 0)
    checks = [
        ("zero 500s", fives == 0, f"{fives} answered 500"),
        (
            "zero hung requests",
            hung == 0,
            f"{hung} took longer than {a.client_timeout:g} s",
        ),
        (
            "used == sum of the usage the clients received",
            chaos.drained and used == clients,
            f"used {used}, clients {clients}"
            + ("" if chaos.drained else ", settles did not drain"),
        ),
    ]
    say("")
    for name, ok, detail in checks:
        say(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    extra = {
        "connection lost": kinds.get("connection lost", 0),
        "connect error": kinds.get("connect error", 0),
        "stream: ended without [DONE] or error": kinds.get(
            "stream: ended without [DONE] or error", 0
        ),
        "stream: error event without usage": kinds.get("stream: error event without usage", 0),
        "stream: garbage reached the client": kinds.get("stream: garbage reached the client", 0),
        "json: malformed 200 body": kinds.get("json: malformed 200 body", 0),
    }
    for name, count in extra.items():
        if count:
            say(f"WARN  {count} requests: {name}")
    ok = all(ok for _, ok, _ in checks)
    say(f"\nchaos: {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines), ok


async def amain(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = HERE / "results"
    with tempfile.TemporaryDirectory(prefix="woozlit-chaos-") as tmp:
        workdir = Path(tmp)
        harness = Harness(workdir, None, None)
        atexit.register(harness.stop_all)  # should the loop die without running `finally`
        chaos = Chaos(args, harness, workdir)
        ok = False
        text = ""
        try:
            async with asyncio.timeout(args.seconds + args.settle_wait + 180):
                await chaos.run()
            await asyncio.to_thread(chaos.stop_gateway)
            text, ok = report(chaos, workdir / "gateway.log")
            if chaos.client is not None:  # what the client saw, request by request
                lines = b"".join(orjson.dumps(x) + b"\n" for x in chaos.client.outcomes)
                (workdir / "outcomes.jsonl").write_bytes(lines)
        except (RuntimeError, TimeoutError) as exc:
            print(f"chaos: {exc or 'the run took too long'}", file=sys.stderr)
        finally:
            harness.stop_all()
            if text:
                print(text)
            if not ok or args.keep_logs:
                shutil.copytree(tmp, results / f"chaos-logs-{stamp}", dirs_exist_ok=True)
                print(f"chaos: logs kept in {results / f'chaos-logs-{stamp}'}", file=sys.stderr)
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--concurrency", type=int, default=16, help="connections (default 16)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.5,
        help="share of upstream attempts that get a fault, spread evenly (default 0.5)",
    )
    p.add_argument("--stream-share", type=float, default=0.5, help="share of streams (default 0.5)")
    p.add_argument(
        "--idempotency-share",
        type=float,
        default=0.25,
        help="share of non-stream requests sent with a unique Idempotency-Key (default 0.25)",
    )
    p.add_argument(
        "--client-timeout",
        type=float,
        default=30.0,
        help="a request taking longer counts as HUNG (default 30)",
    )
    p.add_argument(
        "--redis-down", type=float, default=3.0, help="seconds Redis stays down (default 3)"
    )
    p.add_argument(
        "--hang",
        type=float,
        default=TIMEOUTS["first_byte"] + 1.5,
        help="seconds the upstream hangs before headers",
    )
    p.add_argument(
        "--stall",
        type=float,
        default=TIMEOUTS["idle"] + 1.0,
        help="seconds the upstream stalls mid-body",
    )
    p.add_argument("--settle-quiet", type=float, default=3.0)
    p.add_argument("--settle-wait", type=float, default=60.0)
    p.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    p.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.seed is None:
        a.seed = random.randrange(1 << 31)
    return a


def main() -> None:
    args = parse_args()
    if args.serve_upstream:
        serve_upstream(args)
        return

    run_main(amain(args), "chaos")


if __name__ == "__main__":
    main()
