"""The processes under test: start them on free loopback ports, pin them, read /proc, stop them.

Each child writes stdout and stderr to its own log file, which is polled for the line that
says it is ready: nothing reads a pipe during a measurement, so a chatty gateway (access
logs) costs the load generator nothing. Every child is started in its own session and
stopped by its own pid (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

# The fakes and the Redis launcher are the tests' (tests/fakes/, tests/redis_binary.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_binary import RedisServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nobody listens on now (small race: fine for a benchmark)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """pid and all its descendants (for a gateway with --workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += parents.get(p, [])
    return tree


def cpu_ticks(pids: Iterable[int]) -> int:
    """utime + stime of these processes, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total


def time_wait_sockets() -> int:
    """TCP sockets in TIME_WAIT on this machine (/proc/net/sockstat), 0 if unknown."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("tw") + 1])
    except (OSError, ValueError):
        pass
    return 0


def open_fds(pid: int) -> int:
    """Open file descriptors of one process (0 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of VmRSS (shared pages of forked workers are counted once per process)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def core_times() -> dict[int, tuple[int, int, int]]:
    """Per cpu: (busy, steal, total) ticks since boot, from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *values = line.split()
            v = [int(x) for x in values]
            idle = v[3] + v[4]  # idle + iowait
            steal = v[7] if len(v) > 7 else 0
            total = sum(v[:8])
            out[int(name[3:])] = (total - idle - steal, steal, total)
    return out


def pin(pids: Iterable[int], cpus: set[int] | None) -> None:
    """Pin every thread of these processes to cpus (None: leave them alone)."""
    if not cpus:
        return
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


@dataclass
class Proc:
    """One child process and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    cpus: set[int] | None = None
    output: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[int]:
        return children_of(self.pid)

    def cpu_ticks(self) -> int:
        return cpu_ticks(self.tree())

    def rss_kib(self) -> int:
        return rss_kib(self.tree())

    def pin(self, cpus: set[int] | None) -> None:
        pin(self.tree(), cpus)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Poll the log until a line matches; raise with the log's tail if it never does."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.output = self.log.read_text(errors="replace")
            except OSError:
                self.output = ""
            found = regex.search(self.output)
            if found:
                return found
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.popen.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(grace)


@dataclass
class Harness:
    """Starts and owns the child processes of one benchmark run."""

    workdir: Path
    target_cpus: set[int] | None
    harness_cpus: set[int] | None
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> Proc:
        """Start argv with env (default: ours) and its output in a log file."""
        log = self.workdir / f"{name}.log"
        full_env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=full_env,
                start_new_session=True,
            )
        proc = Proc(name, popen, log, cpus)
        self.procs.append(proc)
        proc.pin(cpus)  # before the interpreter has started any thread
        return proc

    def ready(self, proc: Proc, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        found = proc.wait_for(pattern, timeout)
        proc.pin(proc.cpus)  # again, for threads started since
        return found

    def start_upstream(self, chunks: int) -> tuple[Proc, int]:
        port = free_port()
        proc = self.spawn(
            "upstream",
            [
                sys.executable,
                "-m",
                "tests.fakes",  # cwd is ROOT
                "--port",
                str(port),
                "--chunks",
                str(chunks),
            ],
            cpus=self.harness_cpus,
        )
        self.ready(proc, r"listening on http://")
        return proc, port

    def start_bare(self, upstream_port: int) -> tuple[Proc, int]:
        port = free_port()
        proc = self.spawn(
            "bare",
            [
                sys.executable,
                str(HERE / "bare_passthrough.py"),
                "--port",
                str(port),
                "--upstream",
                f"http://127.0.0.1:{upstream_port}",
            ],
            cpus=self.target_cpus,
        )
        self.ready(proc, r"listening on http://")
        return proc, port

    def start_redis(self) -> tuple[Proc, int]:
        """A redis-server (nothing saved) started as the tests start theirs, but as our child:
        its output in redis.log, pinned to the harness's cpus, its CPU time read."""
        spawned: list[Proc] = []

        def popen(argv: list[str]) -> subprocess.Popen[bytes]:
            spawned.append(self.spawn("redis", argv, cpus=self.harness_cpus))
            return spawned[-1].popen

        server = RedisServer(dir=self.workdir / "redis-data", popen=popen)
        server.dir.mkdir()
        server.start(timeout=30)
        spawned[-1].pin(spawned[-1].cpus)  # again, for threads started since
        return spawned[-1], server.port

    def start_gateway(
        self,
        upstream_port: int,
        config: Path,
        env: Mapping[str, str],
        workers: int | None,
        expect_key: bool,
        launcher: Path | None = None,
        name: str = "gateway",
    ) -> tuple[Proc, int, str | None]:
        port = free_port()
        program = [str(launcher)] if launcher else ["-m", "proxy"]
        argv = [
            sys.executable,
            *program,
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        if workers is not None:
            argv += ["--workers", str(workers)]
        # Our WOOZLIT_* settings (a Redis URL, a config path) must not leak into the run.
        base = {k: v for k, v in os.environ.items() if not k.startswith("WOOZLIT_")}
        proc = self.spawn(
            name,  # also its log file's name
            argv,
            cpus=self.target_cpus,
            env={
                **base,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
                "OPENAI_API_KEY": "bench",
                # The same fake as Anthropic's Messages API: its root URL, no /v1.
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{upstream_port}",
                "ANTHROPIC_API_KEY": "bench",
                **env,
            },
        )
        self.ready(proc, r"woozlit-proxy: listening on http://")
        key = None
        if expect_key:
            key = proc.wait_for(r"bootstrap developer key: (woozlit_\S+)", 5.0).group(1)
        return proc, port, key

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"bench: could not stop {proc.name} ({proc.pid}): {exc}", file=sys.stderr)


def run_main(main: Coroutine[Any, Any, int], name: str) -> NoReturn:
    """Run a benchmark's main coroutine (uvloop if there); SIGTERM or ^C stop its children."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through `finally`, which stops the children

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        import uvloop
    except ImportError:
        run: Any = asyncio.run
    else:
        run = uvloop.run
    try:
        sys.exit(run(main))
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
