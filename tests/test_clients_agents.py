"""The agents that speak the gateway's Responses and Messages protocols, run as their users run
them, on every model family of tests/clients/harness.py.

- The OpenAI Agents SDK with its default model class, `OpenAIResponsesModel` (the Responses
  API), on a default client pointed at the gateway (`set_default_openai_client`). The SDK's
  `MultiProvider` reads a name with a slash as `prefix/model` and refuses `woozlit/...`
  ("Unknown prefix: woozlit"); `MultiProvider(unknown_prefix_mode="model_id")` keeps the name
  whole. What it sends: no `store` (the API's default, true), no `previous_response_id`,
  `include: []`, the whole conversation in `input` at every turn: after a tool call, the
  `function_call` items of the answer (with their `id`s) and a `function_call_output` each.
- Claude Code 2.1.332 (`claude -p`, the Messages API) and Codex CLI 0.171.0 (`codex exec`, the
  Responses API), one turn each, checked for the fake's answer in their JSON output and for
  the account charged exactly the usage they report. Both run offline against the gateway:
  - Claude Code: `ANTHROPIC_BASE_URL` is what stands before `/v1/messages` (it posts to
    `/v1/messages?beta=true`); `ANTHROPIC_API_KEY` arrives as `x-api-key`,
    `ANTHROPIC_AUTH_TOKEN` as `Authorization: Bearer`. With `DISABLE_TELEMETRY`,
    `DISABLE_AUTOUPDATER`, `DISABLE_ERROR_REPORTING` and
    `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC` it makes no other request, not even a `HEAD`
    (without the last, it first sends `HEAD <base>/api/hello` and goes on whatever the
    status). `--model` is sent verbatim; no other model was seen, headless or interactive
    (where it names the session with the same model); without `--model` it sends its default,
    `claude-opus-5-5` in this version, which an operator maps with an alias.
  - Codex: `tests/clients/cli/codex.config.toml`, the gateway as a custom provider with
    `wire_api = "responses"`, `web_search = "disabled"` (else Codex adds a hosted
    `web_search` tool), update check, analytics and feedback off. It still sends a tool of
    type `namespace` (its sub-agent tools) beside plain functions.

Both CLIs are pinned in tests/clients/cli/package-lock.json, apart from the JavaScript
libraries of tests/clients/node: each ships a native binary (about 400 MB installed, 345 MB
downloaded for the two), which the library tests need not fetch. `npm ci` installs them once
per run (about 10 s here) unless node_modules already matches the lock; CI runs it through
this module's fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from string import Template
from typing import Any

import aiohttp
import pytest

from tests.clients.harness import (
    ANSWERS,
    CLAUDE_MODEL,
    CLAUDE_TOOL,
    FAMILIES,
    OPENAI_MODEL,
    QUOTA_SENTENCE,
    TOOL_CITIES,
    TOOLS_MODEL,
    ClientGateway,
    install_node_clients,
    serving,
)
from tests.conftest import FakeUpstream, Gateway, GatewayFactory, openai_provider
from tests.fakes.anthropic_upstream import Scenario

CLI_DIR = Path(__file__).parent / "clients" / "cli"
CLI_SECONDS = 120
# Claude Code's switches for a machine that reaches only the base URL.
CLAUDE_OFFLINE = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
# Which fakes call the tool when offered one (the others answer their text).
CALLERS = [TOOLS_MODEL, CLAUDE_MODEL]


@pytest.fixture
async def client_gateway(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str
) -> AsyncIterator[ClientGateway]:
    async with serving(gateway, fake_openai, redis_url) as served:
        yield served


NATIVE_MODEL = "woozlit/gpt-4o"
NATIVE_TOOLS_MODEL = "woozlit/gpt-4o-tools"  # the fake's "tools": a call, then "It is sunny."
SUNNY = "It is sunny."


@pytest.fixture
async def native(gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str) -> Gateway:
    """A gateway whose OpenAI deployments speak the Responses API (`responses_api`): Responses
    clients are answered by the fake OpenAI's own /v1/responses, natively."""
    models = {
        NATIVE_MODEL: [{"provider": "openai", "model": "gpt-4o"}],
        NATIVE_TOOLS_MODEL: [{"provider": "openai", "model": "tools"}],
    }
    providers = {"openai": openai_provider(fake_openai.url, responses_api=True)}
    return await gateway(providers, models, redis_url=redis_url)


