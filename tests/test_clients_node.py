"""The JavaScript clients: the `openai` npm package and the Vercel AI SDK (chat completions).

Each case is one `node tests/clients/node/<script>.mjs CASE BASE_URL KEY MODEL`, which prints
what its user would see as one JSON line, with every HTTP request the client made (so a
retry shows). The packages are pinned in tests/clients/node/package-lock.json and installed
by `npm ci` once per run, unless node_modules already matches the lock.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.harness import (
    ANSWERS,
    BAD_KEY,
    CLAUDE_MODEL,
    CRASHING_MODEL,
    FAMILIES,
    OPENAI_MODEL,
    QUOTA_SENTENCE,
    REASONING,
    TOOL_CITIES,
    TOOLS_MODEL,
    UNKNOWN_MODEL,
    ClientGateway,
    install_node_clients,
    run_node,
    serving,
)
from tests.conftest import FakeUpstream, GatewayFactory

PROFILES = ["v1", "woozlit"]


@pytest.fixture(scope="module")
def node_clients() -> Path:
    # Node is on every CI machine; a machine with only Python and pip runs the rest.
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm (Node 20 or newer) are not installed: the Node clients' tests")
    return install_node_clients()


@pytest.fixture
async def client_gateway(
    gateway: GatewayFactory, fake_openai: FakeUpstream, redis_url: str, node_clients: Path
) -> AsyncIterator[ClientGateway]:
    async with serving(gateway, fake_openai, redis_url) as served:
        yield served


async def openai_node(case: str, base: str, key: str, model: str) -> dict[str, Any]:
    return await run_node("openai.mjs", case, base, key, model)


async def vercel(case: str, base: str, key: str, model: str) -> dict[str, Any]:
    return await run_node("vercel.mjs", case, base, key, model)


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in result, result
    assert len(result["requests"]) == 1, result["requests"]
    return result


def cities(calls: list[dict[str, Any]], key: str) -> list[str]:
    return [(json.loads(c[key]) if isinstance(c[key], str) else c[key])["city"] for c in calls]


# -- openai (npm) -------------------------------------------------------------------------


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("profile", PROFILES)
async def test_openai_node_create(client_gateway: ClientGateway, profile: str, model: str) -> None:
    r = ok(await openai_node("create", client_gateway.url(profile), client_gateway.key, model))
    assert (r["content"], r["finishReason"], r["model"]) == (ANSWERS[model], "stop", model)
    assert r["id"].startswith("woozlit-")
    assert isinstance(r["created"], int)
    assert r["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("profile", PROFILES)
async def test_openai_node_stream(client_gateway: ClientGateway, profile: str, model: str) -> None:
    r = ok(await openai_node("stream", client_gateway.url(profile), client_gateway.key, model))
    assert (r["content"], r["reasoning"]) == (ANSWERS[model], REASONING.get(model, ""))
    assert (r["finishReason"], r["model"]) == ("stop", model)
    assert r["nulls"] == []  # no delta key is null
    assert r["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("case", ["create-tools", "stream-tools"])
@pytest.mark.parametrize("model", [TOOLS_MODEL, CLAUDE_MODEL])
@pytest.mark.parametrize("profile", PROFILES)
async def test_openai_node_tool_call(
    client_gateway: ClientGateway, profile: str, model: str, case: str
) -> None:
    client_gateway.claude_calls_tools()
    r = ok(await openai_node(case, client_gateway.url(profile), client_gateway.key, model))
    expected = TOOL_CITIES if model == TOOLS_MODEL else ["Paris"]
    assert [c["name"] for c in r["toolCalls"]] == ["get_weather"] * len(expected)
    assert cities(r["toolCalls"], "arguments") == expected
    assert all(c["id"] for c in r["toolCalls"])
    assert r["finishReason"] == "tool_calls"


@pytest.mark.parametrize("profile", PROFILES)
async def test_openai_node_models_retrieve(client_gateway: ClientGateway, profile: str) -> None:
    """The id has a slash: the package sends it as it is (/models/woozlit/gpt-4o)."""
    r = ok(
        await openai_node("retrieve", client_gateway.url(profile), client_gateway.key, OPENAI_MODEL)
    )
    assert (r["id"], r["object"]) == (OPENAI_MODEL, "model")


@pytest.mark.parametrize("case", ["401", "400", "quota", "midstream"])
async def test_openai_node_errors(client_gateway: ClientGateway, case: str) -> None:
    sentence = await client_gateway.sentence(case)
    before = client_gateway.quota_refusals()
    key, model, script_case = {
        "401": (BAD_KEY, OPENAI_MODEL, "create"),
        "400": (client_gateway.key, UNKNOWN_MODEL, "create"),
        "quota": (client_gateway.quota_key, OPENAI_MODEL, "create"),
        "midstream": (client_gateway.key, CRASHING_MODEL, "stream"),
    }[case]
    r = await openai_node(script_case, client_gateway.v1, key, model)
    assert sentence in r["error"]["message"], r
    assert len(r["requests"]) == 1, r["requests"]  # default maxRetries: 2, none used
    if case == "quota":
        assert client_gateway.quota_refusals() - before == 1
        assert (r["error"]["status"], r["error"]["code"]) == (429, "insufficient_quota")
        assert sentence == QUOTA_SENTENCE
    if case == "midstream":
        assert r["content"] == "Hello!"  # what came before the error reached the user


@pytest.mark.parametrize("profile", PROFILES)
async def test_openai_node_quota_on_both_profiles(
    client_gateway: ClientGateway, profile: str
) -> None:
    before = client_gateway.quota_refusals()
    r = await openai_node(
        "stream", client_gateway.url(profile), client_gateway.quota_key, OPENAI_MODEL
    )
    assert r["error"]["status"] == 429, r
    assert len(r["requests"]) == 1 and client_gateway.quota_refusals() - before == 1


# -- Vercel AI SDK --------------------------------------------------------------------------


@pytest.mark.parametrize("model", FAMILIES)
async def test_vercel_generate_text(client_gateway: ClientGateway, model: str) -> None:
    """generateText sends no `stream` and `Accept: */*`: on /v1 that is a JSON answer."""
    r = ok(await vercel("generate", client_gateway.v1, client_gateway.key, model))
    sent = r["requests"][0]
    assert sent["stream"] == "absent" and sent["accept"] in (None, "*/*"), sent
    assert (r["text"], r["finishReason"], r["modelId"]) == (ANSWERS[model], "stop", model)
    assert r["usage"]["totalTokens"] > 0


@pytest.mark.parametrize("model", FAMILIES)
async def test_vercel_stream_text(client_gateway: ClientGateway, model: str) -> None:
    r = ok(await vercel("stream", client_gateway.v1, client_gateway.key, model))
    assert r["requests"][0]["stream"] is True
    assert (r["text"], r["finishReason"], r["modelId"]) == (ANSWERS[model], "stop", model)
    assert (r["reasoning"] or "") == REASONING.get(model, "")
    assert r["usage"]["totalTokens"] > 0


@pytest.mark.parametrize("case", ["generate-tools", "stream-tools"])
@pytest.mark.parametrize("model", [TOOLS_MODEL, CLAUDE_MODEL])
async def test_vercel_tool_call(client_gateway: ClientGateway, model: str, case: str) -> None:
    """One step: the SDK parses the calls and runs the tool (`execute`) on their input."""
    client_gateway.claude_calls_tools()
    r = ok(await vercel(case, client_gateway.v1, client_gateway.key, model))
    expected = TOOL_CITIES if model == TOOLS_MODEL else ["Paris"]
    assert [c["name"] for c in r["toolCalls"]] == ["get_weather"] * len(expected)
    assert cities(r["toolCalls"], "input") == expected
    assert [o["city"] for o in r["toolResults"]] == expected
    assert r["finishReason"] == "tool-calls"


@pytest.mark.parametrize("case", ["401", "400", "midstream"])
async def test_vercel_errors(client_gateway: ClientGateway, case: str) -> None:
    sentence = await client_gateway.sentence(case)
    key, model, script_case = {
        "401": (BAD_KEY, OPENAI_MODEL, "generate"),
        "400": (client_gateway.key, UNKNOWN_MODEL, "generate"),
        "midstream": (client_gateway.key, CRASHING_MODEL, "stream"),
    }[case]
    r = await vercel(script_case, client_gateway.v1, key, model)
    assert sentence in r["error"]["message"], r
    assert len(r["requests"]) == 1, r["requests"]
    if case == "midstream":
        assert r["received"] == "Hello!"


@pytest.mark.xfail(
    strict=True,
    reason="The AI SDK retries every 429 (APICallError.isRetryable: 408, 409, 429, 5xx) "
    "whatever x-should-retry says: 3 requests, 6 s of backoff, with default maxRetries",
)
async def test_vercel_quota_with_defaults(client_gateway: ClientGateway) -> None:
    before = client_gateway.quota_refusals()
    r = await vercel("generate", client_gateway.v1, client_gateway.quota_key, OPENAI_MODEL)
    assert QUOTA_SENTENCE in r["error"]["message"], r  # "Failed after 3 attempts. Last error: ..."
    assert client_gateway.quota_refusals() - before == len(r["requests"])
    assert len(r["requests"]) == 1, r["requests"]


async def test_vercel_quota_listening_to_should_retry(client_gateway: ClientGateway) -> None:
    """With an `errorStructure.isRetryable` that reads `x-should-retry` (what a user of the
    AI SDK has to add), the quota 429 is sent once and shows the gateway's sentence."""
    before = client_gateway.quota_refusals()
    r = await vercel(
        "generate-should-retry", client_gateway.v1, client_gateway.quota_key, OPENAI_MODEL
    )
    assert r["error"]["message"] == QUOTA_SENTENCE, r
    assert r["error"]["status"] == 429
    assert len(r["requests"]) == 1, r["requests"]
    assert client_gateway.quota_refusals() - before == 1
