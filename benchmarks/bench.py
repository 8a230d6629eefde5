"""Benchmark the gateway against the bare-passthrough floor, in one run.

    python benchmarks/bench.py             # the full run, about 2-3 minutes
    python benchmarks/bench.py --quick     # 30-40 s, before a change lands
    python benchmarks/bench.py --redis     # the gateway on a real redis-server on loopback
    python benchmarks/bench.py --memory    # also RSS after 10k and 100k requests
    python benchmarks/bench.py --quick --redis --unread-streams 64  # + RSS per unread stream

Theory of operation. Three targets answer the same requests: the fake upstream hit directly
(`direct`), a bare aiohttp passthrough in front of it (`bare`, the floor for any aiohttp
proxy) and the gateway in front of it (`gateway`). Each phase (non-stream throughput,
concurrency-1 latency, 20-chunk streams, paced streams) runs against every target in turn,
in `--rounds` short rounds whose target order rotates, so that the noise of a shared machine
falls on all targets alike. Every figure is printed with the ratio gateway/bare.

The client protocols (`--protocols`, all by default): the non-stream, stream and paced
phases again in Anthropic's Messages API (`POST /v1/messages`, the gateway's Claude
deployment) and OpenAI's Responses API (`POST /v1/responses`, its OpenAI deployment with
`responses_api`), both served natively. The phases of one kind form a group that each
target runs back to back (`Phase.group`), and the report gives each protocol's throughput
as a ratio to chat completions' and its paced p99 minus theirs, per target.

`--anthropic-paced` adds the paced streams through the gateway's Anthropic provider (the
same fake upstream speaking Anthropic's Messages API). Neither `direct` nor `bare` can turn
Anthropic's events into OpenAI's, so that phase measures the gateway only, right after its
OpenAI paced streams in the same round, and the report compares the two.

`--unread-streams N` adds, after every phase (and after --memory), the gateway's memory per
stream whose client never reads (unread.py): N such streams for `--unread-seconds`, from an
upstream as fast as the gateway takes it and from one paced at 1,000 events/s, then the same
N streams read, each case against a gateway started for it alone. It is not a `Phase`: those
drive the load generator against every target in rotating rounds, and this needs clients
that never read, the gateway only, and a fresh gateway per case (as --memory, a step of its
own).

Pinning (2 cores): the measured process (bare or gateway, or the upstream itself for
`direct`) runs alone on cpu 0; the load generator, the fake upstream and redis share cpu 1.
The load generator and upstream are cheap (see loadgen.py); the harness table printed after
the results shows, per phase, how busy each side was, so a reader can tell a measurement
bound by the target (target near 100%) from one bound by the harness. With more cores the
target gets `--workers` cores and the harness the rest; `--no-pin` leaves it to the kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checks import check_protocol
from harness import HERE, ROOT, Harness, Proc, core_times, open_fds, run_main, time_wait_sockets
from loadgen import (
    ANTHROPIC_MODEL,
    ANTHROPIC_PACED_MODEL,
    CHAT,
    CHURN_STREAMS,
    MODEL,
    OPEN_MODEL,
    OPEN_MS,
    PACED_MODEL,
    PACED_MS,
    PROTOCOLS,
    T_IN_CONTENT,
    LoadResult,
    Target,
    body,
    run_load,
)
from report import as_json, report
from unread import CASES, CLIENT_READ_TIMEOUT, CaseResult, measure_case

OPEN_TIME_WAIT_MAX = 2000  # see Bench.wait_connections_gone
OPEN_FDS_MAX = 1000
OPEN_RAMP = 10.0  # seconds over which --open-streams opens its connections (1,000 a second)


@dataclass(frozen=True)
class Phase:
    """One kind of measurement: what to send, how many connections, for how long."""

    name: str
    kind: str  # "json", "stream", "paced"
    concurrency: int
    seconds: float  # per target, over all rounds; with `requests`, how long they should take
    stagger: float = 0.0  # seconds between the starts of two connections
    model: str = MODEL
    requests: int | None = None  # send exactly this many, in the first round only
    sample_rss: bool = False  # record the target's peak RSS while it runs
    delay_window: tuple[float, float] | None = None  # see loadgen.run_load
    all_open: bool = False  # see loadgen.run_load
    targets: tuple[str, ...] | None = None  # measure only these (None: every target)
    protocol: str = "chat"  # loadgen.PROTOCOLS: the client protocol spoken
    # Phases of one group (consecutive in Bench.phases) run back to back on each target, so
    # that figures compared with each other are measured close in time ("": its own).
    group: str = ""


@dataclass
class Subject:
    """A target as the benchmark sees it: where to send, and which process is measured."""

    name: str
    target: Target
    proc: Proc
    failed: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # protocol -> its failed check


@dataclass
class Usage:
    """CPU ticks spent during a phase, summed over its rounds."""

    wall: float = 0.0
    target: int = 0
    upstream: int = 0
    redis: int = 0
    loadgen: float = 0.0  # seconds
    cores: dict[int, list[int]] = field(default_factory=dict)  # cpu -> [busy, steal, total]


@dataclass
class Measured:
    load: LoadResult = field(default_factory=LoadResult)
    usage: Usage = field(default_factory=Usage)
    peak_rss_kib: int = 0


def speed_gauge() -> float:
    """Milliseconds for a fixed piece of Python work (best of 5): how fast the machine is now.

    On this shared host the same code ran 30-40% slower at times with little visible steal;
    this number lets runs be compared.
    """
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 64}] * 4}
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for i in range(20_000):
            data = orjson.loads(orjson.dumps(payload))
            data["n"] = str(i)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def git_commit() -> str:
    """The gateway's commit, marked when the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "proxy"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes in proxy/" if dirty else head