# -- the OpenAI Agents SDK ------------------------------------------------------------------


@asynccontextmanager
async def default_client(v1: str, key: str) -> AsyncIterator[list[dict[str, Any]]]:
    """The SDK's default client pointed at a gateway's /v1 for a while; the JSON bodies it
    sends, in order."""
    from agents import set_default_openai_client, set_tracing_disabled
    from agents.models import _openai_shared
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    sent: list[dict[str, Any]] = []

    async def record(request: Any) -> None:
        sent.append(json.loads(request.content))

    client = AsyncOpenAI(
        base_url=v1,
        api_key=key,
        timeout=20,
        http_client=DefaultAsyncHttpxClient(event_hooks={"request": [record]}),
    )
    previous = _openai_shared.get_default_openai_client()
    set_tracing_disabled(True)  # traces would go to OpenAI
    set_default_openai_client(client, use_for_tracing=False)
    try:
        yield sent
    finally:
        _openai_shared.set_default_openai_client(previous)
        await client.close()


@pytest.fixture
async def sent_by_agents(client_gateway: ClientGateway) -> AsyncIterator[list[dict[str, Any]]]:
    async with default_client(client_gateway.v1, client_gateway.key) as sent:
        yield sent


def run_config() -> Any:
    """The provider that passes `woozlit/...` names through whole."""
    from agents import MultiProvider, RunConfig

    return RunConfig(model_provider=MultiProvider(unknown_prefix_mode="model_id"))


async def agent_answer(agent: Any, prompt: str, stream: bool) -> tuple[Any, str]:
    """(the run's final output, the text deltas streamed, "" when not streamed)."""
    from agents import Runner
    from openai.types.responses import ResponseTextDeltaEvent

    if not stream:
        return (await Runner.run(agent, prompt, run_config=run_config())).final_output, ""
    run = Runner.run_streamed(agent, prompt, run_config=run_config())
    received = ""
    async for event in run.stream_events():
        if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
            received += event.data.delta
    return run.final_output, received


async def test_agents_default_model_is_the_responses_api(
    sent_by_agents: list[dict[str, Any]],
) -> None:
    from agents import MultiProvider, OpenAIResponsesModel, UserError

    assert isinstance(
        MultiProvider(unknown_prefix_mode="model_id").get_model(CLAUDE_MODEL), OpenAIResponsesModel
    )
    with pytest.raises(UserError, match="Unknown prefix: woozlit"):
        MultiProvider().get_model(CLAUDE_MODEL)  # the default: what a user must change


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
@pytest.mark.parametrize("model", FAMILIES)
async def test_agents_run(
    client_gateway: ClientGateway, sent_by_agents: list[dict[str, Any]], model: str, stream: bool
) -> None:
    from agents import Agent

    output, received = await agent_answer(Agent(name="assistant", model=model), "Hello!", stream)
    assert output == ANSWERS[model]
    assert received == (ANSWERS[model] if stream else "")
    [body] = sent_by_agents
    assert (body["model"], body["input"]) == (model, [{"role": "user", "content": "Hello!"}])
    assert body.get("stream", False) is stream
    assert "store" not in body and "previous_response_id" not in body


