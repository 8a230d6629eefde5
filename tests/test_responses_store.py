"""The Responses items the gateway keeps per account (protocols/openai_responses/items.py):
a multi-turn exchange shaped as the Vercel AI SDK's `openai(model)` sends it (`store`
left to its default, earlier answers' items sent back as `item_reference`), natively on
OpenAI and translated for Claude and Gemini, both modes; the account scope, the TTL,
`store: false`, the hold, and the three stores (Redis, Redis Cluster, embedded).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from openai.types.responses import Response

from proxy.app_state import ACCOUNTANT, ACCOUNTS, STORE
from proxy.protocols.openai_responses.items import written
from proxy.store import keys
from tests.conftest import FakeUpstream, Gateway, GatewayFactory, openai_provider
from tests.fakes.anthropic_upstream import (
    FAKE,
    FakeAnthropic,
    Scenario,
    ToolUse,
    create_fake_anthropic,
)
from tests.fakes.gemini_upstream import FAKE_GEMINI, FakeGemini, create_fake_gemini
from tests.redis_binary import LocalCluster, redis_binaries
from tests.test_responses import WEATHER, parse_events, text_of

NATIVE = "woozlit/gpt-4o"
CLAUDE = "woozlit/claude-3-5-sonnet-20241022"
GEMINI = "woozlit/gemini-1.5-pro"
MODELS = {
    NATIVE: [{"provider": "openai", "model": "gpt-4o"}],
    CLAUDE: [{"provider": "anthropic", "model": "claude-3-5-sonnet-20241022"}],
    GEMINI: [{"provider": "google", "model": "gemini-1.5-pro"}],
    "woozlit/gpt-tools": [{"provider": "openai", "model": "tools"}],
    "woozlit/gemini-tools": [{"provider": "google", "model": "tools"}],
}
TOOLS = {NATIVE: "woozlit/gpt-tools", CLAUDE: CLAUDE, GEMINI: "woozlit/gemini-tools"}
QUESTION = {"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}
AGAIN = {"role": "user", "content": [{"type": "input_text", "text": "And again?"}]}


def reference(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the Vercel AI SDK sends back an earlier answer's item with `store`."""
    return {"type": "item_reference", "id": item["id"]}


