"""The gateway in front of every fake upstream, for the tests that drive real clients.

`serving(...)` starts the fake OpenAI (which also plays DeepSeek), the fake Anthropic and
the fake Gemini on loopback, and a gateway routing one model of each family to them, with
two accounts: a premium one (the key clients use) and one whose month is already spent (a
quota of 5 tokens, below any prompt's estimate: every request gets the quota 429).

What a client should show for an error is read from the gateway itself, by a plain HTTP
request (`ClientGateway.sentence`): the tests then check that the client surfaces that very
sentence, whatever its wording.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from proxy.app_state import ACCOUNTS, METRICS
from tests.conftest import DEFAULT_TIERS, FakeUpstream, Gateway, GatewayFactory, openai_provider
from tests.fakes.anthropic_upstream import (
    FAKE,
    FakeAnthropic,
    Scenario,
    ToolUse,
    create_fake_anthropic,
)
from tests.fakes.gemini_upstream import create_fake_gemini

OPENAI_MODEL = "woozlit/gpt-4o"
DEEPSEEK_MODEL = "woozlit/deepseek-reasoner"
CLAUDE_MODEL = "woozlit/claude-3-5-sonnet-20241022"
GEMINI_MODEL = "woozlit/gemini-1.5-pro"
# The fake Gemini's "tools" scenario: two get_weather calls (Paris, London), stream or not.
TOOLS_MODEL = "woozlit/gemini-tools"
# The fake OpenAI's "midstream-error" scenario: two chunks, then an error event.
CRASHING_MODEL = "woozlit/gpt-4o-crashing"
UNKNOWN_MODEL = "woozlit/no-such-model"
FAMILIES = [OPENAI_MODEL, DEEPSEEK_MODEL, CLAUDE_MODEL, GEMINI_MODEL]

# What each family's fake answers.
ANSWERS = {
    OPENAI_MODEL: "Hello! How can I help?",
    DEEPSEEK_MODEL: "Hello! How can I help?",
    CLAUDE_MODEL: "Hello from Claude.",
    GEMINI_MODEL: "Hello from Gemini!",
}
REASONING = {DEEPSEEK_MODEL: "Let me think."}
TOOL_CITIES = ["Paris", "London"]

MODELS = {
    OPENAI_MODEL: [{"provider": "openai", "model": "gpt-4o"}],
    DEEPSEEK_MODEL: [{"provider": "deepseek", "model": "deepseek-reasoner"}],
    CLAUDE_MODEL: [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022"}],
    GEMINI_MODEL: [{"provider": "google", "model": "gemini-1.5-pro"}],
    TOOLS_MODEL: [{"provider": "google", "model": "tools"}],
    CRASHING_MODEL: [{"provider": "openai", "model": "midstream-error"}],
}
# Other names of public models, as an operator would configure them for Claude Code (which
# sends its own model names: its default model, and a Haiku for background work).
ALIASES = {"claude-opus-4-8": CLAUDE_MODEL, "claude-haiku-*": CLAUDE_MODEL}
TIERS = {
    **DEFAULT_TIERS,
    "spent": {"monthly_tokens": 5, "requests_per_minute": 100_000, "max_concurrent_requests": 100},
}
QUOTA_SENTENCE = "Monthly token limit exceeded. Your usage will reset next month."
BAD_KEY = "woozlit_" + "x" * 43  # well formed, unknown
HELLO = [{"role": "user", "content": "Hello!"}]
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLAUDE_TOOL = ToolUse("toolu_fake01", "get_weather", {"city": "Paris", "unit": "celsius"})
PROFILES = {"v1": "/v1", "woozlit": "/api/woozlit/v1"}


@dataclass
class ClientGateway:
    gateway: Gateway
    anthropic: FakeAnthropic
    quota_key: str

    @property
    def key(self) -> str:
        return self.gateway.api_key

    @property
    def v1(self) -> str:
        """The OpenAI-compatible profile: the base URL of OpenAI-ecosystem tools."""
        return self.gateway.base_url + "/v1"

    @property
    def api(self) -> str:
        """The Woozlit API profile."""
        return self.gateway.api

    def url(self, profile: str) -> str:
        return self.gateway.base_url + PROFILES[profile]

    def claude_calls_tools(self) -> None:
        """From now on the fake Anthropic answers with a get_weather call."""
        self.anthropic.scenario = Scenario(tools=[CLAUDE_TOOL], text=[])

    def quota_refusals(self) -> float:
        """How many requests the gateway has refused for the monthly quota."""
        registry = self.gateway.app[METRICS].registry
        value = registry.get_sample_value("woozlit_admissions_total", {"result": "quota"})
        return value or 0.0

    async def post(
        self, base: str, body: dict[str, Any], key: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(base + "/chat/completions", json=body, headers=headers) as resp,
        ):
            return resp.status, dict(resp.headers), await resp.read()

    async def sentence(self, case: str, profile: str = "v1") -> str:
        """The sentence the gateway answers for `case` (401, 400, quota, midstream), read with
        a plain HTTP request on `profile`, whichever shape its error body has."""
        base = self.url(profile)
        body: dict[str, Any] = {"model": OPENAI_MODEL, "messages": HELLO, "stream": False}
        key = None
        if case == "401":
            key = BAD_KEY
        elif case == "400":
            body["model"] = UNKNOWN_MODEL
        elif case == "quota":
            key = self.quota_key
        elif case == "midstream":
            body.update(model=CRASHING_MODEL, stream=True)
        else:
            raise ValueError(case)
        status, _, raw = await self.post(base, body, key)
        if case == "midstream":
            assert status == 200, raw
            errors = [
                json.loads(line[6:])["error"]
                for line in raw.split(b"\n")
                if line.startswith(b"data: {") and b'"error"' in line
            ]
            assert len(errors) == 1, raw
            return message_of(errors[0])
        assert status == {"401": 401, "400": 400, "quota": 429}[case], raw
        return message_of(json.loads(raw)["error"])


def message_of(error: Any) -> str:
    """The sentence of an error: `{"message": ...}` on the OpenAI profile, a string on ours."""
    return error["message"] if isinstance(error, dict) else error


@asynccontextmanager
async def serving(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
) -> AsyncIterator[ClientGateway]:
    """The fakes and a gateway in front of them; each test module makes it its fixture."""
    anthropic_server = TestServer(create_fake_anthropic("test-key"))
    gemini_server = TestServer(create_fake_gemini("test-key", chunk_delay=0.01))
    await anthropic_server.start_server()
    await gemini_server.start_server()
    try:
        providers = {
            "openai": openai_provider(fake_openai.url),
            "deepseek": openai_provider(fake_openai.url),
            "anthropic": {
                "kind": "anthropic",
                "base_url": str(anthropic_server.make_url("")).rstrip("/"),
                "api_key": "test-key",
            },
            "google": {
                "kind": "gemini",
                "base_url": str(gemini_server.make_url("")).rstrip("/"),
                "api_key": "test-key",
            },
        }
        gw = await gateway(providers, MODELS, tiers=TIERS, redis_url=redis_url, aliases=ALIASES)
        accounts = gw.app[ACCOUNTS]
        spent = await accounts.create_account({"tier": "spent", "developer": True})
        key = await accounts.create_key(spent["id"], "spent")
        yield ClientGateway(gw, anthropic_server.app[FAKE], key["key"])
    finally:
        await anthropic_server.close()
        await gemini_server.close()


# -- the JavaScript clients ---------------------------------------------------------------

NODE_DIR = Path(__file__).parent / "node"


def _installed_matches_lock(directory: Path) -> bool:
    """npm's own record of node_modules (`.package-lock.json`) lists what the lock lists, less
    the optional packages npm leaves out (those of other platforms)."""
    hidden = directory / "node_modules" / ".package-lock.json"
    if not hidden.exists():
        return False
    want = json.loads((directory / "package-lock.json").read_text())["packages"]
    have = json.loads(hidden.read_text())["packages"]
    want = {
        k: v.get("version")
        for k, v in want.items()
        if k and not (v.get("optional") and k not in have)
    }
    have = {k: v.get("version") for k, v in have.items() if k}
    return want == have


@functools.cache
def install_node_clients(directory: Path = NODE_DIR) -> Path:
    """`directory` (tests/clients/node unless told) with its packages installed (`npm ci`,
    unless they already are)."""
    npm = shutil.which("npm")
    assert npm is not None and shutil.which("node"), "node and npm are needed (node >= 20)"
    if not _installed_matches_lock(directory):
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=directory,
            check=True,
            timeout=300,
            env={**os.environ, "NODE_ENV": "development"},
        )
    return directory


async def run_node(script: str, *args: str, seconds: float = 60) -> dict[str, Any]:
    """Run `node tests/clients/node/<script> ARGS...`; the JSON object it prints last."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / script),
        *args,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()
    result: dict[str, Any] = json.loads(lines[-1])
    return result