async def test_agents_default_model_from_the_environment(
    client_gateway: ClientGateway,
    sent_by_agents: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An Agent with no model at all takes the SDK's default, `OPENAI_DEFAULT_MODEL`, on the
    default client: a `woozlit/...` name there needs no RunConfig (the default model is not
    parsed for a provider prefix), as docs/protocols.md says."""
    from agents import Agent, Runner

    monkeypatch.setenv("OPENAI_DEFAULT_MODEL", CLAUDE_MODEL)
    result = await Runner.run(Agent(name="assistant"), "Hello!")
    assert result.final_output == ANSWERS[CLAUDE_MODEL]
    [body] = sent_by_agents
    assert body["model"] == CLAUDE_MODEL


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
@pytest.mark.parametrize("model", [*FAMILIES, TOOLS_MODEL])
async def test_agents_function_tool(
    client_gateway: ClientGateway, sent_by_agents: list[dict[str, Any]], model: str, stream: bool
) -> None:
    """Claude's fake calls the tool, then (set back by the tool) answers its text: the second
    turn sends the call and its output. The fake Gemini's tools model calls it at every turn:
    the run stops on the first tool call. The other fakes answer their text, the tool offered."""
    from agents import Agent, function_tool

    cities: list[str] = []

    @function_tool
    def get_weather(city: str, unit: str = "celsius") -> str:
        """Current weather in a city."""
        cities.append(city)
        client_gateway.anthropic.scenario = Scenario()  # Claude answers text from now on
        return f"21 {unit} in {city}"

    if model == CLAUDE_MODEL:
        client_gateway.claude_calls_tools()
    behavior = "stop_on_first_tool" if model == TOOLS_MODEL else "run_llm_again"
    agent = Agent(name="a", model=model, tools=[get_weather], tool_use_behavior=behavior)
    output, _ = await agent_answer(agent, "Weather in Paris and London?", stream)
    assert all(body["tools"][0]["name"] == "get_weather" for body in sent_by_agents)
    if model == TOOLS_MODEL:
        assert (cities, output) == (TOOL_CITIES, "21 celsius in Paris")
    elif model == CLAUDE_MODEL:
        assert (cities, output) == (["Paris"], ANSWERS[CLAUDE_MODEL])
        call, result = sent_by_agents[1]["input"][1:]
        assert (call["type"], call["name"], json.loads(call["arguments"])) == (
            "function_call",
            "get_weather",
            CLAUDE_TOOL.input,
        )
        assert (result["type"], result["call_id"]) == ("function_call_output", call["call_id"])
        assert result["output"] == "21 celsius in Paris"
    else:
        assert (cities, output, len(sent_by_agents)) == ([], ANSWERS[model], 1)


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
async def test_agents_native_openai_tool_loop(native: Gateway, stream: bool) -> None:
    """On a deployment that speaks the Responses API: the call, the tool run, and the second
    turn with the call (its id from the answer) and its output, answered."""
    from agents import Agent, function_tool

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"21 celsius in {city}"

    async with default_client(native.base_url + "/v1", native.api_key) as sent:
        agent = Agent(name="a", model=NATIVE_TOOLS_MODEL, tools=[get_weather])
        output, received = await agent_answer(agent, "Weather in Paris?", stream)
    assert output == SUNNY and received == (SUNNY if stream else "")
    call, result = sent[1]["input"][1:]
    assert (call["type"], call["name"], json.loads(call["arguments"])) == (
        "function_call",
        "get_weather",
        {"city": "Paris"},
    )
    assert call["id"]  # the item's id in the gateway's answer, sent back
    assert (result["call_id"], result["output"]) == (call["call_id"], "21 celsius in Paris")


# -- the agent CLIs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_dir() -> Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm (Node 20 or newer) are not installed: the agent CLIs' tests")
    return install_node_clients(CLI_DIR)


async def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one run, stdin closed, nothing of our environment
    passed on but PATH."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def used(gw: Gateway) -> int:
    """The tokens the gateway's account has used this month (GET /v1/usage)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.base_url + "/v1/usage", headers=gw.auth()) as r,
    ):
        assert r.status == 200, await r.text()
        tokens: int = (await r.json())["used"]
        return tokens


async def charged(gw: Gateway, before: int, expected: int) -> int:
    """What the account was charged since `before`, once it is `expected` or after 10 s (the
    settlement may land just after the client read the end of the answer)."""
    for _ in range(100):
        if (now := await used(gw)) - before == expected:
            break
        await asyncio.sleep(0.1)
    return now - before


async def claude(
    cli: Path, base: str, model: str, home: Path, auth: dict[str, str], status: int = 0
) -> dict[str, Any]:
    """`claude -p "say hi" --model MODEL --output-format json`: its result object, once it
    exited with `status`."""
    env = {"HOME": str(home), "ANTHROPIC_BASE_URL": base, **CLAUDE_OFFLINE, **auth}
    argv = [str(cli / "node_modules" / ".bin" / "claude"), "-p", "say hi", "--model", model]
    exited, out, err = await run_cli([*argv, "--output-format", "json"], env, home)
    assert exited == status, (out, err)
    result: dict[str, Any] = json.loads(out)
    return result


