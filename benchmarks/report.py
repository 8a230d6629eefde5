"""The report: the table of figures with ratios gateway/bare, and where the CPU went.

A figure measured while processes that are not ours, or the hypervisor (steal), took more
than `NOISY`% of a core is marked with `*`: on a shared machine that is the first thing to
look at before believing it.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from loadgen import CHURN_STREAMS, OPEN_MS, PACED_MS, PROTOCOLS, LoadResult, Protocol, percentile
from unread import CASES, SAMPLE_EVERY

if TYPE_CHECKING:
    from bench import Bench, Measured

CLK = os.sysconf("SC_CLK_TCK")
NOISY = 10  # percent of a core taken by others and steal during a measurement: mark it
BOUND = 90  # percent busy of the harness's cpus (and not of the target's): mark as harness-bound


def ms(ns: float) -> float:
    return ns / 1e6


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


@dataclass
class Row:
    """One line of the table."""

    label: str
    values: dict[str, float | None]
    better: str  # "higher", "lower", or "" when a ratio would mean nothing
    phase: str | None = None  # the phase it comes from, to mark noisy measurements
    ratio_floor: float = 0.0  # no ratio when bare's value is this small (a difference near 0)
    also: str | None = None  # a second phase the figure comes from (marks from either)


def difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def quotient(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


Per = Callable[[str, Callable[[LoadResult], float | None]], dict[str, float | None]]


def cpu_per_request(bench: Bench, phase: str) -> dict[str, float | None]:
    """Per target, its CPU time (user + system, from /proc) per completed request of the
    phase, in us. Steadier than throughput on a shared machine: others' jobs take the
    target's core away, but not much of the CPU time each request costs it."""
    out: dict[str, float | None] = {}
    for s in bench.subjects:
        m = bench.results.get(phase, {}).get(s.name)
        ok = m is not None and m.load.ok and m.usage.wall
        out[s.name] = 1e6 * m.usage.target / CLK / m.load.ok if m is not None and ok else None
    return out


