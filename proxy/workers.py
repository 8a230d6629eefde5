"""`serve --workers N`: N gateway processes on one port, and a parent that supervises them.

Each worker is a `woozlit-proxy serve` process of its own (its own event loop, pools and
Redis connection) that binds the same port with SO_REUSEPORT, so the kernel spreads new
connections over them. The parent only watches: it restarts a worker that dies (backing off
if it keeps dying), forwards SIGTERM and SIGINT so every worker drains gracefully, and exits
once they all have. Metrics are shared through prometheus-client's multiprocess mode: every
worker writes its values to files in one directory, and /metrics on any worker sums them.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

WORKER_ENV = "WOOZLIT_WORKER"  # set in a worker: its index
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTART_BACKOFF_MAX = 10.0


def supervise(worker_args: list[str], workers: int, host: str, port: int) -> int:
    """Run `workers` copies of `woozlit-proxy serve <worker_args>` until SIGTERM; exit code."""
    from prometheus_client import multiprocess

    problem = _bind_error(host, port)
    if problem is not None:  # before any worker: none would bind, each restarted forever
        print(cannot_listen(host, port, problem), file=sys.stderr, flush=True)
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="woozlit-metrics-")
    base_env = {**os.environ, METRICS_DIR_ENV: metrics_dir}
    command = [sys.executable, "-m", "proxy", "serve", *worker_args]

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env={**base_env, WORKER_ENV: str(index)})

    procs = {i: start(i) for i in range(workers)}
    started = {i: time.monotonic() for i in procs}
    backoff = dict.fromkeys(procs, 0.5)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    announced = False
    try:
        while True:
            if not announced and _listening(host, port):
                print(f"woozlit-proxy: listening on http://{host}:{port} "
                      f"({workers} workers)", flush=True)  # fmt: skip
                announced = True
            if stopping and all(p.poll() is not None for p in procs.values()):
                break
            for index, proc in list(procs.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                multiprocess.mark_process_dead(proc.pid, metrics_dir)
                # A worker that died soon after it started backs off before the next try.
                quick = time.monotonic() - started[index] < 5
                backoff[index] = min(backoff[index] * 2, RESTART_BACKOFF_MAX) if quick else 0.5
                print(f"woozlit-proxy: worker {index} exited ({code}); restarting",
                      file=sys.stderr, flush=True)  # fmt: skip
                time.sleep(backoff[index] if quick else 0)
                if not stopping:
                    procs[index] = start(index)
                    started[index] = time.monotonic()
            time.sleep(0.1)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = {index: proc.returncode for index, proc in procs.items()}
    # Killed by our SIGTERM means stopped before it listened (a listening worker drains and
    # exits 0), so with nothing in flight: that is a clean stop too.
    if any(code not in (0, -signal.SIGTERM) for code in codes.values()):
        print(f"woozlit-proxy: workers exited with {codes}", file=sys.stderr, flush=True)
        return 1
    return 0


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host if host != "0.0.0.0" else "127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """The one line that says why `host:port` cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        return f"woozlit-proxy: port {port} is in use"
    return f"woozlit-proxy: cannot listen on {host}:{port}: {exc.strerror or exc}"


def _bind_error(host: str, port: int) -> OSError | None:
    """Why the pool could not bind `host:port`, or None. Without SO_REUSEPORT, as our workers
    bind, a port still held by anything (an older pool too) is refused here, not shared."""
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # as asyncio's create_server binds it
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        return exc
    return None