async def create_key(port: int, admin_token: str) -> str:
    """A premium developer account and a key for it, through the gateway's admin API."""
    base = f"http://127.0.0.1:{port}/admin/v1"
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(f"{base}/accounts", json={"tier": "premium", "developer": True}) as r:
            if r.status != 201:
                raise RuntimeError(f"creating an account: {r.status} {await r.text()}")
            account = (await r.json())["id"]
        async with s.post(f"{base}/accounts/{account}/keys", json={"name": "bench"}) as r:
            if r.status != 201:
                raise RuntimeError(f"creating a key: {r.status} {await r.text()}")
            return (await r.json())["key"]


class Bench:
    """One run: starts the targets, measures them phase by phase, keeps the results."""

    def __init__(self, args: argparse.Namespace, harness: Harness):
        self.args = args
        self.harness = harness
        self.upstream: Proc | None = None
        self.redis: Proc | None = None
        self.subjects: list[Subject] = []
        self.results: dict[str, dict[str, Measured]] = {}
        self.rss: dict[str, dict[str, int]] = {}
        self.memory: dict[str, list[tuple[int, int]]] = {}  # target -> [(requests, RSS KiB)]
        self.memory_checkpoint = min(10_000, args.memory_requests)
        self.notes: list[str] = []
        self.background = ""  # how busy the machine was before we started
        self.quiet_waited = 0.0
        self.quiet_gave_up = 0
        self.commit = git_commit()
        self.gauge: list[float] = []
        self.up_port = 0
        self.gateway_env: dict[str, str] = {}  # with --redis: its URL and the admin token
        self.gateway_key: str | None = None  # with --redis: the key every gateway uses
        self.unread: dict[str, CaseResult] = {}  # --unread-streams: case -> what it saw
        self.unread_failed = False  # a stream of --unread-streams: not 200, or cut

    # -- setup ---------------------------------------------------------------------------

    async def start(self) -> None:
        a, h = self.args, self.harness
        self.upstream, up_port = h.start_upstream(a.chunks)
        self.up_port = up_port
        if not a.gateway_only:
            self.subjects.append(
                Subject("direct", Target("direct", "127.0.0.1", up_port), self.upstream)
            )
            bare, port = h.start_bare(up_port)
            self.subjects.append(Subject("bare", Target("bare", "127.0.0.1", port), bare))
        if not a.skip_gateway:
            self.subjects.append(await self.start_gateway(up_port))

    async def start_gateway(self, up_port: int, name: str = "gateway") -> Subject:
        """A gateway on the fake upstream (`name`: its log's; more than one may run). With
        --redis, the first starts redis-server and creates the key every later one uses."""
        a, h = self.args, self.harness
        config = a.config
        if a.redis and self.redis is None:
            self.redis, redis_port = h.start_redis()
            self.gateway_env = {
                "WOOZLIT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "WOOZLIT_ADMIN_TOKEN": secrets.token_urlsafe(24),
            }
        launcher = HERE / "gateway_without_accounting.py" if a.no_accounting else None
        proc, port, key = h.start_gateway(
            up_port,
            config,
            self.gateway_env,
            a.workers,
            expect_key=not a.redis,
            launcher=launcher,
            name=name,
        )
        if a.redis:
            if self.gateway_key is None:
                admin_token = self.gateway_env["WOOZLIT_ADMIN_TOKEN"]
                self.gateway_key = await create_key(port, admin_token)
            key = self.gateway_key
        assert key is not None
        return Subject("gateway", Target("gateway", "127.0.0.1", port, key), proc)

    async def check(self, subject: Subject) -> None:
        """One request of each kind, checked in full, before any load (aiohttp client). A
        target that fails the check of the Messages or Responses API is left out of that
        protocol's phases only (`Subject.refused`, printed under the table)."""
        t = subject.target
        url = f"http://{t.host}:{t.port}{CHAT.path}"
        headers = {"Content-Type": "application/json", **CHAT.auth(t.key)}
        async with aiohttp.ClientSession() as s:
            async with s.post(url, data=body(MODEL, False), headers=headers) as r:
                text = await r.text()
                if r.status != 200 or "choices" not in orjson.loads(text):
                    raise RuntimeError(f"non-stream request: {r.status} {text[:300]}")
            async with s.post(url, data=body(PACED_MODEL, True), headers=headers) as r:
                text = await r.text()
                if r.status != 200:
                    raise RuntimeError(f"stream request: {r.status} {text[:300]}")
                stamped = text.count('"t_sent"')
                if stamped != self.args.chunks:
                    self.notes.append(
                        f"{subject.name}: {stamped} of {self.args.chunks} chunks "
                        "kept the t_sent field; delays read from the content"
                    )
                if not text.rstrip().endswith("data: [DONE]"):
                    raise RuntimeError(f"stream did not end with [DONE]: ...{text[-200:]!r}")
            if subject.name == "gateway" and self.args.anthropic_paced:
                await self.check_anthropic(s, url, headers)
            for name in self.args.protocols:
                if name == "chat":
                    continue
                try:
                    await check_protocol(s, t, PROTOCOLS[name], self.args.chunks)
                except (RuntimeError, aiohttp.ClientError) as exc:
                    subject.refused[name] = f"failed the {name} check: {exc}"
                    print(
                        f"bench: {subject.name} left out of the {name} phases: {exc}",
                        file=sys.stderr,
                    )

    async def check_anthropic(self, s: aiohttp.ClientSession, url: str, headers: dict) -> None:
        """The gateway's Anthropic route: a non-stream answer, and a paced stream whose every
        delta came through with its stamp, the provider's usage, and [DONE]."""
        async with s.post(url, data=body(ANTHROPIC_MODEL, False), headers=headers) as r:
            text = await r.text()
            if r.status != 200 or "choices" not in orjson.loads(text):
                raise RuntimeError(f"Anthropic non-stream request: {r.status} {text[:300]}")
        async with s.post(url, data=body(ANTHROPIC_PACED_MODEL, True), headers=headers) as r:
            text = await r.text()
            if r.status != 200:
                raise RuntimeError(f"Anthropic stream request: {r.status} {text[:300]}")
        stamped = len(T_IN_CONTENT.findall(text.encode()))
        if stamped != self.args.chunks:
            raise RuntimeError(
                f"Anthropic stream: {stamped} of {self.args.chunks} deltas reached the "
                f"client with their stamp: ...{text[-300:]!r}"
            )
        events = [e[5:].strip() for e in text.split("\n\n") if e.startswith("data:")]
        if not events or events[-1] != "[DONE]":
            raise RuntimeError(f"Anthropic stream did not end with [DONE]: ...{text[-200:]!r}")
        usage = orjson.loads(events[-2]).get("usage") if len(events) > 1 else None
        want = {"prompt_tokens": 9, "completion_tokens": self.args.chunks}
        if not isinstance(usage, dict) or any(usage.get(k) != v for k, v in want.items()):
            raise RuntimeError(f"Anthropic stream: usage {usage}, the upstream counted {want}")

    # -- measuring -----------------------------------------------------------------------

    def pin_for(self, subject: Subject) -> None:
        # `direct` measures the upstream itself: give it the target core while it is measured.
        if subject.name == "direct" and self.upstream is not None:
            self.upstream.pin(self.harness.target_cpus)

    def unpin(self, subject: Subject) -> None:
        if subject.name == "direct" and self.upstream is not None:
            self.upstream.pin(self.harness.harness_cpus)

    async def wait_quiet(self) -> None:
        """Wait, at most --quiet-wait seconds, for a moment when others leave the cpus idle.

        On a shared machine other jobs come and go; starting a measurement in a quiet moment
        makes it less likely (not certain) to overlap one. Our own processes are idle here.
        """
        limit = self.args.quiet_wait
        if limit <= 0:
            return
        start = time.monotonic()
        while True:
            before = core_times()
            await asyncio.sleep(0.2)
            after = core_times()
            busiest = max(  # busy or stolen by the hypervisor: either delays us
                100
                * (after[c][0] + after[c][1] - before[c][0] - before[c][1])
                / max(1, after[c][2] - before[c][2])
                for c in after
            )
            if busiest < 10:
                break
            if time.monotonic() - start > limit:
                self.quiet_gave_up += 1
                break
        self.quiet_waited += time.monotonic() - start

    async def wait_connections_gone(self) -> None:
        """Before many new connections: wait (up to 70 s) for the last target's to be gone.

        Reproduced by hand: right after bare's --open-streams phase, the fake upstream still
        held bare's 9,088 idle keep-alive connections 70 s later (bare then kept them 60 s),
        and the gateway's streams then took up to 6 s longer to open (every stream open at
        once for 2.9 s instead of 9.0 s). Bare now keeps idle connections 15 s, as the
        gateway does; this wait makes sure they are closed, and that the kernel's TIME_WAIT
        sockets of the last run (kept 60 s) are gone too.
        """
        start = time.monotonic()
        upstream = self.upstream.pid if self.upstream is not None else None
        for _ in range(70):
            upstream_fds = open_fds(upstream) if upstream is not None else 0
            if time_wait_sockets() <= OPEN_TIME_WAIT_MAX and upstream_fds <= OPEN_FDS_MAX:
                break
            await asyncio.sleep(1)
        self.quiet_waited += time.monotonic() - start

    async def measure(self, phase: Phase, subject: Subject, seconds: float) -> Measured:
        peak = 0

        async def sample_rss() -> None:
            nonlocal peak
            while True:
                peak = max(peak, subject.proc.rss_kib())
                await asyncio.sleep(0.5)

        self.pin_for(subject)
        gc.collect()
        gc.disable()  # a load generator's pauses would show up as the target's latency
        sampler = asyncio.create_task(sample_rss()) if phase.sample_rss else None
        before = self.snapshot(subject)
        protocol = PROTOCOLS[phase.protocol]
        try:
            async with asyncio.timeout(seconds + 30):
                load = await run_load(
                    subject.target,
                    protocol.body(phase.model, phase.kind != "json"),
                    protocol=protocol,
                    concurrency=phase.concurrency,
                    duration=None if phase.requests else seconds,
                    total=phase.requests,
                    kind=phase.kind,
                    chunks=self.args.chunks,
                    stagger=phase.stagger,
                    delay_window=phase.delay_window,
                    all_open=phase.all_open,
                )
        except TimeoutError:
            load = LoadResult(errors=1, error_samples=["timed out: a request never finished"])
            subject.failed = f"{phase.name}: timed out"
        finally:
            after = self.snapshot(subject)
            if sampler is not None:
                sampler.cancel()
            gc.enable()
            self.unpin(subject)
        return Measured(load, self.usage(before, after), peak)

    def snapshot(self, subject: Subject) -> dict:
        assert self.upstream is not None
        times = os.times()
        return {
            "wall": time.monotonic(),
            "target": subject.proc.cpu_ticks(),
            "upstream": self.upstream.cpu_ticks() if subject.name != "direct" else 0,
            "redis": self.redis.cpu_ticks() if self.redis and subject.name == "gateway" else 0,
            "loadgen": times.user + times.system,
            "cores": core_times(),
        }

    @staticmethod
    def usage(before: dict, after: dict) -> Usage:
        u = Usage(after["wall"] - before["wall"])
        for name in ("target", "upstream", "redis", "loadgen"):
            setattr(u, name, after[name] - before[name])
        for cpu, values in after["cores"].items():
            u.cores[cpu] = [a - b for a, b in zip(values, before["cores"][cpu], strict=True)]
        return u

    async def run_phases(self, phases: list[Phase]) -> None:
        """Every phase in `--rounds` rounds. In each round, the targets in turn (their order
        rotating from round to round), and for each target the phases of one group one after
        the other (chat completions' json, then Messages' and Responses'), so that the
        report's ratios between protocols compare measurements seconds apart."""
        live = [s for s in self.subjects if not s.failed]

        def measured(phase: Phase, subject: Subject) -> bool:
            if phase.protocol in subject.refused:
                return False
            return phase.targets is None or subject.name in phase.targets

        groups: list[list[Phase]] = []
        for phase in phases:
            self.results[phase.name] = {s.name: Measured() for s in live if measured(phase, s)}
            if groups and phase.group and groups[-1][0].group == phase.group:
                groups[-1].append(phase)
            else:
                groups.append([phase])
        for r in range(self.args.rounds):
            for group in groups:
                # Rotate the order each round so no target always runs first (or last).
                order = live[r % len(live) :] + live[: r % len(live)]
                for subject in order:
                    for phase in group:
                        if subject.failed or (phase.requests and r) or not measured(phase, subject):
                            continue
                        await self.measure_round(phase, subject)

    async def measure_round(self, phase: Phase, subject: Subject) -> None:
        """One round of `phase` on `subject`, added to its results."""
        if phase.name in ("open", "churn"):
            await self.wait_connections_gone()
        await self.wait_quiet()
        seconds = phase.seconds if phase.requests else phase.seconds / self.args.rounds
        m = await self.measure(phase, subject, seconds)
        total = self.results[phase.name][subject.name]
        total.load.merge(m.load)
        total.peak_rss_kib = max(total.peak_rss_kib, m.peak_rss_kib)
        u, t = m.usage, total.usage
        t.wall += u.wall
        t.target += u.target
        t.upstream += u.upstream
        t.redis += u.redis
        t.loadgen += u.loadgen
        for cpu, values in u.cores.items():
            old = t.cores.setdefault(cpu, [0, 0, 0])
            t.cores[cpu] = [x + y for x, y in zip(old, values, strict=True)]
        if m.load.errors and m.load.ok == 0:
            subject.failed = f"{phase.name}: {m.load.error_samples[:1]}"

    async def warm_up(self) -> None:
        for subject in self.subjects:
            try:
                await self.check(subject)
            except Exception as exc:
                subject.failed = f"check failed: {exc}"
                print(f"bench: {subject.name} failed its check, left out: {exc}", file=sys.stderr)
                continue
            for kind in ("json", "stream"):
                await self.measure(
                    Phase("warmup", kind, self.args.concurrency, 0), subject, self.args.warmup
                )
            if subject.name == "gateway" and self.args.anthropic_paced:
                warmup = Phase("warmup", "stream", self.args.concurrency, 0, model=ANTHROPIC_MODEL)
                await self.measure(warmup, subject, self.args.warmup)
            for name in self.args.protocols:
                if name == "chat" or name in subject.refused:
                    continue
                model = PROTOCOLS[name].model
                for kind in ("json", "stream"):
                    warmup = Phase(
                        "warmup", kind, self.args.concurrency, 0, model=model, protocol=name
                    )
                    await self.measure(warmup, subject, self.args.warmup)

    async def measure_memory(self) -> None:
        """RSS of bare and gateway after checkpoints of requests: 90% non-stream, 10% streams."""
        a = self.args
        for subject in self.subjects:
            if subject.name == "direct" or subject.failed:
                continue
            points = [(0, subject.proc.rss_kib())]
            done = 0
            batch = self.memory_checkpoint
            self.pin_for(subject)
            while done < a.memory_requests:
                n = min(batch, a.memory_requests - done)
                streams = n // 10
                gc.collect()
                gc.disable()
                try:
                    async with asyncio.timeout(n / 50 + 60):
                        for kind, count in (("json", n - streams), ("stream", streams)):
                            load = await run_load(
                                subject.target,
                                body(MODEL, kind == "stream"),
                                concurrency=a.concurrency,
                                total=count,
                                kind=kind,
                                chunks=a.chunks,
                            )
                            if load.errors:
                                self.notes.append(
                                    f"memory {subject.name}: {load.errors} errors "
                                    f"({load.error_samples[:1]})"
                                )
                finally:
                    gc.enable()
                done += n
                points.append((done, subject.proc.rss_kib()))
            self.memory[subject.name] = points

    async def measure_unread(self) -> None:
        """--unread-streams: the gateway's RSS per stream whose client never reads (unread.py).

        Per case, a gateway of its own: started, checked and warmed up with a few ordinary
        requests one at a time (so that code paths run once, without growing anything to
        the size of N streams), its RSS taken after a second of rest, then the N streams
        for --unread-seconds, and the gateway stopped.
        """
        a = self.args
        for case in CASES:
            await self.wait_quiet()
            subject = await self.start_gateway(self.up_port, name=f"gateway-{case.name}")
            try:
                await self.check(subject)
                await run_load(
                    subject.target, body(MODEL, True), concurrency=1, total=20, kind="stream"
                )
                await run_load(
                    subject.target, body(MODEL, False), concurrency=1, total=20, kind="json"
                )
                await asyncio.sleep(1.0)
                gc.collect()
                gc.disable()
                before = self.snapshot(subject)
                try:
                    async with asyncio.timeout(a.unread_seconds + 60):
                        result = await measure_case(
                            case,
                            subject.target,
                            subject.proc,
                            a.unread_streams,
                            a.unread_seconds,
                            body(case.model, True),
                        )
                except TimeoutError:
                    raise RuntimeError(f"{case.name}: timed out") from None
                finally:
                    after = self.snapshot(subject)
                    gc.enable()
                self.unread[case.name] = result
                self.results[case.name] = {
                    "gateway": Measured(
                        usage=self.usage(before, after), peak_rss_kib=result.peak_kib
                    )
                }
                n = a.unread_streams
                if result.ok < n or result.open_at_end < n:
                    self.notes.append(
                        f"{case.name}: {result.ok} of {n} streams got 200 ({result.statuses}), "
                        f"{result.open_at_end} were still open at the end; see the gateway's log"
                    )
                    self.unread_failed = True
            finally:
                subject.proc.stop()

    # -- the whole run -------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        a = self.args
        c, d = a.concurrency, a.duration
        stagger = PACED_MS / 1000 / a.paced_concurrency
        phases = [
            Phase("json", "json", c, d, group="json"),
            *self.protocol_phases("json", c, d),
            Phase("c1", "json", 1, d / 2),
            Phase("stream", "stream", c, d, group="stream"),
            *self.protocol_phases("stream", c, d),
            Phase(
                "paced",
                "paced",
                a.paced_concurrency,
                d,
                stagger=stagger,
                model=PACED_MODEL,
                group="paced",
            ),
        ]
        if a.anthropic_paced:
            # The same paced streams through the gateway's Anthropic provider, right
            # after its OpenAI ones in every round (direct and bare cannot translate).
            phases.append(
                Phase(
                    "paced-anthropic",
                    "paced",
                    a.paced_concurrency,
                    d,
                    stagger=stagger,
                    model=ANTHROPIC_PACED_MODEL,
                    targets=("gateway",),
                    group="paced",
                )
            )
        phases += self.protocol_phases("paced", a.paced_concurrency, d, stagger)
        if a.open_streams:
            # Many slow streams open at once. The connections open over a ramp of
            # OPEN_RAMP seconds (10,000 at once would measure a connection storm, not open
            # streams); delays count only while every stream is open, as the client saw it:
            # from the last stream's first chunk to the first stream's last. With --churn,
            # the same connections again, each running CHURN_STREAMS streams in a row:
            # streams end and start all the time, as in production; delays count after the
            # ramp, until the first connection's last stream ends.
            n = a.open_streams
            life = (a.chunks - 1) * OPEN_MS / 1000
            many = {"stagger": OPEN_RAMP / n, "model": OPEN_MODEL, "sample_rss": True}
            phases.append(
                Phase("open", "paced", n, OPEN_RAMP + life + 5, requests=n, all_open=True, **many)
            )
            if a.churn:
                phases.append(
                    Phase(
                        "churn",
                        "paced",
                        n,
                        OPEN_RAMP + CHURN_STREAMS * life + 10,
                        requests=n * CHURN_STREAMS,
                        delay_window=(OPEN_RAMP + 2, CHURN_STREAMS * life - 2),
                        **many,
                    )
                )
        return phases

    def protocol_phases(
        self, kind: str, concurrency: int, seconds: float, stagger: float = 0.0
    ) -> list[Phase]:
        """The Messages and Responses phases of one kind (`messages-json`...), each with its
        protocol's models, in the group of chat completions' phase of that kind: on each
        target right after it (run_phases)."""
        return [
            Phase(
                f"{name}-{kind}",
                kind,
                concurrency,
                seconds,
                stagger=stagger,
                model=PROTOCOLS[name].paced_model if kind == "paced" else PROTOCOLS[name].model,
                protocol=name,
                group=kind,
            )
            for name in self.args.protocols
            if name != "chat"
        ]

    async def measure_background(self, seconds: float) -> None:
        before = core_times()
        await asyncio.sleep(seconds)
        after = core_times()
        self.background = ", ".join(
            f"cpu{c} {100 * (after[c][0] - before[c][0]) / max(1, after[c][2] - before[c][2]):.0f}%"
            for c in sorted(after)
        )

    async def run(self) -> None:
        self.gauge.append(speed_gauge())
        await self.measure_background(1.0)
        await self.start()
        for s in self.subjects:
            self.rss.setdefault(s.name, {})["start"] = s.proc.rss_kib()
        gc.freeze()
        await self.warm_up()
        await self.run_phases(self.phases())
        for s in self.subjects:
            self.rss[s.name]["end"] = s.proc.rss_kib()
        if self.args.memory:
            await self.measure_memory()
        if self.args.unread_streams:
            await self.measure_unread()
        self.gauge.append(speed_gauge())


