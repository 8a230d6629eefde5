"""Where the gateway's CPU goes per request, protocol by protocol: cProfile under load.

    python benchmarks/profile_gateway.py                       # every protocol, json and stream
    python benchmarks/profile_gateway.py --kinds stream --protocols chat,responses --redis

One gateway (the benchmark's config, on the fake upstream; with `--redis` on a redis-server
of its own) started through this file as a launcher: SIGUSR1 turns cProfile on in its
process, SIGUSR2 turns it off and writes the statistics. For each protocol and kind, the
load generator runs `--seconds` of load at `--concurrency` (after a warm-up, unprofiled)
with the profiler on, in `--rounds` slices that alternate between the protocols (so that a
change in the host's speed falls on all of them), and the report prints the functions by
their own time (tottime) per request, in microseconds, for the protocols side by side: what
a protocol's requests spend more than chat completions' is where its extra time goes.
cProfile makes every Python call slower (1.5-3x here), so the absolute figures are
inflated; compare within one run. `--save DIR` keeps the statistics for pstats (cumulative
times). Pinned as bench.py pins: the gateway on cpu 0, the rest on cpu 1.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import cpu_split, create_key
from harness import HERE, Harness, run_main
from loadgen import PROTOCOLS, Target, run_load


def launch(stats: str, argv: list[str]) -> int:
    """The gateway (`python -m proxy` with argv), profiled between SIGUSR1 and SIGUSR2."""
    profiler = cProfile.Profile()

    def start(signum: int, frame: object) -> None:
        profiler.enable()

    def stop(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(stats)
        profiler.clear()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from proxy.__main__ import main

    sys.argv = ["woozlit-proxy", *argv]
    return main()


async def profile(args: argparse.Namespace) -> int:
    target_cpus, harness_cpus = cpu_split(1, False)
    if harness_cpus:
        os.sched_setaffinity(0, harness_cpus)
    results: dict[tuple[str, str], tuple[int, pstats.Stats]] = {}
    with tempfile.TemporaryDirectory(prefix="woozlit-profile-") as tmp:
        harness = Harness(Path(tmp), target_cpus, harness_cpus)
        try:
            _, up_port = harness.start_upstream(20)
            env: dict[str, str] = {}
            if args.redis:
                _, redis_port = harness.start_redis()
                env = {
                    "WOOZLIT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                    "WOOZLIT_ADMIN_TOKEN": secrets.token_urlsafe(24),
                }
            stats_path = Path(tmp) / "gateway.prof"
            launcher = Path(tmp) / "launcher.py"
            launcher.write_text(
                "import sys\n"
                f"sys.path.insert(0, {str(HERE)!r})\n"
                "from profile_gateway import launch\n"
                f"sys.exit(launch({str(stats_path)!r}, sys.argv[1:]))\n"
            )
            gateway, port, key = harness.start_gateway(
                up_port, args.config, env, 1, not args.redis, launcher=launcher
            )
            if args.redis:
                key = await create_key(port, env["WOOZLIT_ADMIN_TOKEN"])
            assert key is not None
            target = Target("gateway", "127.0.0.1", port, key)
            for name in args.protocols:
                for kind in args.kinds:
                    await load(target, name, kind, 1.0, args.concurrency)  # warm-up
            for _ in range(args.rounds):
                for kind in args.kinds:
                    for name in args.protocols:
                        stats_path.unlink(missing_ok=True)
                        os.kill(gateway.pid, signal.SIGUSR1)
                        seconds = args.seconds / args.rounds
                        done = await load(target, name, kind, seconds, args.concurrency)
                        os.kill(gateway.pid, signal.SIGUSR2)
                        stats = await read_stats(stats_path)
                        if (name, kind) in results:
                            before, total = results[(name, kind)]
                            done, stats = before + done, total.add(stats)
                        results[(name, kind)] = (done, stats)
            for (name, kind), (_, stats) in results.items():
                if args.save:
                    args.save.mkdir(parents=True, exist_ok=True)
                    stats.dump_stats(args.save / f"{name}-{kind}.prof")
        except RuntimeError as exc:
            print(f"profile_gateway: {exc}", file=sys.stderr)
            return 1
        finally:
            harness.stop_all()
    print(report(results, args.top))
    return 0


async def load(target: Target, name: str, kind: str, seconds: float, concurrency: int) -> int:
    """`seconds` of `kind` requests ("json", "stream") of protocol `name`: how many were
    answered. Raises RuntimeError when any failed."""
    protocol = PROTOCOLS[name]
    result = await run_load(
        target,
        protocol.body(protocol.model, kind == "stream"),
        protocol=protocol,
        concurrency=concurrency,
        duration=seconds,
        kind=kind,
    )
    if result.errors:
        raise RuntimeError(f"{name} {kind}: {result.errors} failed: {result.error_samples[:2]}")
    return result.ok


async def read_stats(path: Path) -> pstats.Stats:
    """The statistics the gateway writes on SIGUSR2 (waits up to 10 s for them)."""
    for _ in range(100):
        await asyncio.sleep(0.1)
        try:
            return pstats.Stats(str(path))
        except (OSError, EOFError, ValueError):
            continue  # not there, or not complete yet
    raise RuntimeError(f"the gateway wrote no statistics to {path}")


def per_request(stats: pstats.Stats, requests: int) -> dict[str, float]:
    """Each function's own time (tottime) per request, us, keyed `file:line(function)`."""
    out: dict[str, float] = {}
    for (file, line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        where = f"{Path(file).name}:{line}({function})" if line else function
        out[where] = out.get(where, 0.0) + 1e6 * tottime / max(1, requests)
    return out


def report(results: dict[tuple[str, str], tuple[int, pstats.Stats]], top: int) -> str:
    """Per kind, the `top` functions by their largest own time per request across the
    protocols, one column per protocol, and the total (all functions) per request."""
    lines: list[str] = []
    for kind in sorted({k for _, k in results}):
        columns = [(n, *results[(n, k)]) for n, k in results if k == kind]
        tables = {n: per_request(stats, done) for n, done, stats in columns}
        names = [n for n, _, _ in columns]
        lines += [
            "",
            f"{kind}: own time per request (us, under cProfile), "
            + ", ".join(f"{n} {done:,} requests" for n, done, _ in columns),
            f"{'function':<64}" + "".join(f"{n:>12}" for n in names),
            f"{'all functions':<64}" + "".join(f"{sum(tables[n].values()):>12.1f}" for n in names),
        ]
        every = {f for t in tables.values() for f in t}
        ranked = sorted(every, key=lambda f: -max(t.get(f, 0.0) for t in tables.values()))
        for function in ranked[:top]:
            lines.append(
                f"{function[:63]:<64}"
                + "".join(f"{tables[n].get(function, 0.0):>12.1f}" for n in names)
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    p.add_argument("--kinds", default="json,stream", help="json, stream, or both")
    p.add_argument("--seconds", type=float, default=6.0, help="profiled load per protocol/kind")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the seconds split into this many slices, the protocols alternating (default 3)",
    )
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--top", type=int, default=30, help="functions shown per kind")
    p.add_argument("--redis", action="store_true", help="the gateway on a redis-server")
    p.add_argument("--config", type=Path, default=HERE / "gateway.yaml", help="the gateway's")
    p.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="also write each profile to DIR/<protocol>-<kind>.prof (pstats, snakeviz)",
    )
    a = p.parse_args(argv)
    a.protocols = [n for n in a.protocols.split(",") if n]
    a.kinds = [k for k in a.kinds.split(",") if k]
    if set(a.protocols) - set(PROTOCOLS) or set(a.kinds) - {"json", "stream"}:
        p.error(f"protocols: {', '.join(PROTOCOLS)}; kinds: json, stream")
    return a


if __name__ == "__main__":
    run_main(profile(parse_args()), "profile_gateway")