def figures(bench: Bench) -> list[Row]:
    """Every row of the table, computed from the merged results."""
    res, a = bench.results, bench.args
    names = [s.name for s in bench.subjects]
    rows: list[Row] = []

    def per(phase: str, fn: Callable[[LoadResult], float | None]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for n in names:
            m = res.get(phase, {}).get(n)
            out[n] = fn(m.load) if m and m.load.ok else None
        return out

    def pct(values: list[int], q: float) -> float:
        return ms(percentile(values, q))

    def minus_direct(values: dict[str, float | None]) -> dict[str, float | None]:
        d = values.get("direct")
        return {
            n: (v - d if v is not None and d is not None and n != "direct" else None)
            for n, v in values.items()
        }

    c, pc = a.concurrency, a.paced_concurrency
    rows += [
        Row(
            f"non-stream throughput, c={c} (req/s)", per("json", lambda r: r.rate), "higher", "json"
        ),
        Row(
            f"non-stream latency p50, c={c} (ms)",
            per("json", lambda r: pct(r.latencies_ns, 50)),
            "lower",
            "json",
        ),
        Row(
            f"non-stream latency p99, c={c} (ms)",
            per("json", lambda r: pct(r.latencies_ns, 99)),
            "lower",
            "json",
        ),
        Row(
            "target CPU per non-stream request, c=32 (us)",
            cpu_per_request(bench, "json"),
            "lower",
            "json",
        ),
    ]
    c1 = {q: per("c1", lambda r, q=q: pct(r.latencies_ns, q)) for q in (50, 99)}
    rows += [Row(f"latency p{q}, c=1 (ms)", c1[q], "lower", "c1") for q in (50, 99)]
    rows += [
        Row(f"added latency p{q}, c=1 (ms, minus direct)", minus_direct(c1[q]), "lower", "c1", 0.05)
        for q in (50, 99)
    ]
    rows += [
        Row(
            f"streams/s, {a.chunks} chunks, c={c}",
            per("stream", lambda r: r.rate),
            "higher",
            "stream",
        ),
        Row(
            f"stream duration p99, c={c} (ms)",
            per("stream", lambda r: pct(r.latencies_ns, 99)),
            "lower",
            "stream",
        ),
        Row(
            "target CPU per stream, c=32 (us)", cpu_per_request(bench, "stream"), "lower", "stream"
        ),
    ]
    paced = {q: per("paced", lambda r, q=q: pct(r.delays_ns, q)) for q in (50, 99)}
    rows += [
        Row(
            f"paced chunk delay p50 ({a.chunks} x {PACED_MS} ms, c={pc}) (ms)",
            paced[50],
            "lower",
            "paced",
        ),
        Row("paced chunk delay p99 (ms)", paced[99], "lower", "paced"),
        Row(
            "added paced chunk delay p99 (ms, minus direct)",
            minus_direct(paced[99]),
            "lower",
            "paced",
            0.05,
        ),
        Row(
            "paced chunk delay max (ms)",
            per("paced", lambda r: ms(max(r.delays_ns)) if r.delays_ns else None),
            "lower",
            "paced",
        ),
        Row(
            f"paced streams with all {a.chunks} chunks in separate reads (%)",
            per("paced", lambda r: 100 * r.paced_separate / max(1, r.paced_streams)),
            "higher",
            "paced",
        ),
    ]
    if "paced-anthropic" in res:
        # The same paced streams through the gateway's Anthropic provider; direct
        # and bare cannot translate, so the comparison is with the gateway's OpenAI streams.
        via = {q: per("paced-anthropic", lambda r, q=q: pct(r.delays_ns, q)) for q in (50, 99)}
        rows += [
            Row("paced chunk delay p50 via Anthropic (ms)", via[50], "lower", "paced-anthropic"),
            Row("paced chunk delay p99 via Anthropic (ms)", via[99], "lower", "paced-anthropic"),
            Row(
                "paced p99 via Anthropic minus via OpenAI (ms)",
                {n: difference(via[99].get(n), paced[99].get(n)) for n in names},
                "",
                "paced-anthropic",
                also="paced",
            ),
            Row(
                "paced chunk delay max via Anthropic (ms)",
                per("paced-anthropic", lambda r: ms(max(r.delays_ns)) if r.delays_ns else None),
                "lower",
                "paced-anthropic",
            ),
            Row(
                f"paced streams via Anthropic, all {a.chunks} in separate reads (%)",
                per("paced-anthropic", lambda r: 100 * r.paced_separate / max(1, r.paced_streams)),
                "higher",
                "paced-anthropic",
            ),
        ]

    for protocol in PROTOCOLS.values():
        if protocol.name != "chat" and res.get(f"{protocol.name}-json"):
            rows += protocol_rows(bench, protocol, per)

    def many_streams(phase: str, title: str, what: str, streams: int) -> list[Row]:
        """The rows of --open-streams and --churn: delays, completeness, peak RSS."""
        window = Row(
            f"{what}: seconds with every stream open (delays counted)",
            per(phase, lambda r: r.all_open_s),
            "higher",
            phase,
        )
        return [
            Row(
                f"{title}: delay p50 (ms)",
                per(phase, lambda r: pct(r.delays_ns, 50)),
                "lower",
                phase,
            ),
            Row(
                f"{what}: chunk delay p99 (ms)",
                per(phase, lambda r: pct(r.delays_ns, 99)),
                "lower",
                phase,
            ),
            Row(
                f"{what}: streams with every chunk (%)",
                per(phase, lambda r: 100 * r.paced_complete / streams),
                "higher",
                phase,
            ),
            *([window] if phase == "open" else []),  # --churn counts a fixed window
            Row(
                f"{what}: peak RSS (MB)",
                {k: m.peak_rss_kib / 1024 or None for k, m in res[phase].items()},
                "lower",
                phase,
            ),
        ]

    streams = a.open_streams
    if "open" in res:
        title = f"open streams ({streams:,}, {OPEN_MS} ms apart)"
        rows += many_streams("open", title, "open streams", streams)
    if "churn" in res:
        title = f"churning streams ({streams:,} connections, {CHURN_STREAMS} each)"
        rows += many_streams("churn", title, "churning streams", streams * CHURN_STREAMS)
    if bench.unread:
        rows += unread_rows(bench)
    rows += [
        Row(
            f"RSS at {when} of the run (MB)",
            {n: bench.rss.get(n, {}).get(when, 0) / 1024 or None for n in names},
            "lower",
        )
        for when in ("start", "end")
    ]
    if bench.memory:
        first = {n: bench.memory[n][1][1] / 1024 if n in bench.memory else None for n in names}
        last = {n: bench.memory[n][-1][1] / 1024 if n in bench.memory else None for n in names}
        n1 = bench.memory_checkpoint
        growth = {
            n: (100 * (last[n] / first[n] - 1) if first[n] and last[n] else None) for n in names
        }
        rows += [
            Row(f"memory: RSS after {n1:,} requests (MB)", first, "lower"),
            Row(f"memory: RSS after {a.memory_requests:,} requests (MB)", last, "lower"),
            Row(f"memory: growth from {n1:,} to {a.memory_requests:,} (%)", growth, ""),
        ]
    return rows


def protocol_rows(bench: Bench, protocol: Protocol, per: Per) -> list[Row]:
    """The Messages or Responses API's phases: throughput, stream duration and paced delays
    as for chat completions, and per target the ratio of each throughput to chat
    completions' and the paced p99's difference from theirs, in the same run."""
    a, p, title = bench.args, protocol.name, protocol.title
    names = [s.name for s in bench.subjects]
    c, pc = a.concurrency, a.paced_concurrency

    def rate(phase: str) -> dict[str, float | None]:
        return per(phase, lambda r: r.rate)

    def p99(phase: str) -> dict[str, float | None]:
        return per(phase, lambda r: ms(percentile(r.delays_ns, 99)))

    rates = {kind: (rate(f"{p}-{kind}"), rate(kind)) for kind in ("json", "stream")}
    paced, chat_paced = p99(f"{p}-paced"), p99("paced")
    return [
        Row(
            f"{title}: non-stream throughput, c={c} (req/s)",
            rates["json"][0],
            "higher",
            f"{p}-json",
        ),
        Row(
            f"{title}: non-stream throughput / chat completions'",
            {n: quotient(rates["json"][0].get(n), rates["json"][1].get(n)) for n in names},
            "",
            f"{p}-json",
            also="json",
        ),
        Row(
            f"{title}: streams/s, {a.chunks} chunks, c={c}",
            rates["stream"][0],
            "higher",
            f"{p}-stream",
        ),
        Row(
            f"{title}: streams/s / chat completions'",
            {n: quotient(rates["stream"][0].get(n), rates["stream"][1].get(n)) for n in names},
            "",
            f"{p}-stream",
            also="stream",
        ),
        Row(
            f"{title}: stream duration p99, c={c} (ms)",
            per(f"{p}-stream", lambda r: ms(percentile(r.latencies_ns, 99))),
            "lower",
            f"{p}-stream",
        ),
        Row(
            f"{title}: target CPU per non-stream request (us)",
            cpu_per_request(bench, f"{p}-json"),
            "lower",
            f"{p}-json",
        ),
        Row(
            f"{title}: target CPU per stream (us)",
            cpu_per_request(bench, f"{p}-stream"),
            "lower",
            f"{p}-stream",
        ),
        Row(
            f"{title}: paced chunk delay p50 (c={pc}) (ms)",
            per(f"{p}-paced", lambda r: ms(percentile(r.delays_ns, 50))),
            "lower",
            f"{p}-paced",
        ),
        Row(f"{title}: paced chunk delay p99 (ms)", paced, "lower", f"{p}-paced"),
        Row(
            f"{title}: paced p99 minus chat completions' (ms)",
            {n: difference(paced.get(n), chat_paced.get(n)) for n in names},
            "",
            f"{p}-paced",
            also="paced",
        ),
        Row(
            f"{title}: paced chunk delay max (ms)",
            per(f"{p}-paced", lambda r: ms(max(r.delays_ns)) if r.delays_ns else None),
            "lower",
            f"{p}-paced",
        ),
        Row(
            f"{title}: paced streams, all {a.chunks} in separate reads (%)",
            per(f"{p}-paced", lambda r: 100 * r.paced_separate / max(1, r.paced_streams)),
            "higher",
            f"{p}-paced",
        ),
    ]


def unread_rows(bench: Bench) -> list[Row]:
    """--unread-streams: the gateway's RSS growth per stream, per case, at the end and at its
    peak (KiB), and the share of streams that got 200 and were still open at the end."""
    a = bench.args
    rows: list[Row] = []
    first = {False: True, True: True}  # the first row of unread / read says N and seconds
    for case in CASES:
        r = bench.unread.get(case.name)
        if r is None:
            continue
        clients = "read streams" if case.read else "unread streams"
        if first[case.read]:
            clients += f" ({a.unread_streams}, {a.unread_seconds:g} s)"
            first[case.read] = False
        for when, kib in (("end", r.end_kib), ("peak", r.peak_kib)):
            rows.append(
                Row(
                    f"{clients}, {case.upstream}: KiB/stream, {when}",
                    {"gateway": r.per_stream(kib)},
                    "lower",
                    case.name,
                )
            )
    results = list(bench.unread.values())
    streams = sum(r.streams for r in results)
    good = sum(min(r.ok, r.open_at_end) for r in results)
    rows.append(
        Row(
            "unread and read streams: 200 and open at the end (%)",
            {"gateway": 100 * good / streams if streams else None},
            "higher",
        )
    )
    return rows


def unread_details(bench: Bench) -> list[str]:
    """--unread-streams, case by case: RSS before, at the end and at its peak, statuses,
    the gateway's CPU, what the clients had, and the RSS curve."""
    a = bench.args
    n = a.unread_streams
    lines = [
        "",
        f"unread streams: {n} streams per case for {a.unread_seconds:g} s, each case on a "
        "gateway of its own; its RSS before the streams, at the end and at the peak (MB), "
        f"and per stream (RSS minus before, / {n}, KiB)",
        f"{'case':<13}{'upstream':<16}{'got 200':>8}{'open':>6}{'before':>8}{'end':>7}"
        f"{'peak':>7}{'KiB/stream end':>16}{'peak':>6}{'gw CPU':>8}   clients",
    ]
    for case in CASES:
        r = bench.unread.get(case.name)
        if r is None:
            continue
        m = bench.results.get(case.name, {}).get("gateway")
        cpu = m.usage.target / (m.usage.wall * CLK / 100) if m and m.usage.wall else None
        if case.read:
            clients = f"read {r.client_bytes / r.streams / r.seconds / 1e6:.1f} MB/s each"
        else:
            clients = f"never read, {r.client_bytes / r.streams / 1024:.0f} KiB queued each"
        lines.append(
            f"{case.name:<13}{case.upstream:<16}{r.ok:>8}{r.open_at_end:>6}"
            f"{r.before_kib / 1024:>8.1f}{r.end_kib / 1024:>7.1f}{r.peak_kib / 1024:>7.1f}"
            f"{r.per_stream(r.end_kib):>16.0f}{r.per_stream(r.peak_kib):>6.0f}"
            f"{fmt(cpu, 0) + '%' if cpu is not None else '-':>8}   {clients}"
        )
    step = max(1, round(1 / SAMPLE_EVERY))
    for case in CASES:
        r = bench.unread.get(case.name)
        if r is None:
            continue
        curve = " ".join(f"{kib / 1024:.1f}" for kib in r.samples_kib[step - 1 :: step])
        lines.append(f"{case.name}: gateway RSS (MB) every second: {curve}")
    return lines


def report(bench: Bench, started: float) -> str:
    a = bench.args
    names = [s.name for s in bench.subjects]
    lines = [
        f"Woozlit gateway benchmark, {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))}",
        f"machine: {os.cpu_count()} cpus ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}",
        (
            f"gateway: commit {bench.commit}, "
            f"{'redis-server on loopback' if a.redis else 'embedded store'}"
            f", --workers {a.workers}; config {os.path.relpath(a.config)}"
            if not a.skip_gateway
            else "gateway: not measured (--skip-gateway)"
        ),
        f"pinning: target on cpus {sorted(bench.harness.target_cpus or [])}, upstream + load "
        f"generator{' + redis' if a.redis else ''} on {sorted(bench.harness.harness_cpus or [])}"
        if bench.harness.target_cpus
        else "pinning: none (--no-pin, or as many --workers as cpus)",
        "speed gauge (a fixed Python loop on the harness cpu; lower is faster): "
        + (
            f"{bench.gauge[0]:.0f} ms at start, {bench.gauge[-1]:.0f} ms at end"
            if bench.gauge
            else "not taken"
        ),
        f"busy before the run (other processes): {bench.background}; waited "
        f"{bench.quiet_waited:.0f} s in all for quiet cpus before measurements "
        f"(gave up {bench.quiet_gave_up} times)",
        f"command: {' '.join(['python', 'benchmarks/bench.py', *sys.argv[1:]])}",
        f"{a.rounds} round(s); per target: {a.duration:g} s non-stream, {a.duration / 2:g} s c=1, "
        f"{a.duration:g} s streams, {a.duration:g} s paced"
        + (
            f"; the same non-stream, stream and paced in {', '.join(a.protocols[1:])}"
            if a.protocols[1:]
            else ""
        )
        + (f"; gateway only: {a.duration:g} s paced via Anthropic" if a.anthropic_paced else "")
        + (
            f"; then {len(CASES)} x {a.unread_seconds:g} s of {a.unread_streams} unread/read "
            "streams, each on a fresh gateway"
            if a.unread_streams
            else ""
        ),
        "",
    ]
    width = 58
    header = f"{'figure':<{width}}" + "".join(f"{n:>10}" for n in names)
    has_ratio = "bare" in names and "gateway" in names
    if has_ratio:
        header += f"{'gw/bare':>10}"
    lines += [header, "-" * len(header)]
    noisy = bound = False
    for row in figures(bench):
        line = f"{row.label:<{width}}"
        for n in names:
            mark = ""
            for phase in (row.phase, row.also):
                m = bench.results.get(phase or "", {}).get(n)
                if m is None or row.values.get(n) is None:
                    continue
                if harness_bound(bench, m) and "^" not in mark:
                    mark, bound = "^" + mark, True
                if others_pct(m) + steal_pct(m) > NOISY and "*" not in mark:
                    mark, noisy = mark + "*", True
            line += f"{fmt(row.values.get(n)) + mark:>10}"
        b, g = row.values.get("bare"), row.values.get("gateway")
        if has_ratio and row.better:
            ratio = None
            if b is not None and g is not None and b > max(row.ratio_floor, 1e-12):
                ratio = g / b
            line += f"{fmt(ratio):>10}"
        lines.append(line)
    if bound:
        lines.append(
            f"^ the harness's cpus were over {BOUND}% busy and the target's under: "
            "bound by the harness, the target could do more"
        )
    if noisy:
        lines.append(
            f"* measured while processes not ours and the hypervisor (steal) took "
            f"more than {NOISY}% of a core"
        )

    lines += [
        "",
        "harness: where the CPU went, in % of one core, over each phase ('others': "
        "processes not ours)",
    ]
    pw = max([8, *(len(p) + 1 for p in bench.results)])  # the phase column
    lines.append(
        f"{'phase':<{pw}}{'target':<9}{'target':>8}{'upstream':>10}{'loadgen':>9}"
        f"{'redis':>7}{'others':>8}{'steal':>7}{'loadgen us/req':>16}"
    )
    for phase, per_target in bench.results.items():
        for name, m in per_target.items():
            lines.append(harness_row(phase, name, m, pw))
    for name, points in bench.memory.items():
        curve = " ".join(f"{kib / 1024:.1f}" for _, kib in points)
        lines.append(
            f"memory: {name} RSS (MB) before the memory phase, then every "
            f"{bench.memory_checkpoint:,} requests: {curve}"
        )
    if bench.unread:
        lines += unread_details(bench)
    errors = [
        (p, n, m.load) for p, t in bench.results.items() for n, m in t.items() if m.load.errors
    ]
    for phase, name, load in errors:
        lines.append(f"errors: {phase} {name}: {load.errors} failed, e.g. {load.error_samples[:2]}")
    odd = [
        (p, n, m.load.stream_events)
        for p, t in bench.results.items()
        for n, m in t.items()
        if len(m.load.stream_events) > 1 or m.load.streams_without_done
    ]
    for phase, name, events in odd:
        lines.append(f"note: {phase} {name}: events per stream {events} (all should be equal)")
    lines += [f"note: {n}" for n in bench.notes]
    lines += [f"left out: {s.name}: {s.failed}" for s in bench.subjects if s.failed]
    lines += [
        f"left out of the {protocol} phases: {s.name}: {reason}"
        for s in bench.subjects
        for protocol, reason in s.refused.items()
    ]
    lines += ["", *checks(bench)]
    return "\n".join(lines)


def harness_bound(bench: Bench, m: Measured) -> bool:
    """The harness's cpus were saturated while the target's were not."""
    cpus = bench.harness.harness_cpus
    u = m.usage
    if not cpus or not u.wall:
        return False
    busy = sum(u.cores[c][0] for c in cpus if c in u.cores)
    total = sum(u.cores[c][2] for c in cpus if c in u.cores)
    target = u.target / (u.wall * CLK / 100) / max(1, len(bench.harness.target_cpus or ()))
    return total > 0 and 100 * busy / total > BOUND and target < BOUND


def others_pct(m: Measured) -> float:
    """CPU used by processes not ours during a measurement, in % of one core."""
    u = m.usage
    if not u.wall:
        return 0.0
    ours = u.target + u.upstream + u.redis + u.loadgen * CLK
    busy = sum(v[0] for v in u.cores.values())
    return max(0.0, busy - ours) / (u.wall * CLK / 100)


def steal_pct(m: Measured) -> float:
    """CPU time the hypervisor gave to other machines during a measurement, % of one core."""
    u = m.usage
    if not u.wall:
        return 0.0
    return sum(v[1] for v in u.cores.values()) / (u.wall * CLK / 100)


def harness_row(phase: str, name: str, m: Measured, width: int = 8) -> str:
    u = m.usage
    if not u.wall:
        return f"{phase:<{width}}{name:<9}  (not run)"
    per_pct = u.wall * CLK / 100  # clock ticks in 1% of one core over the phase
    steal = sum(v[1] for v in u.cores.values())
    cells = [
        u.target / per_pct,
        u.upstream / per_pct if name != "direct" else None,
        100 * u.loadgen / u.wall,
        u.redis / per_pct,
        others_pct(m),
        steal / per_pct,
    ]
    gen_us = 1e6 * u.loadgen / m.load.ok if m.load.ok else None
    widths = (8, 10, 9, 7, 8, 7)
    text = "".join(
        f"{(fmt(c, 0) + '%') if c is not None else '-':>{w}}"
        for c, w in zip(cells, widths, strict=True)
    )
    return f"{phase:<{width}}{name:<9}{text}{fmt(gen_us, 1):>16}"


def checks(bench: Bench) -> list[str]:
    """The figures the performance targets are set for, each marked reached or not."""
    rows = {row.label: row.values for row in figures(bench)}
    out = ["targets (streaming and throughput):"]

    def find(prefix: str) -> dict[str, float | None]:
        return next((v for k, v in rows.items() if k.startswith(prefix)), {})

    tput = find("non-stream throughput")
    b, g = tput.get("bare"), tput.get("gateway")
    if b and g:
        out.append(
            f"  non-stream throughput >= 60% of bare: {100 * g / b:.0f}% "
            f"{'reached' if g / b >= 0.6 else 'NOT reached'}"
        )
    p99 = find("paced chunk delay p99").get("gateway")
    sep = find("paced streams with all").get("gateway")
    if p99 is not None:
        out.append(
            f"  paced chunks: p99 delay <= 1 ms: {p99:.2f} ms "
            f"{'reached' if p99 <= 1 else 'NOT reached'}; all chunks separate in "
            f"{sep:.0f}% of streams"
        )
    growth = find("memory: growth").get("gateway")
    if growth is not None:
        out.append(
            f"  RSS growth {bench.memory_checkpoint:,} -> {bench.args.memory_requests:,} "
            "requests < 10%: "
            f"{growth:.1f}% {'reached' if growth < 10 else 'NOT reached'}"
        )

    out += anthropic_check(rows)
    out += protocol_checks(rows)
    out.append("targets (performance, meant with everything on: --redis):")

    def target(label: str, value: float | None, limit: float, unit: str, most: bool = True) -> None:
        if value is None or value != value:
            return
        ok = value <= limit if most else value >= limit
        sign = "<=" if most else ">="
        out.append(
            f"  {label} {sign} {limit:g}{unit}: {value:.2f}{unit} "
            f"{'reached' if ok else 'NOT reached'}"
        )

    if b and g:
        target("non-stream throughput, % of bare", 100 * g / b, 50, "%", most=False)
    target("added latency p50, c=1", find("added latency p50").get("gateway"), 0.5, " ms")
    target("added latency p99, c=1", find("added latency p99").get("gateway"), 1.5, " ms")
    target(
        "added paced chunk delay p99",
        find("added paced chunk delay p99").get("gateway"),
        1.0,
        " ms",
    )
    target(
        "open streams: chunk delay p99",
        find("open streams: chunk delay p99").get("gateway"),
        5.0,
        " ms",
    )
    target("open streams: peak RSS", find("open streams: peak RSS").get("gateway"), 500, " MB")
    return out


def anthropic_check(rows: dict[str, dict[str, float | None]]) -> list[str]:
    """Paced chunks through the Anthropic provider as fast as through OpenAI's."""
    via = rows.get("paced chunk delay p99 via Anthropic (ms)", {}).get("gateway")
    openai = rows.get("paced chunk delay p99 (ms)", {}).get("gateway")
    if via is None or openai is None or via != via or openai != openai:
        return []
    diff = via - openai
    sep = next(
        (v.get("gateway") for k, v in rows.items() if k.startswith("paced streams via Anthropic")),
        None,
    )
    separate = f"; all chunks separate in {sep:.0f}% of streams" if sep is not None else ""
    return [
        "targets (paced streams via Anthropic):",
        f"  paced chunk delay p99 via Anthropic within 1 ms of via OpenAI: {via:.2f} ms "
        f"against {openai:.2f} ms, {diff:+.2f} ms "
        f"{'reached' if abs(diff) <= 1 else 'NOT reached'}{separate}",
    ]


def protocol_checks(rows: dict[str, dict[str, float | None]]) -> list[str]:
    """The native client protocols against chat completions, the gateway's in the same run:
    each throughput at least 90% of chat completions', the paced p99 at most 1 ms above
    theirs. Bare's own ratio is given beside each: what the protocol's answers cost over
    chat completions' in a proxy that does nothing (the Responses API's events are bigger)."""
    out: list[str] = []
    chat = rows.get("paced chunk delay p99 (ms)", {}).get("gateway")
    for protocol in PROTOCOLS.values():
        t = protocol.title
        for what, label, cpu in (
            ("non-stream throughput", "non-stream", "CPU per non-stream request"),
            ("streams/s", "streams/s", "CPU per stream"),
        ):
            ratio = rows.get(f"{t}: {what} / chat completions'", {})
            g, b = ratio.get("gateway"), ratio.get("bare")
            if protocol.name == "chat" or g is None:
                continue
            floor = f" (bare's {100 * b:.0f}%)" if b is not None else ""
            spent = quotient(
                rows.get(f"{t}: target {cpu} (us)", {}).get("gateway"),
                next((v for k, v in rows.items() if k.startswith(f"target {cpu},")), {}).get(
                    "gateway"
                ),
            )
            steadier = f"; the gateway's {cpu}: {spent:.2f} x chat's" if spent else ""
            out.append(
                f"  {t} {label} >= 90% of chat completions': {100 * g:.0f}%{floor} "
                f"{'reached' if g >= 0.9 else 'NOT reached'}{steadier}"
            )
        via = rows.get(f"{t}: paced chunk delay p99 (ms)", {}).get("gateway")
        if protocol.name == "chat" or via is None or chat is None or via != via or chat != chat:
            continue
        sep = next((v for k, v in rows.items() if k.startswith(f"{t}: paced streams, all")), {})
        separate = sep.get("gateway")
        out.append(
            f"  {t} paced chunk delay p99 within 1 ms of chat completions': {via:.2f} ms "
            f"against {chat:.2f} ms, {via - chat:+.2f} ms "
            f"{'reached' if via - chat <= 1 else 'NOT reached'}"
            + (f"; all chunks separate in {separate:.0f}% of streams" if separate else "")
        )
    if not out:
        return []
    return ["targets (client protocols served natively, against chat completions):", *out]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def as_json(bench: Bench, text: str, started: float) -> dict:
    rows = [{"figure": row.label, **row.values} for row in figures(bench)]
    return {
        "started": started,
        "argv": sys.argv[1:],
        "table": rows,
        "memory": bench.memory,
        "unread_streams": {name: r.as_dict() for name, r in bench.unread.items()},
        "usage": {p: {n: vars(m.usage) for n, m in t.items()} for p, t in bench.results.items()},
        "text": text,
    }
