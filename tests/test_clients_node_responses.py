"""The Responses API from JavaScript: the Vercel AI SDK's default `openai(model)` provider
(`@ai-sdk/openai`, which speaks the Responses API) and the `openai` npm package's
`client.responses.create` and `.stream`, on every model family, through the gateway's /v1.

Each case is one `node tests/clients/node/responses.mjs CASE BASE_URL KEY MODEL` (installed as
tests/test_clients_node.py says), which prints what its user would see as one JSON line, with
what each request carried (`store`, `previous_response_id`, the types of the `input` items).

What the AI SDK sends: no `store` (so the API's default, true), no `previous_response_id`, the
whole conversation in `input` at each step. For a second step after a tool call it sends the
calls as `function_call` items and the results as `function_call_output` items; an assistant
text that came with them is sent as `{"type": "item_reference", "id": <the message's id>}`
(because `store` is on), which the gateway must resolve or refuse clearly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.clients.harness import (
    ANSWERS,
    CLAUDE_MODEL,
    CLAUDE_TOOL,
    DEEPSEEK_MODEL,
    FAMILIES,
    GEMINI_MODEL,
    OPENAI_MODEL,
    REASONING,
    TOOL_CITIES,
    TOOLS_MODEL,
    ClientGateway,
    install_node_clients,
    run_node,
    serving,
)
from tests.conftest import FakeUpstream, GatewayFactory, openai_provider
from tests.fakes.anthropic_upstream import Scenario

# The fakes that call the tool when offered one, and the cities they ask for.
CALLERS = {TOOLS_MODEL: TOOL_CITIES, CLAUDE_MODEL: ["Paris"]}


@pytest.fixture(scope="module")
def node_clients() -> Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm (Node 20 or newer) are not installed: the Node clients' tests")
    return install_node_clients()


@pytest.fixture
async def client_gateway(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, node_clients: Path
) -> AsyncIterator[ClientGateway]:
    async with serving(gateway, fake_openai, redis_url) as served:
        yield served


NATIVE_MODEL = "woozlit/gpt-4o"
NATIVE_TOOLS_MODEL = "woozlit/gpt-4o-tools"  # the fake's "tools": a call, then "It is sunny."


@dataclass
class Native:
    v1: str
    key: str


@pytest.fixture
async def native(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, node_clients: Path
) -> Native:
    """A gateway whose OpenAI deployments speak the Responses API (`responses_api`): answered by
    the fake OpenAI's own /v1/responses, natively."""
    models = {
        NATIVE_MODEL: [{"provider": "openai", "model": "gpt-4o"}],
        NATIVE_TOOLS_MODEL: [{"provider": "openai", "model": "tools"}],
    }
    providers = {"openai": openai_provider(fake_openai.url, responses_api=True)}
    gw = await gateway(providers, models, redis_url=redis_url)
    return Native(gw.base_url + "/v1", gw.api_key)


async def responses(case: str, served: ClientGateway | Native, model: str) -> dict[str, Any]:
    result = await run_node("responses.mjs", case, served.v1, served.key, model)
    assert "error" not in result, result
    assert all(r["url"] == served.v1 + "/responses" for r in result["requests"]), result
    return result


def one_request(result: dict[str, Any]) -> dict[str, Any]:
    [request] = result["requests"]
    assert (request["store"], request["previousResponseId"]) == ("absent", None), request
    return request


def cities(calls: list[dict[str, Any]], key: str) -> list[str]:
    return [(json.loads(c[key]) if isinstance(c[key], str) else c[key])["city"] for c in calls]


# -- Vercel AI SDK, openai(model) ------------------------------------------------------------


@pytest.mark.parametrize("model", FAMILIES)
async def test_vercel_responses_generate_text(client_gateway: ClientGateway, model: str) -> None:
    r = await responses("vercel-generate", client_gateway, model)
    assert one_request(r)["stream"] == "absent"
    assert (r["text"], r["finishReason"], r["modelId"]) == (ANSWERS[model], "stop", model)
    assert r["usage"]["totalTokens"] > 0


@pytest.mark.parametrize("model", FAMILIES)
async def test_vercel_responses_stream_text(client_gateway: ClientGateway, model: str) -> None:
    r = await responses("vercel-stream", client_gateway, model)
    assert one_request(r)["stream"] is True
    assert (r["text"], r["finishReason"], r["modelId"]) == (ANSWERS[model], "stop", model)
    assert "text-delta" in r["parts"]
    assert r["usage"]["totalTokens"] > 0


@pytest.mark.parametrize("case", ["vercel-generate-tools", "vercel-stream-tools"])
@pytest.mark.parametrize("model", [*FAMILIES, TOOLS_MODEL])
async def test_vercel_responses_tool(client_gateway: ClientGateway, model: str, case: str) -> None:
    """One step: the SDK parses the calls and runs the tool (`execute`) on their input; the
    fakes that do not call tools answer their text, the tool offered."""
    client_gateway.claude_calls_tools()
    r = await responses(case, client_gateway, model)
    assert one_request(r)["toolTypes"] == ["function"]
    expected = CALLERS.get(model, [])
    assert [c["name"] for c in r["toolCalls"]] == ["get_weather"] * len(expected)
    assert cities(r["toolCalls"], "input") == expected
    assert [o["city"] for o in r["toolResults"]] == expected
    if expected:
        assert (r["text"], r["finishReason"]) == ("", "tool-calls")
    else:
        assert (r["text"], r["finishReason"]) == (ANSWERS[model], "stop")