@dataclass
class Served:
    gateway: Gateway
    openai: FakeUpstream
    anthropic: FakeAnthropic
    gemini: FakeGemini

    async def post(
        self, body: dict[str, Any], key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """The status and the JSON answer (a stream's: its last event's `response`, after
        every event is checked)."""
        auth = {"Authorization": f"Bearer {key or self.gateway.api_key}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.gateway.base_url + "/v1/responses", json=body, headers=auth) as r,
        ):
            raw = await r.read()
        if r.status == 200 and body.get("stream"):
            events = parse_events(raw)
            assert events[-1]["type"] == "response.completed"
            answer: dict[str, Any] = events[-1]["response"]
            assert {e["response"]["store"] for e in events if "response" in e} == {answer["store"]}
        else:
            answer = json.loads(raw)
        if r.status == 200:
            Response.model_validate(answer)
        await written()  # what the answer keeps, kept before the next turn refers to it
        return r.status, answer

    async def answer(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        status, answer = await self.post(body, key)
        assert status == 200, answer
        return answer

    async def other_key(self) -> str:
        """A key of another account."""
        accounts = self.gateway.app[ACCOUNTS]
        account = await accounts.create_account({"tier": "premium", "developer": True})
        key: str = (await accounts.create_key(account["id"], "other"))["key"]
        return key


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(redis_binaries())
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture
async def serve(gateway: GatewayFactory, fake_openai: FakeUpstream) -> AsyncIterator[Serve]:
    """Start a gateway on a store URL (None: the embedded store) with `server` settings,
    its Anthropic and Gemini fakes with it."""
    fakes: list[TestServer] = []

    async def start(redis_url: str | None, **server: Any) -> Served:
        anthropic = TestServer(create_fake_anthropic("test-key"))
        gemini = TestServer(create_fake_gemini("test-key", chunk_delay=0.0))
        for fake in (anthropic, gemini):
            await fake.start_server()
            fakes.append(fake)
        providers = {
            "openai": openai_provider(fake_openai.url, responses_api=True),
            "anthropic": {"kind": "anthropic", "api_key": "test-key",
                          "base_url": str(anthropic.make_url("")).rstrip("/")},
            "google": {"kind": "gemini", "api_key": "test-key",
                       "base_url": str(gemini.make_url("")).rstrip("/")},
        }  # fmt: skip
        gw = await gateway(providers, MODELS, redis_url=redis_url, server=server or None)
        return Served(gw, fake_openai, anthropic.app[FAKE], gemini.app[FAKE_GEMINI])

    yield start
    for fake in fakes:
        await fake.close()


@pytest.fixture
async def served(serve: Serve, redis_url: str) -> Served:
    return await serve(redis_url)


def last_assistant_text(served: Served, model: str) -> str:
    """The text of the last assistant turn the upstream of `model` got."""
    if model == NATIVE:
        sent = served.openai.record.requests[-1]["input"]
        return str(sent[1]["content"][0]["text"])
    if model == CLAUDE:
        messages = served.anthropic.requests[-1].body["messages"]
        turn = [m for m in messages if m["role"] == "assistant"][-1]
        content = turn["content"]
        return content if isinstance(content, str) else "".join(b["text"] for b in content)
    contents = served.gemini.requests[-1].body["contents"]
    turn = [c for c in contents if c["role"] == "model"][-1]
    return "".join(part["text"] for part in turn["parts"])


async def second_turn(served: Served, model: str, stream: bool) -> dict[str, Any]:
    """Turn 1, then turn 2 with turn 1's assistant message sent back by reference."""
    first = await served.answer({"model": model, "input": [QUESTION], "stream": stream})
    assert first["store"] is True
    message = next(item for item in first["output"] if item["type"] == "message")
    body = {"model": model, "input": [QUESTION, reference(message), AGAIN], "stream": stream}
    again = await served.answer(body)
    assert last_assistant_text(served, model) == text_of(first)
    if model == NATIVE:  # the item itself, as the client got it: OpenAI keeps nothing
        assert served.openai.record.requests[-1]["input"][1] == message
        assert served.openai.record.requests[-1]["store"] is False
    return again


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [NATIVE, CLAUDE, GEMINI])
async def test_assistant_message_by_reference(served: Served, model: str, stream: bool) -> None:
    again = await second_turn(served, model, stream)
    assert again["status"] == "completed" and text_of(again)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [NATIVE, CLAUDE, GEMINI])
async def test_function_call_by_reference(served: Served, model: str, stream: bool) -> None:
    """A function call of turn 1 sent back by reference with its output: the upstream gets
    the call (the fake OpenAI refuses an output whose call it has not seen)."""
    model = TOOLS[model]
    if model == CLAUDE:
        served.anthropic.scenario = Scenario(
            tools=[ToolUse("toolu_1", "get_weather", {"city": "Paris"})], text=[]
        )
    body = {"model": model, "input": [QUESTION], "tools": [WEATHER], "stream": stream}
    first = await served.answer(body)
    call = next(item for item in first["output"] if item["type"] == "function_call")
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    if model == CLAUDE:
        served.anthropic.scenario = Scenario()
    again = await served.answer({**body, "input": [QUESTION, reference(call), output]})
    assert again["status"] == "completed"
    if model == "woozlit/gpt-tools":
        assert text_of(again) == "It is sunny."
        assert served.openai.record.requests[-1]["input"][1] == call
    elif model == CLAUDE:
        blocks = served.anthropic.requests[-1].body["messages"][1]["content"]
        assert [b["id"] for b in blocks if b["type"] == "tool_use"] == [call["call_id"]]
    else:
        contents = served.gemini.requests[-1].body["contents"]
        calls = [p["functionCall"] for c in contents for p in c["parts"] if "functionCall" in p]
        assert calls[0]["name"] == "get_weather"


async def test_type_less_reference(served: Served) -> None:
    """`type` is optional on an item reference (openai-python's `ItemReference`)."""
    first = await served.answer({"model": NATIVE, "input": "Hello!"})
    again = await served.answer({"model": NATIVE, "input": [{"id": first["output"][0]["id"]}]})
    assert again["status"] == "completed"
    assert served.openai.record.requests[-1]["input"] == first["output"]