def billed(usage: dict[str, Any]) -> int:
    """Everything an Anthropic usage bills (Messages API reference: Usage)."""
    return int(
        usage["input_tokens"]
        + (usage.get("cache_creation_input_tokens") or 0)
        + (usage.get("cache_read_input_tokens") or 0)
        + usage["output_tokens"]
    )


@pytest.mark.parametrize("model", FAMILIES)
async def test_claude_code_one_turn(
    client_gateway: ClientGateway, cli_dir: Path, tmp_path: Path, model: str
) -> None:
    before = await used(client_gateway.gateway)
    sent_before = len(client_gateway.anthropic.requests)
    auth = {"ANTHROPIC_API_KEY": client_gateway.key}
    result = await claude(cli_dir, client_gateway.gateway.base_url, model, tmp_path, auth)
    assert (result["subtype"], result["is_error"], result["num_turns"]) == ("success", False, 1)
    assert result["result"] == ANSWERS[model]
    tokens = billed(result["usage"])
    assert await charged(client_gateway.gateway, before, tokens) == tokens
    if model == CLAUDE_MODEL:  # the request went to Anthropic as Claude Code sent it
        [upstream] = client_gateway.anthropic.requests[sent_before:]
        assert upstream.body["model"] == "claude-3-5-sonnet-20241022"
        assert upstream.body["metadata"]["user_id"]
        assert "claude-code-20250219" in upstream.headers.get("anthropic-beta", "")


async def test_claude_code_own_model_name(
    client_gateway: ClientGateway, cli_dir: Path, tmp_path: Path
) -> None:
    """`--model claude-opus-4-8`, a name of Claude Code's own (an alias in the harness): it then
    sends what it sends its default models (`thinking: adaptive`, `output_config.effort`,
    `context_management`, their betas, a `system` turn inside `messages`). The fake refuses
    that turn under the beta Claude Code 2.1.332 names (400, passed through); Claude Code
    retries without it, and the answer is charged."""
    before = await used(client_gateway.gateway)
    auth = {"ANTHROPIC_API_KEY": client_gateway.key}
    base = client_gateway.gateway.base_url
    result = await claude(cli_dir, base, "claude-opus-4-8", tmp_path, auth)
    assert (result["subtype"], result["result"]) == ("success", ANSWERS[CLAUDE_MODEL]), result
    tokens = billed(result["usage"])
    assert await charged(client_gateway.gateway, before, tokens) == tokens
    upstream = client_gateway.anthropic.requests[-1]
    assert upstream.body["model"] == "claude-3-5-sonnet-20241022"
    assert upstream.body["thinking"]["type"] == "adaptive"
    assert "effort" in upstream.body["output_config"]
    assert "context_management" in upstream.body


@pytest.mark.parametrize(
    ("credential", "prefix"),
    [("ANTHROPIC_AUTH_TOKEN", ""), ("ANTHROPIC_API_KEY", "/api/woozlit")],
    ids=["bearer-v1", "x-api-key-woozlit"],
)
async def test_claude_code_auth_and_profile(
    client_gateway: ClientGateway, cli_dir: Path, tmp_path: Path, credential: str, prefix: str
) -> None:
    """`ANTHROPIC_AUTH_TOKEN` is sent as a bearer token; a base URL ending in /api/woozlit puts
    the request on /api/woozlit/v1/messages."""
    base = client_gateway.gateway.base_url + prefix
    result = await claude(cli_dir, base, CLAUDE_MODEL, tmp_path, {credential: client_gateway.key})
    assert (result["subtype"], result["result"]) == ("success", ANSWERS[CLAUDE_MODEL])


async def test_claude_code_quota(
    client_gateway: ClientGateway, cli_dir: Path, tmp_path: Path
) -> None:
    """The quota 429 (`x-should-retry: false`) is sent once and its sentence shown."""
    before = client_gateway.quota_refusals()
    auth = {"ANTHROPIC_API_KEY": client_gateway.quota_key}
    base = client_gateway.gateway.base_url
    result = await claude(cli_dir, base, CLAUDE_MODEL, tmp_path, auth, status=1)
    assert (result["is_error"], result["api_error_status"]) == (True, 429), result
    assert QUOTA_SENTENCE in result["result"]
    assert client_gateway.quota_refusals() - before == 1