@pytest.mark.parametrize("model", [TOOLS_MODEL, CLAUDE_MODEL])
async def test_vercel_responses_second_step(client_gateway: ClientGateway, model: str) -> None:
    """`stopWhen: stepCountIs(2)`: the tool's results go back in a second request, with the
    calls (and, for Claude's text before its call, an `item_reference` to that message)."""
    client_gateway.anthropic.scenario = Scenario(tools=[CLAUDE_TOOL], text=["Let me look."])
    r = await responses("vercel-generate-tools-2steps", client_gateway, model)
    first, second = r["requests"]
    calls = len(CALLERS[model])
    assert first["inputTypes"] == ["role:user"]
    text = ["item_reference"] if model == CLAUDE_MODEL else []
    assert second["inputTypes"] == [
        "role:user",
        *text,
        *["function_call"] * calls,
        *["function_call_output"] * calls,
    ]
    assert (second["store"], second["previousResponseId"]) == ("absent", None)
    assert r["steps"] == 2
    assert cities(r["toolCalls"], "input") == CALLERS[model]  # the fakes call it again


# -- openai (npm): client.responses ----------------------------------------------------------


@pytest.mark.parametrize("model", FAMILIES)
async def test_openai_node_responses_create(client_gateway: ClientGateway, model: str) -> None:
    r = await responses("openai-create", client_gateway, model)
    assert one_request(r)["inputTypes"] == ["string"]
    assert (r["object"], r["status"], r["model"]) == ("response", "completed", model)
    assert (r["text"], r["outputTypes"][-1]) == (ANSWERS[model], "message")
    assert r["usage"]["total_tokens"] == r["usage"]["input_tokens"] + r["usage"]["output_tokens"]
    assert r["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    "model",
    [
        OPENAI_MODEL,
        DEEPSEEK_MODEL,
        CLAUDE_MODEL,
        GEMINI_MODEL,
    ],
)
async def test_openai_node_responses_stream(client_gateway: ClientGateway, model: str) -> None:
    """The package's ResponseStream rebuilds the response from the events (and throws on an
    event that does not fit); DeepSeek's reasoning arrives as a reasoning item's text."""
    r = await responses("openai-stream", client_gateway, model)
    assert one_request(r)["stream"] is True
    events = r["events"]
    assert events[0] == "response.created" and events[-1] == "response.completed", events
    assert "response.output_text.delta" in events
    assert r["received"] == r["text"] == ANSWERS[model]
    assert r["reasoning"] == REASONING.get(model, "")
    assert (r["status"], r["model"]) == ("completed", model)
    assert r["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("case", ["openai-create-tools", "openai-stream-tools"])
@pytest.mark.parametrize("model", [TOOLS_MODEL, CLAUDE_MODEL])
async def test_openai_node_responses_tool(
    client_gateway: ClientGateway, model: str, case: str
) -> None:
    client_gateway.claude_calls_tools()
    r = await responses(case, client_gateway, model)
    expected = CALLERS[model]
    assert r["outputTypes"] == ["function_call"] * len(expected)
    assert [c["name"] for c in r["functionCalls"]] == ["get_weather"] * len(expected)
    assert cities(r["functionCalls"], "arguments") == expected
    assert all(c["callId"] and c["id"] for c in r["functionCalls"])
    if case == "openai-stream-tools":
        assert "response.function_call_arguments.delta" in r["events"]
        assert r["argumentDeltas"] == "".join(c["arguments"] for c in r["functionCalls"])


# -- natively, on an OpenAI deployment that speaks the Responses API --------------------------


@pytest.mark.parametrize(
    "case", ["vercel-generate", "vercel-stream", "openai-create", "openai-stream"]
)
async def test_responses_native_openai(native: Native, case: str) -> None:
    r = await responses(case, native, NATIVE_MODEL)
    assert one_request(r)["stream"] == (True if "stream" in case else "absent")
    assert r["text"] == ANSWERS[OPENAI_MODEL]


@pytest.mark.parametrize("case", ["vercel-generate-tools-2steps", "vercel-stream-tools-2steps"])
async def test_vercel_responses_native_tool_loop(native: Native, case: str) -> None:
    """The call, the tool run, the second step with the call and its result: answered."""
    r = await responses(case, native, NATIVE_TOOLS_MODEL)
    assert [q["inputTypes"] for q in r["requests"]] == [
        ["role:user"],
        ["role:user", "function_call", "function_call_output"],
    ]
    assert (r["steps"], r["text"], r["finishReason"]) == (2, "It is sunny.", "stop")