async def test_another_account_cannot_refer_to_the_items(served: Served) -> None:
    first = await served.answer({"model": NATIVE, "input": "Hello!"})
    item_id = first["output"][0]["id"]
    body = {"model": NATIVE, "input": [QUESTION, {"type": "item_reference", "id": item_id}]}
    status, answer = await served.post(body, await served.other_key())
    assert status == 400
    assert answer["error"]["param"] == "input[1].id"
    assert answer["error"]["message"] == f"Item with id '{item_id}' not found."
    assert answer["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("bad", ["msg_unknown", 7, ""])
async def test_unknown_or_malformed_id_is_a_400(served: Served, bad: Any) -> None:
    body = {"model": GEMINI, "input": [QUESTION, QUESTION, {"type": "item_reference", "id": bad}]}
    status, answer = await served.post(body)
    assert status == 400 and answer["error"]["param"] == "input[2].id"


async def test_expired_items_are_a_400(serve: Serve, redis_url: str) -> None:
    served = await serve(redis_url, responses_store_seconds=0.05)
    first = await served.answer({"model": NATIVE, "input": "Hello!"})
    assert first["store"] is True
    item_key = keys.response_item(served.gateway.account_id, first["output"][0]["id"])
    store = served.gateway.app[STORE]
    for _ in range(100):  # expired after 50 ms: Redis deletes it on access past its TTL
        if await store.get(item_key) is None:
            break
        await asyncio.sleep(0.05)
    status, answer = await served.post({"model": NATIVE, "input": [reference(first["output"][0])]})
    assert status == 400 and answer["error"]["param"] == "input[0].id"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [NATIVE, GEMINI])
async def test_store_false_keeps_nothing(served: Served, model: str, stream: bool) -> None:
    body = {"model": model, "input": "Hello!", "store": False, "stream": stream}
    first = await served.answer(body)
    assert first["store"] is False
    item_key = keys.response_item(served.gateway.account_id, first["output"][-1]["id"])
    assert await served.gateway.app[STORE].get(item_key) is None
    status, _ = await served.post({"model": model, "input": [reference(first["output"][-1])]})
    assert status == 400


async def test_store_seconds_zero_keeps_nothing(serve: Serve, redis_url: str) -> None:
    served = await serve(redis_url, responses_store_seconds=0)
    first = await served.answer({"model": NATIVE, "input": "Hello!", "store": True})
    assert first["store"] is False
    status, answer = await served.post({"model": NATIVE, "input": [reference(first["output"][0])]})
    assert status == 400 and answer["error"]["param"] == "input[0].id"


async def test_hold_covers_the_referenced_items(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompt estimate of a request that refers to an item is that of the request with
    the item sent in full: the quota's hold covers the whole conversation."""
    accountant = served.gateway.app[ACCOUNTANT]
    bases: list[int] = []
    admit = accountant.admit

    async def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("base") is not None:
            bases.append(kwargs["base"])
        return await admit(*args, **kwargs)

    monkeypatch.setattr(accountant, "admit", spy)
    long = "Weather in Paris, please, in great detail. " * 200
    first = await served.answer({"model": "woozlit/gpt-tools", "input": long, "tools": [WEATHER]})
    call = first["output"][0]
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": long}
    body = {"model": GEMINI, "input": [QUESTION, output]}
    await served.answer({**body, "input": [QUESTION, call, output]})
    await served.answer({**body, "input": [QUESTION, reference(call), output]})
    await served.answer(body | {"input": [QUESTION]})
    inline, referred, without = bases[1:]
    assert referred == inline > without


@pytest.mark.parametrize("backend", ["cluster", "embedded"])
@pytest.mark.parametrize("stream", [False, True])
async def test_other_stores(
    serve: Serve, request: pytest.FixtureRequest, backend: str, stream: bool
) -> None:
    """Natively and translated, on Redis Cluster (an account's items in its slot: one
    pipeline, one MGET) and on the embedded store."""
    url = None
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("cluster")
        cluster.wait_healthy()
        cluster.flush()
        url = cluster.url
    served = await serve(url)
    for model in (NATIVE, CLAUDE):
        again = await second_turn(served, model, stream)
        assert again["status"] == "completed"
    status, answer = await served.post(
        {"model": NATIVE, "input": [{"type": "item_reference", "id": "msg_nowhere"}]},
        await served.other_key(),
    )
    assert status == 400 and answer["error"]["param"] == "input[0].id"
