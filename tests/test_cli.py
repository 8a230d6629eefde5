"""`woozlit-proxy` as a new user runs it: from any directory, on the routing table shipped in
the package; `serve` with the embedded store reachable from this machine only; a port still
held is one line and exit status 1, with nothing left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from proxy.config import DEFAULT_CONFIG_PATH
from tests.conftest import DEFAULT_TIERS, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
LISTENING = "woozlit-proxy: listening on "


def environ(redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """The test's environment without WOOZLIT_*; the package importable from anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WOOZLIT_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = str(ROOT)  # as an installed package is
    if redis_url:
        env["WOOZLIT_REDIS_URL"] = redis_url
    return {**env, **extra}


async def run(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -W default -m proxy ARGS`, which shows
    ResourceWarnings (an unclosed socket, say); killed after 30 s."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "default", "-m", "proxy", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"still running after 30 s: {out!r} {err!r}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def tagged(tag: str) -> list[int]:
    """Processes whose environment carries WOOZLIT_TEST_TAG=tag (ours and their children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"WOOZLIT_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


# -- the shipped routing table -----------------------------------------------------------


def test_the_repository_config_is_the_package_s_table() -> None:
    """One file, not two copies: config/woozlit.yaml is the table the package ships."""
    assert Path(DEFAULT_CONFIG_PATH).is_absolute()
    assert (ROOT / "config" / "woozlit.yaml").resolve() == Path(DEFAULT_CONFIG_PATH).resolve()


def one_model_less(path: Path) -> Path:
    """The shipped table without woozlit/gpt-4o, written to `path`."""
    table = yaml.safe_load(Path(DEFAULT_CONFIG_PATH).read_text())
    del table["models"]["woozlit/gpt-4o"]
    path.write_text(yaml.safe_dump(table))
    return path


async def test_check_config_from_any_directory(tmp_path: Path) -> None:
    other = one_model_less(tmp_path / "other.yaml")
    env = environ()

    rc, out, err = await run("check-config", cwd=tmp_path, env=env)
    assert (rc, err) == (0, ""), err
    assert out == f"{DEFAULT_CONFIG_PATH}: ok (4 providers, 12 models)\n"

    # --config, $WOOZLIT_CONFIG, and the path as an argument (as before) name another file.
    for args, extra in [
        (["--config", str(other)], {}),
        ([], {"WOOZLIT_CONFIG": str(other)}),
        ([str(other)], {}),
        (["--config", str(other)], {"WOOZLIT_CONFIG": str(tmp_path / "missing.yaml")}),
    ]:
        rc, out, err = await run("check-config", *args, cwd=tmp_path, env={**env, **extra})
        assert (rc, out, err) == (0, f"{other}: ok (4 providers, 11 models)\n", ""), args

    rc, out, err = await run(
        "check-config", "--config", str(tmp_path / "missing.yaml"), cwd=tmp_path, env=env
    )
    assert rc == 1 and out == ""
    assert err.startswith(f"{tmp_path / 'missing.yaml'}: cannot read")


async def test_admin_commands_from_any_directory(tmp_path: Path, redis_url: str) -> None:
    rc, out, err = await run(
        "account", "create", "--tier", "free", cwd=tmp_path, env=environ(redis_url)
    )
    assert rc == 0, err
    assert yaml.safe_load(out)["tier"] == "free"


async def test_serve_from_any_directory(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--port", "0", cwd=tmp_path, env=environ(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            lines = [(await proc.stdout.readline()).decode() for _ in range(2)]
        assert lines[0].startswith("woozlit-proxy: bootstrap developer key: woozlit_"), lines
        assert lines[1].startswith(LISTENING), lines
    finally:
        proc.kill()
        await proc.communicate()


# -- which address serve binds -----------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "in_config", "flag", "bound"),
    [
        ("embedded", None, None, "127.0.0.1"),
        ("redis", None, None, "0.0.0.0"),
        ("embedded", "0.0.0.0", None, "0.0.0.0"),
        ("redis", "127.0.0.1", None, "127.0.0.1"),
        ("embedded", "0.0.0.0", "127.0.0.1", "127.0.0.1"),
        ("redis", None, "127.0.0.1", "127.0.0.1"),
    ],
    ids=[
        "embedded-loopback",
        "redis-all",
        "embedded-config-wins",
        "redis-config-wins",
        "flag-wins-over-config",
        "flag-wins-over-store",
    ],
)
async def test_serve_binds(
    store: str,
    in_config: str | None,
    flag: str | None,
    bound: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """--host, else the config's server.host, else 127.0.0.1 with the embedded store (which
    prints a key to an unlimited account) and 0.0.0.0 with Redis."""
    server: dict = {"shutdown_grace_seconds": 0}
    if in_config:
        server["host"] = in_config
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "providers": {"local": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                "models": {"woozlit/m": [{"provider": "local", "model": "m"}]},
                "tiers": DEFAULT_TIERS,
                "server": server,
            }
        )
    )
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    port = free_port()
    # Two workers with Redis: the default (one per core) binds through the supervisor too.
    args = ["serve", "--config", str(path), "--port", str(port)]
    args += ["--workers", "2"] if store == "redis" else []
    args += ["--host", flag] if flag else []
    tag = uuid.uuid4().hex
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, cwd=tmp_path,
        env=environ(redis_url, WOOZLIT_TEST_TAG=tag),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            while not (line := (await proc.stdout.readline()).decode()).startswith(LISTENING):
                assert line, "exited before listening"
        assert line.startswith(f"{LISTENING}http://{bound}:{port}"), line
        # The line says when only this machine can connect, and why.
        local = "(embedded store: only this machine can connect;" in line
        assert local == (store == "embedded" and bound == "127.0.0.1"), line
        await eventually(lambda: listening_addresses(port) == {bound})
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    finally:
        for pid in tagged(tag):
            os.kill(pid, signal.SIGKILL)
        await proc.wait()


# -- a port still held -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "holder_reuses_port"),
    [(1, False), (2, False), (2, True)],
    ids=["one-process", "two-workers", "two-workers-port-held-by-a-pool"],
)
async def test_a_port_in_use_is_one_line_and_exit_1(
    workers: int, holder_reuses_port: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """No traceback, no "Unclosed client session", no worker left behind, no worker joining
    a port that another pool (SO_REUSEPORT, as our workers bind) still serves."""
    holder = socket.socket()
    if holder_reuses_port:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    redis_url = request.getfixturevalue("redis_url") if workers > 1 else None
    tag = uuid.uuid4().hex
    try:
        rc, out, err = await run(
            *("serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
            cwd=tmp_path,
            env=environ(redis_url, WOOZLIT_TEST_TAG=tag),
        )
        assert (rc, out, err) == (1, "", f"woozlit-proxy: port {port} is in use\n")
        assert tagged(tag) == []
    finally:
        holder.close()
        for pid in tagged(tag):
            os.kill(pid, signal.SIGKILL)


async def test_try_it_with_the_fake_in_every_protocol(tmp_path: Path) -> None:
    """The README's "Try it" with no provider key: the fake upstream (`python -m tests.fakes`)
    and the gateway on its embedded defaults, pointed at it as the README says, answer chat
    completions, Messages (and count_tokens) and Responses, through the official SDKs."""
    import anthropic
    import openai

    port = free_port()
    fake = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes", "--port", str(port), cwd=ROOT, env=environ(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    env = environ(
        OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
        ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}",
        ANTHROPIC_API_KEY="any",
    )
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--port", "0", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert gateway.stdout is not None
        async with asyncio.timeout(15):
            lines = [(await gateway.stdout.readline()).decode() for _ in range(2)]
        key = lines[0].rsplit(" ", 1)[1].strip()
        base = lines[1].removeprefix(LISTENING).split()[0]
        chat = openai.AsyncOpenAI(api_key=key, base_url=base + "/v1", max_retries=0)
        claude = anthropic.AsyncAnthropic(api_key=key, base_url=base, max_retries=0)
        hello = [{"role": "user", "content": "Hello!"}]
        completion = await chat.chat.completions.create(model="woozlit/gpt-4o-mini", messages=hello)  # type: ignore[arg-type]
        assert completion.choices[0].message.content
        response = await chat.responses.create(model="woozlit/gpt-4o-mini", input="Hello!")
        assert response.output_text and response.usage is not None
        message = await claude.messages.create(
            model="woozlit/claude-3-5-haiku-20241022",
            max_tokens=100,
            messages=hello,  # type: ignore[arg-type]
        )
        assert message.content and message.usage.output_tokens > 0
        counted = await claude.messages.count_tokens(
            model="woozlit/claude-3-5-haiku-20241022",
            messages=hello,  # type: ignore[arg-type]
        )
        assert counted.input_tokens > 0
        await chat.close()
        await claude.close()
    finally:
        for proc in (gateway, fake):
            proc.kill()
            await proc.communicate()