# -- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run (about 30 s): --duration 2 --rounds 1 --warmup 0.5",
    )
    p.add_argument("--duration", type=float, help="seconds per target per phase (default 10)")
    p.add_argument("--rounds", type=int, help="rounds each phase is split into (default 3)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per target (default 1)")
    p.add_argument("--concurrency", type=int, default=32, help="connections (default 32)")
    p.add_argument(
        "--paced-concurrency",
        type=int,
        default=8,
        help="paced streams at once, staggered over the pacing interval (default 8)",
    )
    p.add_argument("--chunks", type=int, default=20, help="chunks per stream (default 20)")
    p.add_argument("--gateway-only", action="store_true", help="measure the gateway only")
    p.add_argument(
        "--skip-gateway",
        action="store_true",
        help="measure the upstream and the bare passthrough only",
    )
    p.add_argument(
        "--redis", action="store_true", help="run the gateway on a redis-server started on loopback"
    )
    p.add_argument(
        "--no-accounting",
        action="store_true",
        help="the gateway with auth, rate limits and quota off: the baseline of the cost of "
        "accounting (benchmarks/gateway_without_accounting.py)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="the gateway's --workers (default 1: the gateway's own default is "
        "one per cpu with Redis)",
    )
    p.add_argument(
        "--open-streams",
        type=int,
        default=0,
        metavar="N",
        help=f"also hold N streams open at once, chunks {OPEN_MS} ms apart: chunk "
        "delay and peak RSS (the performance targets asks for 10000)",
    )
    p.add_argument(
        "--churn",
        action="store_true",
        help=f"with --open-streams N: also N connections running {CHURN_STREAMS} such streams "
        "each in a row, so that streams end and start all the time: chunk delay and peak RSS",
    )
    p.add_argument(
        "--anthropic-paced",
        action="store_true",
        help="also measure the paced streams through the gateway's Anthropic provider "
        "(the fake upstream as Anthropic's Messages API), against its OpenAI ones",
    )
    p.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        help="the client protocols measured, comma-separated (default and at most "
        f"{','.join(PROTOCOLS)}; chat completions always): each of Messages and Responses "
        "adds a non-stream, a stream and a paced phase",
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="also measure RSS after 10,000 and --memory-requests requests",
    )
    p.add_argument("--memory-requests", type=int, default=100_000)
    p.add_argument(
        "--unread-streams",
        type=int,
        nargs="?",
        const=64,
        default=0,
        metavar="N",
        help="also measure the gateway's RSS per stream whose client never reads: N streams "
        "(default 64) from an endless upstream at full speed and at 1,000 events/s, then "
        "the same N read, each case on a fresh gateway (benchmarks/unread.py)",
    )
    p.add_argument(
        "--unread-seconds",
        type=float,
        help="how long each --unread-streams case holds its streams open (default 30, "
        "with --quick 15)",
    )
    p.add_argument("--config", default=str(HERE / "gateway.yaml"), help="the gateway's config")
    p.add_argument(
        "--quiet-wait",
        type=float,
        help="before each measurement, wait up to this many seconds for the cpus "
        "to be idle (default 3, with --quick 1; 0: do not wait)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cpus")
    p.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the children's output in benchmarks/results/logs-* (always kept "
        "when a target fails)",
    )
    p.add_argument("--json", help="also write the results here (default benchmarks/results/)")
    a = p.parse_args(argv)
    a.duration = a.duration or (2.0 if a.quick else 10.0)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 1.0)
    a.config = Path(a.config).resolve()
    if a.quiet_wait is None:
        a.quiet_wait = 1.0 if a.quick else 3.0
    given = [n.strip() for n in a.protocols.split(",") if n.strip()]
    unknown = sorted(set(given) - set(PROTOCOLS))
    if unknown:
        p.error(f"--protocols: unknown {', '.join(unknown)} (known: {', '.join(PROTOCOLS)})")
    a.protocols = ["chat", *(n for n in PROTOCOLS if n != "chat" and n in given)]
    if a.gateway_only and a.skip_gateway:
        p.error("--gateway-only and --skip-gateway exclude each other")
    if a.anthropic_paced and a.skip_gateway:
        p.error("--anthropic-paced measures the gateway: not with --skip-gateway")
    a.unread_seconds = a.unread_seconds or (15.0 if a.quick else 30.0)
    if a.unread_streams and a.skip_gateway:
        p.error("--unread-streams measures the gateway: not with --skip-gateway")
    if a.unread_streams < 0:
        p.error("--unread-streams N: N must be positive")
    if a.unread_seconds > CLIENT_READ_TIMEOUT - 20:
        p.error(
            f"--unread-seconds: at most {CLIENT_READ_TIMEOUT - 20:g}; the gateway cuts off a "
            f"client that reads nothing for {CLIENT_READ_TIMEOUT:g} s "
            "(server.client_read_timeout_seconds)"
        )
    return a