async def codex(
    cli: Path,
    base_url: str,
    key: str,
    model: str,
    tmp: Path,
    status: int = 0,
    web_search: bool = False,
) -> list[dict[str, Any]]:
    """`codex exec --json "say hi"` with tests/clients/cli/codex.config.toml (less its
    `web_search = "disabled"` if `web_search`): its events, once it exited with `status`."""
    home, work = tmp / "codex", tmp / "work"
    home.mkdir()
    work.mkdir()
    config = Template((CLI_DIR / "codex.config.toml").read_text())
    text = config.substitute(base_url=base_url, model=model)
    if web_search:
        text = text.replace('web_search = "disabled"\n', "")
    (home / "config.toml").write_text(text)
    env = {"HOME": str(tmp), "CODEX_HOME": str(home), "WOOZLIT_API_KEY": key}
    argv = [str(cli / "node_modules" / ".bin" / "codex"), "exec", "--json"]
    exited, out, err = await run_cli([*argv, "--skip-git-repo-check", "say hi"], env, work)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert exited == status, (events, err)
    return events


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("profile", ["v1", "woozlit"])
async def test_codex_one_turn(
    client_gateway: ClientGateway, cli_dir: Path, tmp_path: Path, profile: str, model: str
) -> None:
    before = await used(client_gateway.gateway)
    base = client_gateway.url(profile)
    events = await codex(cli_dir, base, client_gateway.key, model, tmp_path)
    said = [e["item"]["text"] for e in events if e.get("item", {}).get("type") == "agent_message"]
    assert said == [ANSWERS[model]], events
    [usage] = [e["usage"] for e in events if e["type"] == "turn.completed"]
    tokens = usage["input_tokens"] + usage["output_tokens"]  # cached and reasoning within
    assert tokens > 0
    assert await charged(client_gateway.gateway, before, tokens) == tokens


async def test_codex_quota(client_gateway: ClientGateway, cli_dir: Path, tmp_path: Path) -> None:
    """The quota 429 (`code: insufficient_quota`) is sent once, with Codex's default retries;
    Codex shows its own sentence for that code, not the gateway's."""
    before = client_gateway.quota_refusals()
    key = client_gateway.quota_key
    events = await codex(cli_dir, client_gateway.v1, key, CLAUDE_MODEL, tmp_path, status=1)
    [failed] = [e["error"]["message"] for e in events if e["type"] == "turn.failed"]
    assert failed == "Quota exceeded. Check your plan and billing details."
    assert client_gateway.quota_refusals() - before == 1


async def test_codex_web_search_left_on(
    client_gateway: ClientGateway, cli_dir: Path, tmp_path: Path
) -> None:
    """Codex's default hosted `web_search` tool, on a deployment that does not speak the
    Responses API: a 400 naming the tool, shown by Codex, not dropped in silence."""
    key = client_gateway.key
    events = await codex(
        cli_dir, client_gateway.v1, key, CLAUDE_MODEL, tmp_path, status=1, web_search=True
    )
    [failed] = [e["error"]["message"] for e in events if e["type"] == "turn.failed"]
    error = json.loads(failed)["error"]  # Codex shows the body as it came
    assert error["type"] == "invalid_request_error" and "'web_search'" in error["message"]


async def test_codex_native_openai(native: Gateway, cli_dir: Path, tmp_path: Path) -> None:
    """On a deployment that speaks the Responses API, Codex's request as it is, `web_search`
    tool included, passes natively."""
    before = await used(native)
    base = native.base_url + "/v1"
    events = await codex(cli_dir, base, native.api_key, NATIVE_MODEL, tmp_path, web_search=True)
    said = [e["item"]["text"] for e in events if e.get("item", {}).get("type") == "agent_message"]
    assert said == [ANSWERS[OPENAI_MODEL]], events
    [usage] = [e["usage"] for e in events if e["type"] == "turn.completed"]
    tokens = usage["input_tokens"] + usage["output_tokens"]
    assert await charged(native, before, tokens) == tokens