def cpu_split(workers: int | None, no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(target cpus, harness cpus): the target alone on its own cores when there are enough.

    With as many workers as cpus (--workers 2 here) nothing is pinned: the workers need every
    core, and the harness takes its share wherever the kernel puts it.
    """
    cpus = sorted(os.sched_getaffinity(0))
    n = max(1, workers or 1)
    if no_pin or len(cpus) < 2 or n >= len(cpus):
        return None, None
    return set(cpus[:n]), set(cpus[n:])


def open_streams_possible(streams: int) -> int:
    """Raise the open-files limit for `streams` (a proxy holds two descriptors per stream,
    one in and one out; children inherit the limit); return how many streams fit."""
    need = 2 * streams + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
        except (ValueError, OSError):
            # Without CAP_SYS_RESOURCE the hard limit is a ceiling: go up to it.
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(streams, (soft - 512) // 2)


async def amain(args: argparse.Namespace) -> int:
    started = time.time()
    notes = []
    if args.churn and not args.open_streams:
        print("bench: --churn needs --open-streams N", file=sys.stderr)
        return 2
    if args.open_streams:
        possible = open_streams_possible(args.open_streams)
        if possible < args.open_streams:
            notes.append(
                f"--open-streams {args.open_streams} lowered to {possible}: the "
                f"open-files limit ({resource.getrlimit(resource.RLIMIT_NOFILE)[0]}) "
                "cannot be raised here, and a proxy holds 2 descriptors per stream"
            )
            print(f"bench: {notes[-1]}", file=sys.stderr)
            args.open_streams = possible
    if args.unread_streams:
        # The gateway holds 2 descriptors per stream, the clients here one each.
        possible = open_streams_possible(args.unread_streams)
        if possible < args.unread_streams:
            print(
                f"bench: --unread-streams {args.unread_streams}: at most {possible} with "
                f"the open-files limit here",
                file=sys.stderr,
            )
            return 2
    target_cpus, harness_cpus = cpu_split(args.workers, args.no_pin)
    if harness_cpus:
        os.sched_setaffinity(0, harness_cpus)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    results = HERE / "results"
    with tempfile.TemporaryDirectory(prefix="woozlit-bench-") as tmp:
        harness = Harness(Path(tmp), target_cpus, harness_cpus)
        atexit.register(harness.stop_all)  # should the loop die without running `finally`
        bench = Bench(args, harness)
        bench.notes += notes
        ok = False
        try:
            await bench.run()
            ok = not any(s.failed for s in bench.subjects) and not bench.unread_failed
        except RuntimeError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            harness.stop_all()
            if not ok or args.keep_logs:  # keep the children's logs for whoever looks into it
                shutil.copytree(tmp, results / f"logs-{stamp}", dirs_exist_ok=True)
                print(f"bench: logs kept in {results / f'logs-{stamp}'}", file=sys.stderr)
    text = report(bench, started)
    print(text)
    out = Path(args.json) if args.json else results / f"bench-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(as_json(bench, text, started), indent=1))
    print(f"\nresults: {out}")
    return 1 if any(s.failed for s in bench.subjects) or bench.unread_failed else 0


def main() -> None:
    args = parse_args()

    run_main(amain(args), "bench")


if __name__ == "__main__":
    main()
